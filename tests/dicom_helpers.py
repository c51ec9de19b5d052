"""Test helpers (not product code): a real CHAOS volume written as DICOM with pydicom,
as a classic single-frame MR series or as one Enhanced MR multi-frame file, with patient
identifiers set (the readers must drop them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_gi_seg.io.volume import Volume

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-0042-SECRET"
SLOPE, INTERCEPT = 0.025, -10.0  # uint16 holds up to 1628: every CHAOS volume fits
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _lps_geometry(vol: Volume):
    """(LPS affine in (x, y, z) voxel order, dx, dy, row cosine, column cosine) of a
    NIfTI-sourced volume (RAS affine, ``index_order = (2, 1, 0)``)."""
    lps = RAS_TO_LPS @ vol.affine  # voxel (x, y, z) -> LPS mm
    dx, dy = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    return lps, dx, dy, lps[:3, 0] / dx, lps[:3, 1] / dy


def _stored(slice_yx: np.ndarray) -> np.ndarray:
    px = np.round((slice_yx - INTERCEPT) / SLOPE)  # (rows=y, cols=x)
    assert px.min() >= 0 and px.max() <= 65535, "intensities do not fit uint16 with this slope/intercept"
    return px.astype(np.uint16)


def _base_dataset(sop_class: str, series_uid: str, description: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, "19700101"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1", series_uid
    ds.Modality, ds.SeriesDescription = "MR", description
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def write_dicom_series(
    vol: Volume, folder: Path, series_uid: str, description: str, rows_cols: tuple[int, int] | None = None, names=None
) -> list[Path]:
    """Write ``vol`` (NIfTI-sourced, RAS affine) as single-frame MR DICOM slices, uint16
    with rescale slope/intercept, LPS geometry; file names that do not sort by position
    (or ``names``); with ``rows_cols`` slice 1 gets that other size (a broken series)."""
    import pydicom
    from pydicom.uid import MRImageStorage

    lps, dx, dy, row_cos, col_cos = _lps_geometry(vol)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(vol.shape[0]):
        px = _stored(vol.data[k])
        if rows_cols is not None and k == 1:
            px = np.zeros(rows_cols, np.uint16)
        ds = _base_dataset(MRImageStorage, series_uid, description)
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in (lps @ [0, 0, k, 1])[:3]]
        ds.PixelSpacing = [f"{dy:.6f}", f"{dx:.6f}"]
        ds.SliceThickness = f"{np.linalg.norm(lps[:3, 2]):.4f}"
        ds.Rows, ds.Columns = px.shape
        ds.RescaleSlope, ds.RescaleIntercept = str(SLOPE), str(INTERCEPT)
        ds.PixelData = px.tobytes()
        # Names that do not sort by position: the reader must sort by geometry.
        name = names[k] if names else f"IM{(k * 7919) % 1000:04d}.dcm"
        p = folder / name
        pydicom.dcmwrite(p, ds, enforce_file_format=True)
        paths.append(p)
    return paths


def write_enhanced_mr(vol: Volume, path: Path, series_uid: str, description: str = "T2 SPIR enhanced") -> Path:
    """Write ``vol`` (NIfTI-sourced, RAS affine) as ONE Enhanced MR Image Storage file:
    ``NumberOfFrames`` = slices, pixel spacing, orientation and rescale in the
    ``SharedFunctionalGroupsSequence``, each frame's ``ImagePositionPatient`` in its
    ``PerFrameFunctionalGroupsSequence`` item (PS3.3 C.7.6.16), frames stored in
    reverse z order (the reader must sort by geometry)."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    lps, dx, dy, row_cos, col_cos = _lps_geometry(vol)
    ds = _base_dataset("1.2.840.10008.5.1.4.1.1.4.1", series_uid, description)
    order = list(range(vol.shape[0]))[::-1]
    ds.NumberOfFrames = len(order)
    ds.Rows, ds.Columns = vol.shape[1:]
    measures, orient, transform = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing = [f"{dy:.6f}", f"{dx:.6f}"]
    measures.SliceThickness = f"{np.linalg.norm(lps[:3, 2]):.4f}"
    orient.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_cos, *col_cos)]
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = str(SLOPE), str(INTERCEPT), "US"
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per = []
    for k in order:
        pos, content, item = Dataset(), Dataset(), Dataset()
        pos.ImagePositionPatient = [f"{v:.4f}" for v in (lps @ [0, 0, k, 1])[:3]]
        content.InStackPositionNumber = k + 1
        item.PlanePositionSequence = Sequence([pos])
        item.FrameContentSequence = Sequence([content])
        per.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    ds.PixelData = np.stack([_stored(vol.data[k]) for k in order]).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path
