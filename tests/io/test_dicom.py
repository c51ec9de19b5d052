"""DICOM series: a real CHAOS volume written as an MR series with pydicom (with patient
identifiers set) and read back: voxels, spacing, LPS affine, sorting, grouping, and no
patient identifier in the layer metadata."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_gi_seg._reader import napari_get_reader
from napari_gi_seg.io import InvalidInputError, read_image, write_labels
from napari_gi_seg.io.dicom import series_uid_hash
from napari_gi_seg.io.nifti import read_nifti
from napari_gi_seg.io.volume import Volume

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-0042-SECRET"
SLOPE, INTERCEPT = 0.02, -10.0
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def write_dicom_series(
    vol: Volume, folder: Path, series_uid: str, description: str, rows_cols: tuple[int, int] | None = None, names=None
) -> list[Path]:
    """Test helper (not product code): write ``vol`` (NIfTI-sourced, RAS affine) as
    single-frame MR DICOM slices, uint16 with rescale slope/intercept, LPS geometry."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    lps = RAS_TO_LPS @ vol.affine  # voxel (x, y, z) -> LPS mm
    dx, dy = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    row_cos, col_cos = lps[:3, 0] / dx, lps[:3, 1] / dy
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(vol.shape[0]):
        px = np.round((vol.data[k] - INTERCEPT) / SLOPE).astype(np.uint16)  # (rows=y, cols=x)
        if rows_cols is not None and k == 1:
            px = np.zeros(rows_cols, np.uint16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, "19700101"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1", series_uid
        ds.Modality, ds.SeriesDescription, ds.InstanceNumber = "MR", description, k + 1
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in (lps @ [0, 0, k, 1])[:3]]
        ds.PixelSpacing = [f"{dy:.6f}", f"{dx:.6f}"]
        ds.SliceThickness = f"{np.linalg.norm(lps[:3, 2]):.4f}"
        ds.Rows, ds.Columns = px.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = str(SLOPE), str(INTERCEPT)
        ds.PixelData = px.tobytes()
        # Names that do not sort by position: the reader must sort by geometry.
        name = names[k] if names else f"IM{(k * 7919) % 1000:04d}.dcm"
        p = folder / name
        pydicom.dcmwrite(p, ds, enforce_file_format=True)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def chaos_volume(chaos_image_path) -> Volume:
    return read_nifti(chaos_image_path, as_labels=False)


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory, chaos_volume) -> Path:
    root = tmp_path_factory.mktemp("dicom")
    write_dicom_series(chaos_volume, root / "study" / "t2", "1.2.826.0.1.3680043.8.498.11", "T2 SPIR")
    # A second series (every 4th slice) in another subfolder, plus files to ignore.
    sub = Volume(
        chaos_volume.data[::4], (7.7 * 4, 1.25, 1.25), chaos_volume.affine @ np.diag([1, 1, 4, 1]), (2, 1, 0), {}
    )
    write_dicom_series(
        sub,
        root / "study" / "scout",
        "1.2.826.0.1.3680043.8.498.12",
        "coarse",
        names=[f"s{i}" for i in range(sub.shape[0])],
    )  # no extension
    (root / "study" / "README.txt").write_text("not DICOM")
    (root / "study" / "t2" / "notes.json").write_text("{}")
    return root / "study"


def _z_flip(n: int) -> np.ndarray:
    f = np.diag([1.0, 1.0, -1.0, 1.0])
    f[2, 3] = n - 1
    return f


