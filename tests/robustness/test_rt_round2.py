"""Hardening round 2 (issue 19), RT objects on the scanner's own CHAOS DICOM: DICOM-SEG
and RTSTRUCT written from series whose Type 2 attributes are empty (as CHAOS ships
them) or absent, checked with dciodvfy; structurally broken RTSTRUCTs; an explicit
``--format`` against the suffix; labels from another frame of reference refused for
``segment --adapt`` (:func:`napari_gi_seg.io.frames.check_same_frame`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_series import require_tool
from napari_gi_seg import cli
from napari_gi_seg.io import read_image, read_labels, write_labels
from napari_gi_seg.io.volume import InvalidInputError

CLASSES = {1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"}
#: Type 2 Patient/Study attributes an RT object must carry (present, maybe empty).
TYPE2 = ("PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyDate", "ReferringPhysicianName")
OTHER_FRAME = "1.2.826.0.1.3680043.8.498.99999"


def _cli(argv, capsys) -> tuple[int, list[str]]:
    rc = cli.main(argv)
    return rc, capsys.readouterr().err.strip().splitlines()


def dciodvfy_errors(path: Path) -> list[str]:
    p = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=120)
    return [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("Error")]


def ground_truth(vol, folder: Path, ground: Path, png_offset: int = 0) -> np.ndarray:
    """The CHAOS ground-truth PNGs of a series volume, in its z order: ``(z, y, x)``
    uint8, 0..4 (PNG values 63, 126, 189, 252; SOURCE.md)."""
    from skimage.io import imread

    by_uid = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in folder.glob("*.dcm")}
    out = []
    for uid in vol._dicom_ref.sop_instance_uids:
        s, n = by_uid[uid].stem.rsplit("-", 1)
        png = imread(ground / f"{s}-{int(n) + png_offset:05d}.png")
        out.append(np.round(png.astype(float) / 63).astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def t2_case(t2spir_p2, t2spir_p2_volume):
    """Patient 2's oblique T2-SPIR volume and its ground truth."""
    return t2spir_p2_volume, ground_truth(t2spir_p2_volume, t2spir_p2, t2spir_p2.parent / "Ground")


@pytest.fixture(scope="module")
def rt_p2(t2_case, tmp_path_factory) -> Path:
    """An RTSTRUCT of patient 2's ground truth, written once."""
    vol, gt = t2_case
    return write_labels(tmp_path_factory.mktemp("rt") / "gt.dcm", gt, vol, CLASSES)


def _write_both_and_check(vol, labels, folder: Path) -> None:
    for name in ("labels.seg.dcm", "labels.dcm"):
        out = write_labels(folder / name, labels, vol, CLASSES, model_key="tiny-chaos:1")
        assert dciodvfy_errors(out) == [], name
        ds = pydicom.dcmread(out)
        for tag in TYPE2:
            assert tag in ds and str(ds.get(tag) or "") == "", (name, tag)  # copied as empty, never invented
        assert str(ds.PatientName) == "CHAOS^MR_SET_2"
        np.testing.assert_array_equal(read_labels(out, like=vol).data, labels)


def _some_slices(labels: np.ndarray, n: int = 4) -> np.ndarray:
    """``labels`` on the ``n`` slices with the most foreground only (a quicker object)."""
    keep = np.argsort((labels > 0).reshape(len(labels), -1).sum(1))[-n:]
    out = np.zeros_like(labels)
    out[keep] = labels[keep]
    return out


# ------------------------------------------------------------------ SEG/RTSTRUCT from real headers
def test_seg_and_rtstruct_from_the_oblique_t2spir_series(t2_case, tmp_path):
    vol, gt = t2_case
    o = np.asarray(vol._dicom_ref.orientation)
    assert abs(abs(np.cross(o[:3], o[3:])[2]) - 1) > 1e-6  # oblique
    assert set(np.unique(gt)) == {0, 1, 2, 3, 4}
    _write_both_and_check(vol, _some_slices(gt, 8), tmp_path)


def test_seg_and_rtstruct_from_a_t1dual_echo(t1dual_p2, tmp_path):
    vols = read_image(t1dual_p2)
    inphase = next(v for v in vols if v.metadata["echo_time_ms"] > 4)
    gt = ground_truth(inphase, t1dual_p2 / "InPhase", t1dual_p2.parent / "Ground")
    _write_both_and_check(inphase, _some_slices(gt), tmp_path)


def test_seg_and_rtstruct_when_type2_attributes_are_absent(t2spir_p2, t2_case, tmp_path):
    _, gt = t2_case
    series = Path(shutil.copytree(t2spir_p2, tmp_path / "anon"))
    for f in series.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        for tag in (*TYPE2, "StudyTime", "StudyID"):
            if tag in ds:
                delattr(ds, tag)
        ds.save_as(f)
    [vol] = read_image(series)
    _write_both_and_check(vol, _some_slices(gt), tmp_path)


