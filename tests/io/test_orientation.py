"""Orientation and frame logic (io/orientation.py) on the real CHAOS volume: the frame
map between any storage order and a model's frame is exact and invertible, LPS and RAS
sources agree, and the documented UW-Madison assumption matches its real labels."""

from __future__ import annotations

import itertools
import warnings

import nibabel as nib
import numpy as np
import pytest

from napari_gi_seg.io.nifti import nifti_affine, read_nifti, write_nifti
from napari_gi_seg.io.orientation import (
    ASSUMED_AXCODES,
    LPS_TO_RAS,
    FrameGuessWarning,
    array_axcodes,
    frame_map,
    reorient_volume,
    zyx_affine,
)
from napari_gi_seg.io.volume import Volume

ALL_AXCODES = [
    tuple(p[i][s[i]] for i in range(3))
    for perm in itertools.permutations([("L", "R"), ("A", "P"), ("S", "I")])
    for p in [perm]
    for s in itertools.product((0, 1), repeat=3)
]  # the 48 orientations


@pytest.fixture(scope="module")
def chaos(chaos_image_path) -> Volume:
    return read_nifti(chaos_image_path, as_labels=False)


def _world(vol: Volume, zyx) -> np.ndarray:
    """RAS mm of (z, y, x) voxel indices of ``vol``."""
    return (zyx_affine(nifti_affine(vol), vol.index_order) @ np.c_[zyx, np.ones(len(zyx))].T)[:3].T


def test_chaos_is_already_in_its_own_frame(chaos):
    assert nib.aff2axcodes(chaos.affine) == ("L", "A", "S")
    fm = frame_map(chaos, ("L", "A", "S"))
    assert fm.is_identity and fm.input_axcodes == ("S", "A", "L") and fm.guess is None
    assert fm.model_spacing_mm == pytest.approx((7.7, 1.25, 1.25))


@pytest.mark.parametrize("codes", ALL_AXCODES, ids=["".join(c) for c in ALL_AXCODES])
def test_every_orientation_round_trips_exactly(chaos, codes):
    v = reorient_volume(chaos, codes)
    assert nib.aff2axcodes(v.affine) == codes
    # every voxel keeps its world position and value: find 50 voxels of the original in
    # the reoriented volume through its affine
    rng = np.random.default_rng(0)
    zyx = np.c_[rng.integers(0, 37, 50), rng.integers(0, 256, 50), rng.integers(0, 256, 50)]
    world = _world(chaos, zyx)
    new = np.linalg.inv(zyx_affine(nifti_affine(v), v.index_order)) @ np.c_[world, np.ones(len(world))].T
    new_idx = np.round(new[:3].T).astype(int)
    assert np.allclose(new[:3].T, new_idx, atol=1e-6)
    assert np.array_equal(chaos.data[tuple(zyx.T)], v.data[tuple(new_idx.T)])
    fm = frame_map(chaos, codes)
    # and back: the frame map to the original's codes is its exact inverse
    back = frame_map(v, ("L", "A", "S"))
    assert np.array_equal(back.to_model(v.data), chaos.data)
    assert np.array_equal(fm.from_model(v.data), chaos.data)


def test_lps_source_maps_like_the_ras_original(chaos):
    """The same voxels with a DICOM-style LPS affine (and DICOM metadata) lay out in a
    model's frame exactly as the RAS NIfTI does."""
    lps = Volume(chaos.data, chaos.spacing_mm, LPS_TO_RAS @ chaos.affine, (2, 1, 0), {"format": "dicom"})
    assert array_axcodes(lps, ("L", "A", "S"))[0] == ("S", "A", "L")
    for codes in (("R", "A", "S"), ("L", "P", "I"), ("A", "R", "S")):
        assert np.array_equal(frame_map(lps, codes).to_model(lps.data), frame_map(chaos, codes).to_model(chaos.data))
    assert np.allclose(nifti_affine(lps), chaos.affine)


def test_inplane_inverse_matches_the_3d_inverse(chaos):
    for codes in (("A", "L", "S"), ("P", "R", "I"), ("R", "A", "S")):
        v = reorient_volume(chaos, codes)
        fm = frame_map(v, ("L", "A", "S"))
        model = fm.to_model(v.data)
        if fm.slices_reversed:
            model = model[::-1]
        assert np.array_equal(fm.inplane_from_model(model), v.data)


def test_sagittal_storage_is_a_different_slicing(chaos):
    v = reorient_volume(chaos, ("S", "A", "L"))  # the slice axis is now left-right
    fm = frame_map(v, ("L", "A", "S"))
    assert not fm.slice_axis_kept
    assert np.array_equal(fm.to_model(v.data), chaos.data)
    with pytest.raises(ValueError, match="slice axis"):
        fm.model_slices([0])


def test_no_orientation_uses_the_documented_assumption_and_says_so(tmp_path, chaos):
    png_like = Volume(chaos.data[:4], (3.0, 1.5, 1.5), np.diag([1.5, 1.5, 3.0, 1.0]), (2, 1, 0), {"format": "uwmgi"})
    codes, why = array_axcodes(png_like, ("L", "A", "S"))
    assert codes == tuple(reversed(ASSUMED_AXCODES["uwmgi"])) == ("I", "P", "L")
    assert "radiologically" in why and "posterior" in why
    # the NIfTI writer states the same assumption, with a warning
    with pytest.warns(FrameGuessWarning, match="no patient orientation"):
        out = write_nifti(png_like, tmp_path / "png_like.nii.gz")
    assert nib.aff2axcodes(nib.load(str(out)).affine) == ("L", "P", "I")
    # a volume with no geometry at all is taken as stored in the model's frame
    bare = Volume(chaos.data[:4], (1.0, 1.0, 1.0))
    codes, why = array_axcodes(bare, ("L", "A", "S"))
    assert codes == ("S", "A", "L") and "no geometry" in why
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nifti_affine(chaos)  # a real frame: no warning


def test_uwmgi_assumption_matches_the_real_labels(uwmgi_csv):
    """The stomach (anterior, on the patient's left, above the bowel) sits where the
    documented UW-Madison frame puts it, in every case-day of train.csv checked."""
    from napari_gi_seg.io.uwmgi import load_train_csv, read_uwmgi_multilabel

    assert ASSUMED_AXCODES["uwmgi"] == ("L", "P", "I")
    table = load_train_csv(uwmgi_csv)
    rows, cols, above = [], [], []
    for cd in table.case_days[::12]:
        m = read_uwmgi_multilabel(table, cd)  # (large_bowel, small_bowel, stomach)
        if not m[2].any() or not m[0].any():
            continue
        z, y, x = np.nonzero(m[2])
        rows.append(y.mean() / m.shape[2])
        cols.append(x.mean() / m.shape[3])
        above.append(z.mean() < np.nonzero(m[0])[0].mean())
    assert len(rows) >= 20
    # rows increase toward posterior: the stomach's centroid lies in the upper (anterior) half
    assert np.mean(np.array(rows) < 0.5) >= 0.8
    # columns increase toward the patient's left: the stomach lies right of the image centre
    assert np.mean(np.array(cols) > 0.5) >= 0.9
    # slice numbers increase toward the feet: the stomach is above the large bowel, always
    assert all(above)
