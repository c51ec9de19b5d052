"""Shared fixtures: the real data in ``../shared/data`` and an isolated user folder.

Real data is found through :func:`napari_gi_seg.paths.data_dir` (``$NAPARI_GI_SEG_DATA``
or ``../shared/data`` beside the repository). Under CI (``CI=true``) missing data is a
test **failure**; elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from dicom_series import RAS_TO_LPS, write_mr_series  # noqa: E402 - tests/ is on sys.path
from napari_gi_seg.paths import data_dir as _data_dir

#: A small CHAOS patient is not needed: patient 1 (256 x 256 x 37) reads in ~0.2 s.
CHAOS_PATIENT = 1


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_path(path: Path | None, what: str) -> Path:
    """Return ``path`` if it exists; else fail under CI, skip elsewhere."""
    if path is not None and Path(path).exists():
        return Path(path)
    msg = f"real data missing: {what} ({path}); set NAPARI_GI_SEG_DATA or provide ../shared/data"
    if _on_ci():
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(autouse=True)
def _isolated_user_dir(tmp_path_factory, monkeypatch):
    """Every test gets its own empty ``NAPARI_GI_SEG_HOME`` so nothing is written to
    the real user folder (user models, sessions, pooch cache). The bundled model
    lives in the package data and stays visible."""
    home = tmp_path_factory.mktemp("gi_seg_home")
    monkeypatch.setenv("NAPARI_GI_SEG_HOME", str(home))
    yield home


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real-data folder (``chaos_mr_t2spir/``, ``uwmgi/``, ``totalseg_example_mr/``)."""
    return require_path(_data_dir(), "data folder")


@pytest.fixture(scope="session")
def chaos_dir(data_dir) -> Path:
    """``<data>/chaos_mr_t2spir``: 16 CHAOS T2-SPIR patients, image_<id>/label_<id>.nii.gz."""
    return require_path(data_dir / "chaos_mr_t2spir", "CHAOS T2-SPIR folder")


@pytest.fixture(scope="session")
def chaos_image_path(chaos_dir) -> Path:
    """CHAOS patient 1 image: 256 x 256 x 37 (x, y, z), spacing 1.25 x 1.25 x 7.7 mm."""
    return require_path(chaos_dir / f"image_{CHAOS_PATIENT}.nii.gz", "CHAOS image")


@pytest.fixture(scope="session")
def chaos_label_path(chaos_dir) -> Path:
    """CHAOS patient 1 labels: 0 background, 1 liver, 2 right kidney, 3 left kidney, 4 spleen."""
    return require_path(chaos_dir / f"label_{CHAOS_PATIENT}.nii.gz", "CHAOS labels")


@pytest.fixture(scope="session")
def uwmgi_csv(data_dir) -> Path:
    """The full UW-Madison GI Tract ``train.csv`` (115,488 rows, labels only, no scans)."""
    return require_path(data_dir / "uwmgi" / "train.csv", "UW-Madison train.csv")


@pytest.fixture(scope="session")
def totalseg_dir(data_dir) -> Path:
    """``<data>/totalseg_example_mr``: one tiny MR volume with model-predicted labels."""
    return require_path(data_dir / "totalseg_example_mr", "TotalSegmentator example MR")


# ----------------------------------------------------------------- a real CHAOS volume as a DICOM MR series
@dataclass
class DicomCase:
    """A CHAOS patient written as a DICOM MR series: ``folder`` (the series),
    ``labels`` ``(z, y, x)`` uint8 manual labels in the DICOM stack's z order,
    ``class_names`` {1: "liver", ...}."""

    folder: Path
    labels: object
    class_names: dict


def _dicom_case(tmp_path_factory, chaos_image_path, chaos_label_path, name: str, flip_x: bool) -> DicomCase:
    import numpy as np

    from napari_gi_seg.io import read_image
    from napari_gi_seg.io.nifti import read_nifti

    img = read_nifti(chaos_image_path, as_labels=False)
    lab = read_nifti(chaos_label_path, as_labels=True)
    data, labels, aff = img.data, lab.data, np.asarray(RAS_TO_LPS) @ img.affine
    if flip_x:  # a second orientation: columns reversed, so the row cosine and the slice normal flip
        data, labels = data[:, :, ::-1], labels[:, :, ::-1]
        f = np.diag([-1.0, 1.0, 1.0, 1.0])
        f[0, 3] = data.shape[2] - 1
        aff = aff @ f
    root = tmp_path_factory.mktemp(name)
    uid = "1.2.826.0.1.3680043.8.498.7701" + ("9" if flip_x else "1")
    write_mr_series(np.ascontiguousarray(data), aff, root / "MR", uid)
    vol = read_image(root / "MR")[0]
    # The reader sorts slices along the plane normal: find the z order it chose.
    zs = [int(round(v)) for v in (np.linalg.inv(aff) @ np.c_[vol._dicom_ref.positions, np.ones(vol.shape[0])].T)[2]]
    return DicomCase(
        root / "MR", np.ascontiguousarray(labels[zs]), {1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"}
    )


@pytest.fixture(scope="session")
def chaos_dicom(tmp_path_factory, chaos_image_path, chaos_label_path) -> DicomCase:
    """CHAOS patient 1 as a DICOM MR series (scanner-like orientation, slices in the
    file names' random order) with its manual labels in the series' z order."""
    return _dicom_case(tmp_path_factory, chaos_image_path, chaos_label_path, "chaos_dicom", flip_x=False)


@pytest.fixture(scope="session")
def chaos_dicom_flipped(tmp_path_factory, chaos_image_path, chaos_label_path) -> DicomCase:
    """The same patient in a second orientation (columns running the other way)."""
    return _dicom_case(tmp_path_factory, chaos_image_path, chaos_label_path, "chaos_dicom_flip", flip_x=True)