# ------------------------------------------------------------------ broken RTSTRUCTs
def _broken(rt: Path, dst: Path, damage) -> Path:
    ds = pydicom.dcmread(rt)
    damage(ds)
    ds.save_as(dst)
    return dst


def test_rtstruct_without_referenced_roi_number_names_the_file(rt_p2, t2_case, tmp_path):
    bad = _broken(rt_p2, tmp_path / "no_ref.dcm", lambda ds: delattr(ds.ROIContourSequence[1], "ReferencedROINumber"))
    with pytest.raises(InvalidInputError, match="ReferencedROINumber") as ei:
        read_labels(bad, like=t2_case[0])
    assert str(bad) in str(ei.value) and "item 2" in str(ei.value)


def test_malformed_contour_data_names_the_file(rt_p2, t2_case, tmp_path):
    def cut(ds):
        c = ds.ROIContourSequence[0].ContourSequence[0]
        c.ContourData = list(c.ContourData)[:-1]  # 3n - 1 values

    bad = _broken(rt_p2, tmp_path / "cut.dcm", cut)
    with pytest.raises(InvalidInputError, match=r"not \(x, y, z\) triplets") as ei:
        read_labels(bad, like=t2_case[0])
    assert str(bad) in str(ei.value) and "contour 1" in str(ei.value)


# ------------------------------------------------------------------ an explicit --format
def test_explicit_format_wins_over_the_suffix(t2spir_p2, tmp_path, tiny_key, capsys):
    out = tmp_path / "seg.dcm"
    argv = ["segment", str(t2spir_p2), "-o", str(out), "--format", "dicom-seg", "--model", tiny_key]
    rc, err = _cli([*argv, "--device", "cpu", "--quiet", "--slices", "12:13"], capsys)
    assert rc == 0, err
    assert str(pydicom.dcmread(out, stop_before_pixels=True).Modality) == "SEG"
    rc, err = _cli(["segment", str(t2spir_p2), "-o", str(tmp_path / "x.dcm"), "--format", "nifti"], capsys)
    assert rc == 2 and "--format nifti writes .nii.gz files, not .dcm" in err[0]


# ------------------------------------------------------------------ another frame of reference
def _other_frame_rt(ds):
    for item in ds.ReferencedFrameOfReferenceSequence:
        item.FrameOfReferenceUID = OTHER_FRAME
    for roi in ds.StructureSetROISequence:
        roi.ReferencedFrameOfReferenceUID = OTHER_FRAME


def test_adapt_refuses_an_rtstruct_of_another_frame(rt_p2, t2spir_p2, t2_case, tmp_path, tiny_key, capsys):
    from napari_gi_seg.io.frames import check_same_frame

    check_same_frame(t2_case[0], read_labels(rt_p2, like=t2_case[0]))  # its own frame: accepted
    other = _broken(rt_p2, tmp_path / "other_frame.dcm", _other_frame_rt)
    out = tmp_path / "out.nii.gz"
    argv = ["segment", str(t2spir_p2), "-o", str(out), "--model", tiny_key, "--device", "cpu", "--quiet"]
    rc, err = _cli([*argv, "--adapt", str(other), "--adapt-slices", "12"], capsys)
    assert rc == 2 and len(err) == 1 and str(other) in err[0] and "another frame of reference" in err[0]
    assert not out.exists()


def test_adapt_refuses_nifti_labels_of_another_position(t2_case, tmp_path, tiny_key, capsys, t2spir_p2):
    import nibabel as nib

    from napari_gi_seg.io.frames import check_same_frame

    vol, gt = t2_case
    good = write_labels(tmp_path / "gt.nii.gz", gt, vol, CLASSES)
    check_same_frame(vol, read_labels(good, like=vol))  # written on this scan: accepted
    img = nib.load(good)
    aff = img.affine.copy()
    aff[:3, 3] += [0.0, 50.0, 0.0]  # the same grid 5 cm further anterior: another scan
    moved = tmp_path / "moved.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), aff), moved)
    out = tmp_path / "out.nii.gz"
    argv = ["segment", str(t2spir_p2), "-o", str(out), "--model", tiny_key, "--device", "cpu", "--quiet"]
    rc, err = _cli([*argv, "--adapt", str(moved), "--adapt-slices", "12"], capsys)
    assert rc == 2 and "moved.nii.gz" in err[0] and "50.0 mm away" in err[0]
    assert not out.exists()


def test_seg_of_another_frame_is_refused(t2_case, tmp_path):
    from napari_gi_seg.io.frames import FrameOfReferenceError

    vol, gt = t2_case
    seg = write_labels(tmp_path / "gt.seg.dcm", gt, vol, CLASSES)
    ds = pydicom.dcmread(seg)
    ds.FrameOfReferenceUID = OTHER_FRAME
    ds.save_as(tmp_path / "other.seg.dcm")
    with pytest.raises(FrameOfReferenceError, match="another frame of reference") as ei:
        read_labels(tmp_path / "other.seg.dcm", like=vol)
    assert "other.seg.dcm" in str(ei.value)
