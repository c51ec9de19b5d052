"""Helpers of the fault-injection tests (imported by the test modules; fixtures are in
``conftest.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python: this worktree's ``src`` first, one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_until_paused(code: str, *args: str, match: str = "", timeout: float = 60.0) -> str:
    """Run ``python -c code args...`` with the pause hook on; once it says it paused
    before the rename of a destination (containing ``match``), ``kill -9`` it and
    return that line. Fails the test if the child ends or times out first."""
    env = child_env(NAPARI_GI_SEG_FAULT_PAUSE_BEFORE_RENAME="60", NAPARI_GI_SEG_FAULT_PAUSE_MATCH=match)
    p = subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    t0 = time.time()
    seen = []
    try:
        for line in p.stderr:
            seen.append(line)
            if line.startswith("gi-seg-fault: paused before rename of"):
                os.kill(p.pid, signal.SIGKILL)
                p.wait(10)
                return line.strip()
            if time.time() - t0 > timeout:
                break
        pytest.fail("the writer never reached its final rename:\n" + "".join(seen[-30:]))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    return ""  # pragma: no cover


CHAOS_CLASSES = {1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"}
#: Parts of the patient-like dataset and case names the privacy tests use; none may be written.
PRIVATE_NAMES = ("Zzdoe", "Janetest", "7734921", "Roe_Richard", "MRN1234")


def temp_leftovers(folder: Path) -> list[str]:
    """Names of the atomic helper's temporaries under ``folder`` (recursively)."""
    from napari_gi_seg._atomic import is_temp_name

    return sorted(p.name for p in Path(folder).rglob("*") if is_temp_name(p.name))


def write_dicom_series(vol, folder: Path, series_uid: str, description: str, slices: range) -> None:
    """Test helper: ``slices`` of a real NIfTI volume (RAS) as single-frame MR DICOM
    files (uint16, LPS geometry) of one series, with a patient name that must never
    reach an output."""
    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ vol.affine
    dx, dy = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    folder.mkdir(parents=True, exist_ok=True)
    for k in slices:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID = "DOE^JANE", "MRN123456"
        ds.SeriesInstanceUID, ds.Modality, ds.SeriesDescription = series_uid, "MR", description
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*(lps[:3, 0] / dx), *(lps[:3, 1] / dy))]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in (lps @ [0, 0, k, 1])[:3]]
        ds.PixelSpacing = [f"{dy:.6f}", f"{dx:.6f}"]
        px = np.clip(vol.data[k], 0, 65535).astype(np.uint16)
        ds.Rows, ds.Columns = px.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = px.tobytes()
        pydicom.dcmwrite(folder / f"{series_uid[-6:]}_{k:03d}.dcm", ds, enforce_file_format=True)


def nifti_with_header(src: Path, dst: Path, **fields) -> Path:
    """Copy the real NIfTI ``src`` to ``dst`` (gzip) with raw header ``fields``
    changed, bypassing nibabel's repairs (which would turn a zero pixdim into 1)."""
    import gzip

    import nibabel as nib

    raw = gzip.decompress(Path(src).read_bytes())
    hdr = nib.Nifti1Header(binaryblock=raw[:348], check=False)
    for k, v in fields.items():
        if "[" in k:
            name, idx = k.rstrip("]").split("[")
            hdr[name][int(idx)] = v
        else:
            hdr[k] = v
    dst.write_bytes(gzip.compress(hdr.binaryblock + raw[348:], 1))
    return dst


def bomb_header(shape, dtype="int16"):
    """The 348-byte header of a NIfTI file claiming ``shape`` voxels of ``dtype``."""
    import nibabel as nib
    import numpy as np

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.dtype(dtype))
    hdr.set_data_shape(shape)
    hdr["vox_offset"] = 352
    return hdr.binaryblock + b"\0" * 4
