"""The bundled default model on the CHAOS MR DICOM as the organisers ship it: every
contrast (T2-SPIR, T1 in-phase, T1 opposed-phase) segmented at its native geometry, the
out-of-distribution warning silent there and firing on the TotalSegmentator MR."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gi_seg.datasets import open_dataset
from napari_gi_seg.engine.domain import input_warnings
from napari_gi_seg.engine.inference import segment_volume
from napari_gi_seg.evaluation.metrics import dice_per_class
from napari_gi_seg.io import read_image
from napari_gi_seg.models import registry


@pytest.fixture(scope="module")
def default_model():
    return registry.load_model(None, device="cpu")


def test_default_model_card_names_every_contrast(default_model):
    spec, _ = default_model
    cv = spec.metrics["cross_validation"]
    assert set(cv["per_sequence"]) == {"t2spir", "t1in", "t1out"}
    assert "chaos_mr_dicom" in str(spec.training.get("dataset"))
    # the frame's ranges are the native DICOM geometry of the 16 patients (SOURCE.md)
    assert spec.frame.spacing_range_mm["x"] == pytest.approx([1.3594, 2.0312], abs=1e-3)
    assert spec.frame.spacing_range_mm["z"] == pytest.approx([5.5, 9.0], abs=0.05)
    older = registry.get_entry("chaos-t2spir:2").spec()  # older versions stay loadable
    assert older.version == 2 and spec.version > 2


def test_every_chaos_contrast_is_segmented_and_the_ood_warning_is_silent(default_model, chaos_dicom_root, totalseg_dir):
    """Patient 22: oblique, the coarsest T1 pixels (2.03 mm) and the widest field of view
    (520 mm) of the 16. These weights trained on it (all 16 patients), so the Dice is a
    fit check, not an estimate for unseen patients (that is the card's cross-validation)."""
    spec, net = default_model
    dices = {}
    for ref in open_dataset(chaos_dicom_root).cases:
        if not ref.case_id.startswith("22_"):
            continue
        case = ref.load()
        assert input_warnings(case.image, spec) == [], ref.case_id
        labels = segment_volume(case.image, spec, net, device="cpu").labels
        dices[ref.case_id] = float(np.mean(list(dice_per_class(labels, case.target, [1, 2, 3, 4]).values())))
    assert set(dices) == {"22_t2spir", "22_t1in", "22_t1out"}
    assert min(dices.values()) > 0.75, dices
    ts = read_image(totalseg_dir / "example_mr_sm.nii.gz")[0]
    warnings = input_warnings(ts, spec)
    assert any("slice spacing 3 mm" in w for w in warnings), warnings