def test_dicom_series_round_trip(dicom_folder, chaos_volume):
    vols = read_image(dicom_folder)
    assert len(vols) == 2  # grouped by SeriesInstanceUID, non-DICOM files ignored
    t2 = next(v for v in vols if v.metadata["series_description"] == "T2 SPIR")
    coarse = next(v for v in vols if v.metadata["series_description"] == "coarse")
    assert t2.shape == chaos_volume.shape == (37, 256, 256)
    assert t2.data.dtype == np.float32
    assert np.allclose(t2.spacing_mm, (7.7, 1.25, 1.25), atol=1e-3)
    assert t2.metadata["coordinate_system"] == "LPS" and t2.metadata["modality"] == "MR"
    assert t2.metadata["series_instance_uid_hash"] == series_uid_hash("1.2.826.0.1.3680043.8.498.11")
    # Slices ascend along the plane normal n = row x column cosine. In this CHAOS
    # geometry (rows run to +L, columns to -P = anterior) n points to the feet, so the stack comes out in
    # the opposite z order to the NIfTI; the affine says so, and every voxel maps to
    # the same LPS point with the same value (within the rescale step).
    normal = np.cross(t2.affine[:3, 0], t2.affine[:3, 1])
    assert normal @ t2.affine[:3, 2] > 0
    src_lps = RAS_TO_LPS @ chaos_volume.affine
    assert np.allclose(np.linalg.inv(src_lps) @ t2.affine, _z_flip(37), atol=1e-4)
    assert np.abs(t2.data - chaos_volume.data[::-1]).max() <= SLOPE / 2 + 1e-3
    assert coarse.shape == (10, 256, 256)
    assert np.allclose(coarse.spacing_mm, (30.8, 1.25, 1.25), atol=1e-3)
    assert np.abs(coarse.data - chaos_volume.data[::4][::-1]).max() <= SLOPE / 2 + 1e-3
    assert np.allclose(coarse.affine[:3, 3], (src_lps @ [0, 0, 36, 1])[:3], atol=1e-3)


def test_no_patient_identifier_reaches_the_layer(dicom_folder):
    layers = napari_get_reader(str(dicom_folder))(str(dicom_folder))
    assert [t for *_, t in layers] == ["image", "image"]
    for _, kw, _ in layers:
        text = repr(kw).lower()
        for secret in (
            PATIENT_NAME.lower(),
            "doe",
            PATIENT_ID.lower(),
            "19700101",
            "1.2.826.0.1.3680043.8.498.11",
            "1.2.826.0.1.3680043.8.498.1",
        ):
            assert secret not in text
        assert not any("patient" in k.lower() for k in kw["metadata"])
        assert np.allclose(kw["scale"][1:], (1.25, 1.25))


def test_labels_on_a_dicom_image_are_written_as_ras_nifti(dicom_folder, chaos_label_path, tmp_path):
    t2 = next(v for v in read_image(dicom_folder) if v.metadata["series_description"] == "T2 SPIR")
    labels = read_nifti(chaos_label_path, as_labels=True).data[::-1]  # in the DICOM stack's z order
    out = write_labels(tmp_path / "t2_labels.nii.gz", labels, t2)
    back, src = nib.load(str(out)), nib.load(str(chaos_label_path))
    # Same voxels at the same RAS points as the original CHAOS label file.
    assert np.allclose(back.affine, src.affine @ _z_flip(37), atol=1e-3)
    assert np.allclose(nib.as_closest_canonical(back).affine, nib.as_closest_canonical(src).affine, atol=1e-3)
    assert np.array_equal(
        np.asarray(nib.as_closest_canonical(back).dataobj), np.asarray(nib.as_closest_canonical(src).dataobj)
    )


def test_a_single_dcm_file_opens_its_series(dicom_folder):
    one = sorted((dicom_folder / "t2").glob("*.dcm"))[0]
    vols = napari_get_reader(str(one))(str(one))
    assert len(vols) == 1 and vols[0][0].shape == (37, 256, 256)


def test_mixed_image_sizes_are_refused(tmp_path, chaos_volume):
    small = Volume(chaos_volume.data[:3], chaos_volume.spacing_mm, chaos_volume.affine, (2, 1, 0), {})
    write_dicom_series(small, tmp_path / "mixed", "1.2.826.0.1.3680043.8.498.13", "broken", rows_cols=(128, 200))
    reader = napari_get_reader(str(tmp_path / "mixed"))
    assert reader is not None
    with pytest.raises(InvalidInputError, match=r"mixed: series [0-9a-f]{16} mixes image sizes.*200x128.*256x256"):
        reader(str(tmp_path / "mixed"))


def test_folder_without_dicom_is_not_ours(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    assert napari_get_reader(str(tmp_path)) is None
    with pytest.raises(InvalidInputError, match="unsupported input"):
        read_image(tmp_path)
