"""The one post-processing step (engine.postprocess) on a real CHAOS label volume with
the errors a 2.5D network makes on T1 (measured in docs/benchmarks.md): the lower spleen
painted as liver, a stray island, a kidney pole painted as the other kidney."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from napari_gi_seg.engine.postprocess import keep_largest_components, postprocess_labels, reassign_fragments
from napari_gi_seg.models.registry import get_entry

S26 = np.ones((3, 3, 3), bool)


@pytest.fixture(scope="module")
def spec():
    return get_entry("chaos-t2spir").spec()


def _index(spec, name: str) -> int:
    return next(c.index for c in spec.classes if c.name == name)


def _lower_part(mask: np.ndarray, fraction: float) -> np.ndarray:
    """The voxels of ``mask`` in its lowest ``fraction`` of slices (by index)."""
    zs = np.nonzero(mask.any((1, 2)))[0]
    cut = zs[0] + int(round(fraction * len(zs)))
    out = mask.copy()
    out[cut:] = False
    return out


def test_a_spleen_fragment_painted_as_liver_goes_back_to_the_spleen(chaos_labels, spec):
    truth = np.asarray(chaos_labels.data)
    liver, spleen = _index(spec, "liver"), _index(spec, "spleen")
    frag = _lower_part(truth == spleen, 0.4)
    assert frag.sum() > 500
    pred = truth.copy()
    pred[frag] = liver
    comp, _ = ndimage.label(pred == liver, S26)
    assert len(np.unique(comp[frag])) == 1 and np.unique(comp[frag])[0] != np.bincount(comp.ravel())[1:].argmax() + 1

    old = keep_largest_components(pred, spec)
    assert (old[frag] == 0).all()  # plain largest-component removal deletes that part of the spleen
    new = postprocess_labels(pred, spec)
    np.testing.assert_array_equal(new, truth)
    assert new.dtype == np.uint8
    # a fragment only counts as surrounded above the share: at share 1 it is removed as before
    np.testing.assert_array_equal(reassign_fragments(pred, spec, share=1.0), old)


def test_an_island_in_background_is_removed_and_a_kidney_pole_rejoins_its_kidney(chaos_labels, spec):
    truth = np.asarray(chaos_labels.data)
    rk, lk = _index(spec, "right_kidney"), _index(spec, "left_kidney")
    pred = truth.copy()
    # a stray right-kidney island far from every organ (4 x 6 x 6 voxels at the image's corner)
    assert (truth[:4, :6, :6] == 0).all()
    pred[:4, :6, :6] = rk
    # the lower 30 % of the left kidney painted as right kidney
    pole = _lower_part(truth == lk, 0.3)
    assert pole.sum() > 200
    pred[pole] = rk
    new = postprocess_labels(pred, spec)
    assert (new[:4, :6, :6] == 0).all()
    np.testing.assert_array_equal(new, truth)
    # exactly one 3D component per single-component organ
    for c in spec.classes:
        if c.single_component and (new == c.index).any():
            assert ndimage.label(new == c.index, S26)[1] == 1, c.name


def test_classes_that_are_not_single_component_are_left_alone(chaos_labels, spec):
    truth = np.asarray(chaos_labels.data)
    spleen = _index(spec, "spleen")
    classes = [replace(c, single_component=False) if c.index == spleen else c for c in spec.classes]
    multi = replace(spec, classes=classes)
    pred = truth.copy()
    frag = _lower_part(truth == spleen, 0.4)
    pred[frag] = _index(spec, "liver")
    pred[:4, :6, :6] = spleen  # a spleen island: kept, the spleen is not single-component in this spec
    new = postprocess_labels(pred, multi)
    assert (new[:4, :6, :6] == spleen).all()
    # the liver fragment has no single-component neighbour around it any more: removed
    assert (new[frag] == 0).all()
