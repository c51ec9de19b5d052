"""Test and benchmark helpers for propagation (not product code): the CHAOS scanner DICOM
with its Ground PNGs, and a synthetic "next day" generator. Used by
``tests/propagation/`` and ``benchmarks/propagation.py`` so both measure the same inputs.

The next-day deformation is a sum of Gaussian radial basis displacements (not a
B-spline, the model the registration fits, so the test is not circular), composed with a
rotation about the body centre and a shift; the image also gets a smooth multiplicative
bias field and Gaussian noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_gi_seg.io.volume import Volume

#: Ground PNG grey value -> CHAOS label value (SOURCE.md of chaos_mr_dicom).
GROUND_VALUES = {63: 1, 126: 2, 189: 3, 252: 4}
CLASS_NAMES = {1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"}
#: Sequence -> DICOM folder below the patient folder, and its Ground folder.
SEQUENCES = {"t2": ("T2SPIR/DICOM_anon", "T2SPIR/Ground"), "t1in": ("T1DUAL/DICOM_anon/InPhase", "T1DUAL/Ground")}


def chaos_dicom_dir() -> Path | None:
    """``../shared/data/chaos_mr_dicom`` (or ``$NAPARI_GI_SEG_DATA/chaos_mr_dicom``), ``None`` when missing."""
    import os

    root = Path(os.environ.get("NAPARI_GI_SEG_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    d = root / "chaos_mr_dicom"
    return d if d.is_dir() else None


def load_chaos(patient: int | str, sequence: str = "t2", root: Path | None = None) -> tuple[Volume, np.ndarray]:
    """(image Volume read by the package's DICOM reader, ``(z, y, x)`` uint8 Ground labels
    on the same grid, 1 liver .. 4 spleen) of one CHAOS patient and sequence (``"t2"``,
    ``"t1in"``). A slice of the labels is the PNG of the DICOM file at that slice position
    (the nearest one where the reader interpolated uneven gaps)."""
    import pydicom
    from PIL import Image

    from napari_gi_seg.io import read_image

    root = root or chaos_dicom_dir()
    dcm_dir, ground_dir = (root / str(patient) / s for s in SEQUENCES[sequence])
    vol = read_image(dcm_dir)[0]
    files = sorted(dcm_dir.glob("*.dcm"))
    pos, pngs = [], []
    for f in files:
        h = pydicom.dcmread(f, stop_before_pixels=True)
        iop = np.asarray(h.ImageOrientationPatient, float)
        pos.append(float(np.asarray(h.ImagePositionPatient, float) @ np.cross(iop[:3], iop[3:])))
        stem, n = f.stem.rsplit("-", 1)
        if sequence == "t1in" and not (ground_dir / f"{f.stem}.png").exists():
            n = f"{int(n) + 1:0{len(n)}d}"
        pngs.append(ground_dir / f"{stem}-{n}.png")
    order = np.argsort(pos)
    pos = np.asarray(pos)[order]
    a = vol.affine  # LPS, source order (x, y, z)
    normal = np.cross(a[:3, 0], a[:3, 1])
    normal /= np.linalg.norm(normal)
    zpos = (a[:3, 3] + np.arange(vol.shape[0])[:, None] * a[:3, 2]) @ normal
    lab = np.zeros(vol.shape, np.uint8)
    for z, p in enumerate(zpos):
        png = np.asarray(Image.open(pngs[order[int(np.argmin(np.abs(pos - p)))]]))
        for grey, v in GROUND_VALUES.items():
            lab[z][np.abs(png.astype(int) - grey) <= 2] = v
    return vol, lab


def synthetic_next_day(
    volume: Volume, labels: np.ndarray, seed: int, max_mm: float | None = None
) -> tuple[Volume, np.ndarray, dict]:
    """A synthetic next day of ``volume``: (image Volume on the same grid, ``(z, y, x)``
    true labels, the parameters drawn).

    Parameters drawn from ``seed``: a smooth deformation (6 Gaussian radial basis
    displacements, sigma 40-80 mm, peak 5-15 mm in the body, or ``max_mm``), a rotation of
    up to 3 degrees about each axis, a shift of up to 8 mm, a bias field exp(quadratic) of
    up to +-20 %, Gaussian noise of 3 % of the 99th percentile intensity.
    """
    from scipy.ndimage import map_coordinates
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    sp = np.asarray(volume.spacing_mm, float)
    shape = volume.shape
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3) * sp  # mm
    body = volume.data.reshape(-1) > np.percentile(volume.data, 60)
    centre = grid[body].mean(0)
    # Gaussian RBF displacement field (z, y, x mm), scaled to the drawn peak inside the body
    u = np.zeros_like(grid)
    for _ in range(6):
        c = grid[body][rng.integers(body.sum())]
        sigma = rng.uniform(40, 80)
        w = np.exp(-np.sum((grid - c) ** 2, 1) / (2 * sigma**2))
        u += w[:, None] * rng.normal(size=3)
    peak = float(max_mm if max_mm is not None else rng.uniform(5, 15))
    u *= peak / max(np.linalg.norm(u[body], axis=1).max(), 1e-6)
    rot = Rotation.from_euler("zyx", rng.uniform(-3, 3, 3), degrees=True).as_matrix()
    shift = rng.uniform(-8, 8, 3)
    src = (grid - centre) @ rot.T + centre + shift + u  # today's voxel -> yesterday's point (mm)
    coords = (src / sp).T
    img = map_coordinates(volume.data.astype(np.float32), coords, order=1, mode="constant", cval=0.0).reshape(shape)
    lab = map_coordinates(labels, coords, order=0, mode="constant", cval=0).reshape(shape).astype(labels.dtype)
    g = (grid - centre) / np.ptp(grid, 0).clip(1)
    q = rng.normal(scale=0.15, size=(3,)) @ g.T + rng.normal(scale=0.15, size=(3,)) @ (g**2).T
    bias = np.exp(np.clip(q, -0.2, 0.2)).reshape(shape)
    img = img * bias + rng.normal(scale=0.03 * np.percentile(volume.data, 99), size=shape)
    params = {"peak_mm": round(peak, 2), "shift_mm": shift.round(2).tolist(), "coords": coords}
    return volume.with_data(img.astype(np.float32), synthetic=True), lab, params
