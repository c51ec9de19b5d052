"""RT Structure Sets: written from a real CHAOS DICOM MR series (manual labels and a
``segment`` run of the bundled model), checked by dciodvfy (dicom3tools) and rasterised
back by plastimatch, an independent RT tool; read back by the plugin's reader on the
image grid; the private DICOM reference never reaches exported or saved bytes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_series import DICOM_FOR_UID, DICOM_PATIENT_ID, DICOM_PATIENT_NAME, DICOM_STUDY_UID, require_tool
from napari_gi_seg._reader import napari_get_reader
from napari_gi_seg._writer import write_labels as napari_write_labels
from napari_gi_seg.io import read_image, read_labels, write_labels
from napari_gi_seg.io.rtstruct import format_ds, mask_contours, read_rtstruct, write_rtstruct

CLASSES = {1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"}
COLOURS = {1: "#dc5050", 2: "#50b4dc", 3: "#3c78c8", 4: "#a050c8"}


def _with_hole_and_island(labels: np.ndarray) -> np.ndarray:
    """The manual labels with a hole in the liver's largest slice and a liver island
    inside that hole (contours nested three deep)."""
    lab = labels.copy()
    z = int(np.argmax((lab == 1).sum((1, 2))))
    ys, xs = np.nonzero(lab[z] == 1)
    cy, cx = int(ys.mean()), int(xs.mean())
    assert (lab[z, cy - 6 : cy + 7, cx - 6 : cx + 7] == 1).all()
    lab[z, cy - 5 : cy + 6, cx - 5 : cx + 6] = 0
    lab[z, cy - 1 : cy + 2, cx - 1 : cx + 2] = 1
    return lab


def dciodvfy_errors(path: Path) -> list[str]:
    """The lines dciodvfy reports as errors for ``path``."""
    exe = require_tool("dciodvfy")
    p = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("Error")]


def _all_ds_values(ds) -> list[str]:
    out = []
    for elem in ds.iterall():
        if elem.VR == "DS" and elem.value is not None:
            vals = elem.value if elem.VM > 1 else [elem.value]
            out += [str(v) for v in vals]
    return out


@pytest.mark.parametrize("case", ["chaos_dicom", "chaos_dicom_flipped"])
def test_rtstruct_round_trip_is_exact_valid_and_referenced(case, request, tmp_path):
    dc = request.getfixturevalue(case)
    image = read_image(dc.folder)[0]
    labels = _with_hole_and_island(dc.labels)
    out = write_rtstruct(tmp_path / "rt.dcm", labels, image, CLASSES, COLOURS, description="test:1")
    assert dciodvfy_errors(out) == []
    ds = pydicom.dcmread(out)
    # Every Decimal String fits its VR (<= 16 characters) when read back raw.
    raw_ds = pydicom.dcmread(out, defer_size=None)
    assert all(len(v) <= 16 for v in _all_ds_values(raw_ds))
    assert [r.ROIName for r in ds.StructureSetROISequence] == list(CLASSES.values())
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == ["ORGAN"] * 4
    assert [list(c.ROIDisplayColor) for c in ds.ROIContourSequence][0] == [220, 80, 80]
    # References: frame of reference -> study -> series -> every slice's SOP instance.
    ref = image._dicom_ref
    rfor = ds.ReferencedFrameOfReferenceSequence[0]
    assert rfor.FrameOfReferenceUID == DICOM_FOR_UID
    study = rfor.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == DICOM_STUDY_UID == ds.StudyInstanceUID
    series = study.RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == ref.series_instance_uid
    assert [c.ReferencedSOPInstanceUID for c in series.ContourImageSequence] == list(ref.sop_instance_uids)
    # The Patient module is the series' (the RT object goes back to the planning system).
    assert (str(ds.PatientName), ds.PatientID) == (DICOM_PATIENT_NAME, DICOM_PATIENT_ID)
    # Each contour lies on the plane of the slice it references.
    uid_z = {u: k for k, u in enumerate(ref.sop_instance_uids)}
    for roi in ds.ROIContourSequence:
        for c in roi.ContourSequence:
            pts = np.asarray(c.ContourData, float).reshape(-1, 3)
            k = uid_z[c.ContourImageSequence[0].ReferencedSOPInstanceUID]
            assert np.abs((pts - ref.positions[k]) @ ref.normal).max() < 1e-3
    # Read back: the same labels voxel for voxel, ROI names as class names.
    back = read_rtstruct(out)
    assert back.shape == image.shape and np.allclose(back.affine, image.affine)
    assert np.array_equal(back.data, labels)
    assert back.metadata["class_names"] == CLASSES


def test_mask_contours_reproduce_the_mask_for_holes_and_islands(chaos_dicom):
    from skimage.draw import polygon

    lab = _with_hole_and_island(chaos_dicom.labels)
    for z in range(lab.shape[0]):
        for v in (1, 2, 3, 4):
            m = lab[z] == v
            out = np.zeros_like(m)
            polys = mask_contours(m)
            for poly in polys:
                rr, cc = polygon(poly[:, 0], poly[:, 1], m.shape)
                s = np.zeros_like(m)
                s[rr, cc] = True
                out |= s  # OR, as plastimatch does by default: keyholes make holes survive it
            assert np.array_equal(out, m), (z, v)


def test_format_ds_fits_sixteen_characters():
    for v in (0.0, -0.0, 1 / 3, -123.456789123, 98765.4321987, 1e-9, -1.23456789e12, 7.7):
        s = format_ds(v)
        assert len(s) <= 16 and abs(float(s) - v) <= max(5e-4, abs(v) * 1e-9)
    with pytest.raises(ValueError, match="Decimal String"):
        format_ds(float("nan"))


def test_segment_rtstruct_rasterised_by_plastimatch(segmented_dicom, chaos_dicom, tmp_path):
    """``segment DICOM_DIR -o rt.dcm --format rtstruct``: plastimatch rasterises the
    structure set onto the series; per-organ Dice >= 0.95 against the run's labels."""
    import nibabel as nib

    exe = require_tool("plastimatch")
    rt, labels, image = segmented_dicom["rtstruct"], segmented_dicom["labels"], segmented_dicom["image"]
    assert dciodvfy_errors(rt) == []
    assert np.array_equal(read_labels(rt).data, labels)  # our reader agrees with the NIfTI of the run
    out = tmp_path / "plasti"
    p = subprocess.run(
        [exe, "convert", "--input", str(rt), "--referenced-ct", str(chaos_dicom.folder)]
        + ["--output-prefix", str(out), "--prefix-format", "nii.gz"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    present = {v: n for v, n in CLASSES.items() if (labels == v).any()}
    assert len(present) >= 3  # the bundled model finds the organs on this patient
    for v, name in present.items():
        img = nib.load(str(out / f"{name}.nii.gz"))
        mask = np.asarray(img.dataobj) > 0
        # plastimatch's voxel (i, j, k) -> LPS -> our (x, y, z) voxel index
        ijk = np.array(np.nonzero(mask), float)
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
        xyz = np.rint(np.linalg.inv(image.affine) @ lps)[:3].astype(int)
        ours = np.zeros(labels.shape, bool)
        ours[xyz[2], xyz[1], xyz[0]] = True
        ref = labels == v
        dice = 2 * np.count_nonzero(ours & ref) / (ours.sum() + ref.sum())
        assert dice >= 0.95, (name, dice)


def test_rtstruct_reopens_through_the_reader_and_writer(segmented_dicom, tmp_path):
    rt, labels, image = segmented_dicom["rtstruct"], segmented_dicom["labels"], segmented_dicom["image"]
    reader = napari_get_reader(str(rt))
    assert reader is not None
    [(data, kw, kind)] = reader(str(rt))
    assert kind == "labels" and np.array_equal(data, labels)
    assert np.allclose(kw["scale"], image.spacing_mm)
    assert kw["metadata"]["class_names"] == CLASSES
    # Save Layer as .dcm: the token in the layer metadata finds the series' UIDs again.
    kw["metadata"]["model_key"] = "chaos-t2spir:1"
    [written] = napari_write_labels(str(tmp_path / "again.dcm"), data, kw)
    ds = pydicom.dcmread(written)
    assert {r.ROIGenerationAlgorithm for r in ds.StructureSetROISequence} == {"SEMIAUTOMATIC"}
    assert np.array_equal(read_labels(written).data, labels)
    assert dciodvfy_errors(Path(written)) == []


def test_rtstruct_on_another_grid_and_bad_inputs(segmented_dicom, chaos_image_path, tmp_path):
    from napari_gi_seg.io.nifti import read_nifti

    # Rasterised on the original NIfTI (RAS, other z order): same organs at the same places.
    nii = read_nifti(chaos_image_path)
    on_nifti = read_labels(segmented_dicom["rtstruct"], like=nii)
    assert on_nifti.shape == nii.shape
    assert np.array_equal(on_nifti.data, segmented_dicom["labels"][::-1])
    # A NIfTI image cannot give an RTSTRUCT: one clear line.
    with pytest.raises(ValueError, match=r"x\.dcm: RTSTRUCT and DICOM-SEG need an image read from a DICOM series"):
        write_labels(tmp_path / "x.dcm", segmented_dicom["labels"][::-1], nii)
    # A structure set without its series nearby.
    lonely = tmp_path / "alone" / "rt.dcm"
    lonely.parent.mkdir()
    lonely.write_bytes(segmented_dicom["rtstruct"].read_bytes())
    with pytest.raises(ValueError, match=r"rt\.dcm: the image series it references .* is not in this folder"):
        read_labels(lonely)


def test_dicom_reference_never_reaches_exports_sessions_or_layers(chaos_dicom, tmp_path):
    """UIDs and patient values stay in the private field: grep every byte written by an
    export (images, labels, dataset.json, provenance.json), a session save and the
    layer metadata for them."""
    from napari_gi_seg.curation.export import export_case
    from napari_gi_seg.curation.review import ReviewTracker
    from napari_gi_seg.curation.session import SessionStore, image_fingerprint

    image = read_image(chaos_dicom.folder)[0]
    ref = image._dicom_ref
    secrets = [DICOM_PATIENT_NAME, DICOM_PATIENT_ID, DICOM_STUDY_UID, DICOM_FOR_UID, ref.series_instance_uid]
    secrets += list(ref.sop_instance_uids[:3]) + ["19700101", "ACC42"]
    assert not any(s in repr(image) or s in repr(image.metadata) for s in secrets)
    kw = image.layer_kwargs()
    assert not any(s in repr(kw) for s in secrets) and len(kw["metadata"]["dicom_ref_token"]) == 16
    pred = chaos_dicom.labels.copy()
    pred[pred == 2] = 0
    export_case(tmp_path / "ds", image, chaos_dicom.labels, range(10, 20), CLASSES, prediction=pred, model_key="m:1")
    review = ReviewTracker(image.shape[0])
    review.mark_reviewed(range(10, 20))
    SessionStore(tmp_path / "sessions").save(
        image_fingerprint(image.data), chaos_dicom.labels, pred, review, kw["metadata"]
    )
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 5
    for p in written:
        blob = p.read_bytes()
        if p.suffix == ".gz":
            import gzip

            blob = gzip.decompress(blob)
        elif p.suffix == ".npz":
            import zipfile

            with zipfile.ZipFile(p) as z:
                blob = b"".join(z.read(n) for n in z.namelist())
        for s in secrets:
            assert s.encode() not in blob, (p.name, s)
