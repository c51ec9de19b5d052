"""Correction tools on real CHAOS T2-SPIR labels (patient 1, 1.25 x 1.25 x 7.7 mm)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_gi_seg.curation.corrections import (
    Correction,
    fill_holes,
    interpolate_class,
    remove_islands,
    signed_distance,
    smooth_contour,
)
from napari_gi_seg.evaluation.metrics import dice

LIVER, RKID, LKID, SPLEEN = 1, 2, 3, 4


def _slices_with(labels, c):
    return [z for z in range(labels.shape[0]) if (labels[z] == c).any()]


def _largest_slice(labels, c):
    return int(np.argmax([(labels[z] == c).sum() for z in range(labels.shape[0])]))


# ---------------------------------------------------------------------------- interpolation


def test_interpolation_reproduces_manual_liver_slices(chaos_labels_volume):
    ref = chaos_labels_volume.data
    spacing = chaos_labels_volume.spacing_mm
    zc = _largest_slice(ref, LIVER)
    z0, z1 = zc - 2, zc + 2  # two real slices 4 apart
    edited = ref.copy()
    for z in range(z0 + 1, z1):  # the clinician has not drawn the liver in between
        edited[z][edited[z] == LIVER] = 0
    corr = interpolate_class(edited, LIVER, z0, z1, spacing_mm=spacing)
    assert corr.z == list(range(z0 + 1, z1))
    out = edited.copy()
    corr.apply(out)
    for z in range(z0 + 1, z1):
        d = dice(out[z] == LIVER, ref[z] == LIVER)
        assert d > 0.8, f"slice {z}: Dice {d:.3f}"
    # other classes are never overwritten, and nothing outside z0+1..z1-1 changes
    others = (edited != 0) & (edited != LIVER)
    assert np.array_equal(out[others], edited[others])
    assert np.array_equal(out[: z0 + 1], edited[: z0 + 1]) and np.array_equal(out[z1:], edited[z1:])


def test_interpolation_over_the_whole_liver(chaos_labels_volume):
    """Every 4-apart window inside the liver (54 slices for patient 1): measured Dice
    0.82..0.97 per slice, mean 0.92."""
    ref = chaos_labels_volume.data
    zs = _slices_with(ref, LIVER)
    scores = []
    for z0 in range(zs[0] + 1, zs[-1] - 4):
        edited = ref.copy()
        mid = edited[z0 + 1 : z0 + 4]
        mid[mid == LIVER] = 0
        corr = interpolate_class(edited, LIVER, z0, z0 + 4, spacing_mm=chaos_labels_volume.spacing_mm)
        corr.apply(edited)
        scores += [dice(edited[z] == LIVER, ref[z] == LIVER) for z in range(z0 + 1, z0 + 4)]
    assert len(scores) >= 30
    assert np.mean(scores) > 0.9 and np.min(scores) > 0.8


def test_interpolation_uses_inplane_spacing():
    """Half-planes x < 20 (z0) and y < 20 (z1): the midway boundary is the line
    sx*(x - 19.5) + sy*(y - 19.5) = 0 in mm, which differs from the pixel diagonal
    when pixels are 1 x 3 mm."""
    lab = np.zeros((3, 40, 40), np.uint8)
    lab[0, :, :20] = 1
    lab[2, :20, :] = 1
    yy, xx = np.mgrid[:40, :40]
    sy, sx = 1.0, 3.0
    expected_mm = sx * (xx - 19.5) + sy * (yy - 19.5) < 0
    expected_px = (xx - 19.5) + (yy - 19.5) < 0
    mid_mm = interpolate_class(lab, 1, 0, 2, spacing_mm=(5.0, sy, sx)).after[0] == 1
    mid_px = interpolate_class(lab, 1, 0, 2).after[0] == 1
    agree_mm = (mid_mm == expected_mm).mean()
    assert agree_mm > 0.98
    assert (mid_px == expected_px).mean() > 0.98
    assert (mid_mm != mid_px).sum() > 100  # spacing really changes the result


def test_interpolation_paints_only_over_background(chaos_labels_volume):
    ref = chaos_labels_volume.data
    z0 = _largest_slice(ref, LIVER) - 2
    lab = ref.copy()
    # a fake kidney region inside where the liver will be interpolated
    mid = z0 + 2
    yx = np.argwhere(ndi.binary_erosion(ref[mid] == LIVER, iterations=10))
    y, x = yx[len(yx) // 2]
    lab[mid, y - 3 : y + 4, x - 3 : x + 4] = RKID
    lab[z0 + 1 : z0 + 4][lab[z0 + 1 : z0 + 4] == LIVER] = 0
    corr = interpolate_class(lab, LIVER, z0, z0 + 4, spacing_mm=chaos_labels_volume.spacing_mm)
    out = lab.copy()
    corr.apply(out)
    assert np.all(out[mid, y - 3 : y + 4, x - 3 : x + 4] == RKID)
    assert (out[mid] == LIVER).sum() > 1000


def test_interpolation_errors(chaos_labels_volume):
    ref = chaos_labels_volume.data
    zs = _slices_with(ref, LIVER)
    with pytest.raises(ValueError, match="not drawn on slice"):
        interpolate_class(ref, LIVER, zs[0] - 3, zs[0] + 2)
    with pytest.raises(ValueError, match="no slice between"):
        interpolate_class(ref, LIVER, zs[5], zs[5] + 1)
    with pytest.raises(ValueError, match="out of range"):
        interpolate_class(ref, LIVER, 10, ref.shape[0] + 3)
    # reversed ends are accepted
    assert interpolate_class(ref, LIVER, zs[8], zs[4]).z == interpolate_class(ref, LIVER, zs[4], zs[8]).z


def test_signed_distance_in_mm():
    m = np.zeros((21, 21), bool)
    m[10, :] = True  # a horizontal line: distance along y only
    d = signed_distance(m, (2.0, 1.0))
    assert d[10, 5] < 0
    assert d[13, 5] == pytest.approx(6.0)  # 3 rows * 2 mm


# ---------------------------------------------------------------------------- fill holes


def _deep_point(mask, depth):
    edt = ndi.distance_transform_edt(mask)
    assert edt.max() > depth
    return np.unravel_index(np.argmax(edt), mask.shape)


def test_fill_holes_fills_punched_hole_and_nothing_else(chaos_labels_volume):
    ref = chaos_labels_volume.data
    z = _largest_slice(ref, LIVER)
    assert np.array_equal(ndi.binary_fill_holes(ref[z] == LIVER), ref[z] == LIVER)  # no hole in the manual label
    lab = ref.copy()
    y, x = _deep_point(ref[z] == LIVER, 12)
    yy, xx = np.mgrid[: lab.shape[1], : lab.shape[2]]
    hole = (yy - y) ** 2 + (xx - x) ** 2 <= 36
    lab[z][hole] = 0
    island = (slice(y - 9, y - 7), slice(x - 1, x + 2))  # another class inside the liver
    lab[z][island] = SPLEEN
    notch = (slice(None), slice(0, 3))  # open to the border: not a hole
    corr = fill_holes(lab, range(lab.shape[0]))  # all slices, all classes
    assert corr.z == [z]
    out = lab.copy()
    corr.apply(out)
    assert np.all(out[z][hole] == LIVER)
    assert np.all(out[z][island] == SPLEEN)
    changed = out != lab
    assert changed.sum() == hole.sum() and changed[z][hole].all()
    assert np.array_equal(out[z][notch], lab[z][notch])
    # restricted to another class: nothing to do
    assert fill_holes(lab, [z], class_index=RKID).is_empty


# ---------------------------------------------------------------------------- islands


def test_remove_islands_drops_small_blob_keeps_organs(chaos_labels_volume):
    ref = chaos_labels_volume.data
    spacing = chaos_labels_volume.spacing_mm
    z = _largest_slice(ref, LIVER)
    lab = ref.copy()
    assert not lab[z, 5:8, 5:8].any()
    lab[z, 5:8, 5:8] = SPLEEN  # 9 px = 14.1 mm² stray blob
    corr = remove_islands(lab, range(lab.shape[0]), min_area_mm2=50.0, spacing_mm=spacing)
    out = lab.copy()
    corr.apply(out)
    assert np.all(out[z, 5:8, 5:8] == 0)
    for c in (LIVER, RKID, LKID, SPLEEN):
        assert dice(out == c, ref == c) > 0.99
    assert (out[z] == LIVER).sum() == (ref[z] == LIVER).sum()
    # the threshold is an area in mm²: 9 px * 1.5625 mm² = 14.06 mm²
    assert remove_islands(lab, [z], 14.0, spacing, class_index=SPLEEN).is_empty
    assert remove_islands(lab, [z], 14.2, spacing, class_index=SPLEEN).n_changed == 9
    with pytest.raises(ValueError):
        remove_islands(lab, [z], -1.0, spacing)


# ---------------------------------------------------------------------------- smoothing


def test_smooth_keeps_organs_and_removes_spike(chaos_labels_volume):
    ref = chaos_labels_volume.data
    spacing = chaos_labels_volume.spacing_mm
    corr = smooth_contour(ref, range(ref.shape[0]), sigma_mm=2.5, spacing_mm=spacing)
    out = ref.copy()
    corr.apply(out)
    for c in (LIVER, RKID, LKID, SPLEEN):
        d = dice(out == c, ref == c)
        assert d > 0.9, f"class {c}: Dice {d:.3f}"
    assert not corr.is_empty
    # a one-pixel-wide spike sticking out of the liver disappears
    z = _largest_slice(ref, LIVER)
    lab = ref.copy()
    m = ref[z] == LIVER
    ys, xs = np.nonzero(m)
    y = int(np.median(ys))
    x_edge = xs[ys == y].max()
    assert not lab[z, y, x_edge + 1 : x_edge + 9].any()
    lab[z, y, x_edge + 1 : x_edge + 9] = LIVER
    sm = smooth_contour(lab, [z], 2.5, spacing, class_index=LIVER)
    out = lab.copy()
    sm.apply(out)
    assert not (out[z, y, x_edge + 3 : x_edge + 9] == LIVER).any()
    # never paints over another class
    other = (lab[z] != 0) & (lab[z] != LIVER)
    assert np.array_equal(out[z][other], lab[z][other])
    with pytest.raises(ValueError):
        smooth_contour(lab, [z], 0.0, spacing)


# ---------------------------------------------------------------------------- Correction


def test_changed_coords_values_reproduce_after(chaos_labels_volume):
    ref = chaos_labels_volume.data
    corr = smooth_contour(ref, range(ref.shape[0]), 3.0, chaos_labels_volume.spacing_mm)
    assert len(corr.z) > 5 and corr.before.shape == corr.after.shape == (len(corr.z), *ref.shape[1:])
    assert np.array_equal(corr.before, ref[corr.z])
    zz, yy, xx = corr.changed_coords()
    vals = corr.changed_values()
    assert zz.shape == yy.shape == xx.shape == vals.shape and vals.dtype == np.uint8
    assert vals.size == corr.n_changed > 0
    lab = ref.copy()
    lab[zz, yy, xx] = vals  # what napari's layer.data_setitem does
    assert np.array_equal(lab[corr.z], corr.after)
    untouched = np.setdiff1d(np.arange(ref.shape[0]), corr.z)
    assert np.array_equal(lab[untouched], ref[untouched])
    lab2 = ref.copy()
    corr.apply(lab2)
    assert np.array_equal(lab, lab2)
    corr.inverse().apply(lab2)
    assert np.array_equal(lab2, ref)


def test_empty_correction_and_bad_input():
    lab = np.zeros((4, 8, 8), np.uint8)
    c = fill_holes(lab, [0, 1])
    assert c.z == [] and c.is_empty and c.changed_values().size == 0
    c.apply(lab)
    with pytest.raises(ValueError, match="out of range"):
        fill_holes(lab, [4])
    with pytest.raises(ValueError, match="3D"):
        fill_holes(lab[0], [0])
    with pytest.raises(ValueError):
        Correction([0, 1], np.zeros((1, 8, 8), np.uint8), np.zeros((1, 8, 8), np.uint8))
