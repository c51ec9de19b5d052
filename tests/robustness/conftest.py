"""Fault-injection helpers: processes killed at the worst moment, a full disk, a
read-only folder, and the real CHAOS data they write.

* :func:`run_until_paused` starts a Python snippet in a subprocess with the atomic
  helper's pause hook on (``$NAPARI_GI_SEG_FAULT_PAUSE_BEFORE_RENAME``), waits for it
  to report that it reached the final rename, and ``kill -9``-s it there.
* ``tiny_fs``: a 1 MiB tmpfs (real ``ENOSPC``) when running as root (CI does); else
  ``None`` and the tests patch the writer to raise ``ENOSPC`` instead.
* ``readonly_dir``: a read-only tmpfs mount as root (``chmod`` does not stop root),
  else a ``chmod 0555`` folder.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


def _mount_tmpfs(path: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs folder (a real full disk), or ``None`` when mounting is not possible."""
    mnt = tmp_path / "tiny"
    if not _mount_tmpfs(mnt, "size=1m"):
        yield None
        return
    try:
        yield mnt
    finally:
        _umount(mnt)


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nobody can write to (even root): a read-only tmpfs, else chmod 0555."""
    mnt = tmp_path / "ro"
    if _mount_tmpfs(mnt, "size=1m"):
        (mnt / "existing.txt").write_text("kept\n")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        try:
            yield mnt
        finally:
            _umount(mnt)
        return
    mnt.mkdir()
    (mnt / "existing.txt").write_text("kept\n")
    mnt.chmod(0o555)
    try:
        if os.access(mnt, os.W_OK):
            pytest.skip("cannot make a read-only folder here (root without mount)")
        yield mnt
    finally:
        mnt.chmod(0o755)


@pytest.fixture(scope="session")
def chaos_volume(chaos_image_path):
    """CHAOS patient 1 image, ``(37, 256, 256)`` float32, RAS affine."""
    from napari_gi_seg.io.nifti import read_nifti

    return read_nifti(chaos_image_path, as_labels=False)


@pytest.fixture(scope="session")
def chaos_labels(chaos_label_path):
    """CHAOS patient 1 labels ``(37, 256, 256)`` uint8, 0..4."""
    from napari_gi_seg.io.nifti import read_nifti

    return read_nifti(chaos_label_path, as_labels=True).data


# ----------------------------------------------------------------- the scanner's own CHAOS DICOM
@pytest.fixture(scope="session")
def chaos_mr_dicom(data_dir):
    """``<data>/chaos_mr_dicom``: the CHAOS MR series as the scanner wrote them (see its
    SOURCE.md: T1-DUAL in/opposed phase share one SeriesInstanceUID, empty Type 2
    attributes, oblique series)."""
    d = data_dir / "chaos_mr_dicom"
    if not d.is_dir():
        msg = f"real data missing: CHAOS MR DICOM ({d})"
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return d


@pytest.fixture(scope="session")
def t2spir_p2(chaos_mr_dicom):
    """Patient 2's T2-SPIR series (26 slices of 320 x 320, 1.36 mm, oblique)."""
    return chaos_mr_dicom / "2" / "T2SPIR" / "DICOM_anon"


@pytest.fixture(scope="session")
def t1dual_p2(chaos_mr_dicom):
    """Patient 2's T1-DUAL folder: InPhase/ and OutPhase/, one SeriesInstanceUID."""
    return chaos_mr_dicom / "2" / "T1DUAL" / "DICOM_anon"


@pytest.fixture(scope="session")
def t2spir_p2_volume(t2spir_p2):
    """Patient 2's T2-SPIR series as read (one volume)."""
    from napari_gi_seg.io import read_image

    [vol] = read_image(t2spir_p2)
    return vol
