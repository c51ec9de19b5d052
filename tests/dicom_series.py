"""Test helpers (not product code): a real CHAOS volume written as a DICOM MR series
with pydicom, the patient values written into it, and external RT tools that must be
present under CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: Patient values written into the test DICOM series; nothing exported may contain them.
DICOM_PATIENT_NAME = "Doe^Jane"
DICOM_PATIENT_ID = "PID-0042-SECRET"
DICOM_STUDY_UID = "1.2.826.0.1.3680043.8.498.77001"
DICOM_FOR_UID = "1.2.826.0.1.3680043.8.498.77002"
RAS_TO_LPS = [[-1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]


def write_mr_series(data_zyx, affine_lps, folder: Path, series_uid: str, description: str = "T2 SPIR") -> list[Path]:
    """Test helper (not product code): write ``(z, y, x)`` float intensities as a
    single-frame MR DICOM series (uint16 with rescale slope/intercept) whose voxel
    ``(x, y, z)`` -> LPS mm matrix is ``affine_lps``; with Patient, Study and Frame of
    Reference modules as a scanner writes them (patient identifiers included)."""
    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    slope, inter = 0.02, -10.0
    a = np.asarray(affine_lps, float)
    dx, dy = np.linalg.norm(a[:3, 0]), np.linalg.norm(a[:3, 1])
    row_cos, col_cos = a[:3, 0] / dx, a[:3, 1] / dy
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(data_zyx.shape[0]):
        px = np.clip(np.round((data_zyx[k] - inter) / slope), 0, 65535).astype(np.uint16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
            DICOM_PATIENT_NAME,
            DICOM_PATIENT_ID,
            "19700101",
            "F",
        )
        ds.StudyInstanceUID, ds.SeriesInstanceUID = DICOM_STUDY_UID, series_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240102", "101500", "S42", "ACC42"
        ds.ReferringPhysicianName = "Ref^Doctor"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = DICOM_FOR_UID, ""
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "MR", description, 3, k + 1
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in (a @ [0, 0, k, 1])[:3]]
        ds.PixelSpacing = [f"{dy:.6f}", f"{dx:.6f}"]
        ds.SliceThickness = f"{np.linalg.norm(a[:3, 2]):.4f}"
        ds.Rows, ds.Columns = px.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = str(slope), str(inter)
        ds.PixelData = px.tobytes()
        p = folder / f"MR{(k * 7919) % 1000:04d}.dcm"  # names that do not sort by position
        pydicom.dcmwrite(p, ds, enforce_file_format=True)
        paths.append(p)
    return paths


def require_tool(name: str) -> str:
    """The path of the command-line tool ``name``; under CI a missing tool is a test
    failure (``scripts/setup.sh`` installs it), elsewhere the test is skipped."""
    import shutil

    found = shutil.which(name)
    if found:
        return found
    msg = f"{name} not installed (Debian: dicom3tools / plastimatch; scripts/setup.sh installs them as root)"
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(msg)
    pytest.skip(msg)
