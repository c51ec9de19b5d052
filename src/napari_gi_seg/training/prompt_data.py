"""Training objects for the promptable model: CHAOS's three MR contrasts as the scanner
wrote them, and class-agnostic objects drawn from them.

The CHAOS MR layout (``chaos_mr_dicom``, Kavur et al. 2021, CC BY-SA 4.0)::

    <patient>/T2SPIR/DICOM_anon/*.dcm           + T2SPIR/Ground/<same name>.png
    <patient>/T1DUAL/DICOM_anon/InPhase/*.dcm   + T1DUAL/Ground/<same name>.png
    <patient>/T1DUAL/DICOM_anon/OutPhase/*.dcm  + T1DUAL/Ground/<number + 1>.png

Ground PNG values 63/126/189/252 are liver, right kidney, left kidney, spleen. Each
phase folder is read on its own (in- and opposed-phase share a SeriesInstanceUID).

Objects (so the network learns "the thing the user points at", not four organs):
an organ; an organ cut by a random line or a smooth random blob (sub-regions); two
touching organs merged; Felzenszwalb superpixels of the slice (Felzenszwalb &
Huttenlocher 2004, scikit-image), alone or merged with a neighbour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

CHAOS_ORGANS = {1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"}
CONTRASTS = ("T2SPIR", "T1_in", "T1_out")


@dataclass
class LabelledStack:
    """One contrast of one patient: ``image`` (z, y, x) float32 (scanner values),
    ``labels`` (z, y, x) uint8 (0 background, 1..4 :data:`CHAOS_ORGANS`)."""

    patient: str
    contrast: str
    image: np.ndarray
    labels: np.ndarray


def _number(path: Path) -> int:
    return int(re.findall(r"(\d+)", path.stem)[-1])


def read_chaos_phase(dicom_dir: Path, ground_dir: Path, png_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Read one CHAOS phase folder and its Ground PNGs.

    Parameters
    ----------
    dicom_dir : Path
        A folder of single-slice DICOM files (one series, one phase).
    ground_dir : Path
        The Ground folder; ``IMG-s-n.dcm`` pairs with ``IMG-s-(n + png_offset).png``.
    png_offset : int
        1 for the opposed phase (SOURCE.md), else 0.

    Returns
    -------
    image : (z, y, x) float32
        Slices sorted along the slice normal (ImagePositionPatient . normal).
    labels : (z, y, x) uint8

    Raises
    ------
    FileNotFoundError
        A slice without its PNG (the message names both).
    """
    import pydicom
    from PIL import Image

    items = []
    for f in sorted(dicom_dir.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        pos = float(np.array([float(v) for v in ds.ImagePositionPatient]) @ normal)
        stem = re.sub(r"(\d+)$", lambda m: f"{int(m.group(1)) + png_offset:0{len(m.group(1))}d}", f.stem)
        png = ground_dir / f"{stem}.png"
        if not png.exists():
            raise FileNotFoundError(f"{f}: no ground-truth PNG {png.name} in {ground_dir}")
        img = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1) or 1) + float(
            getattr(ds, "RescaleIntercept", 0) or 0
        )
        lab = np.asarray(Image.open(png))
        if lab.ndim == 3:
            lab = lab[..., 0]
        items.append((pos, img, np.rint(lab.astype(np.float32) / 63.0).astype(np.uint8)))
    items.sort(key=lambda t: t[0])
    return np.stack([t[1] for t in items]), np.stack([t[2] for t in items])


def load_chaos_mr(root: str | Path, patients: list[str], contrasts=CONTRASTS) -> list[LabelledStack]:
    """Every requested contrast of every patient under ``root`` (``chaos_mr_dicom``)."""
    root = Path(root)
    out = []
    for p in patients:
        base = root / str(p)
        where = {
            "T2SPIR": (base / "T2SPIR" / "DICOM_anon", base / "T2SPIR" / "Ground", 0),
            "T1_in": (base / "T1DUAL" / "DICOM_anon" / "InPhase", base / "T1DUAL" / "Ground", 0),
            "T1_out": (base / "T1DUAL" / "DICOM_anon" / "OutPhase", base / "T1DUAL" / "Ground", 1),
        }
        for c in contrasts:
            d, g, off = where[c]
            img, lab = read_chaos_phase(d, g, off)
            out.append(LabelledStack(str(p), c, img, lab))
    return out


# ----------------------------------------------------------------- objects
MIN_OBJECT_PX = 40


def _random_cut(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """A sub-region of ``mask``: one side of a random line through it, or a smooth blob."""
    ys, xs = np.nonzero(mask)
    if rng.random() < 0.5:
        i = rng.integers(len(ys))
        a = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
        side = (yy - ys[i]) * np.cos(a) - (xx - xs[i]) * np.sin(a) > 0
        return mask & side
    noise = ndimage.gaussian_filter(rng.standard_normal(mask.shape).astype(np.float32), rng.uniform(4, 12))
    return mask & (noise > np.quantile(noise[mask], rng.uniform(0.3, 0.7)))


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    return lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)


def superpixel_object(rng: np.random.Generator, image: np.ndarray) -> np.ndarray | None:
    """A Felzenszwalb superpixel (sometimes merged with a touching one) of a random
    window of ``image`` (y, x), as a full-slice bool mask, or ``None``."""
    from skimage.segmentation import felzenszwalb

    h, w = image.shape
    s = min(128, h, w)
    y0, x0 = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
    win = image[y0 : y0 + s, x0 : x0 + s]
    lo, hi = np.percentile(win, (1, 99))
    win = np.clip((win - lo) / max(hi - lo, 1e-6), 0, 1)
    seg = felzenszwalb(win, scale=float(rng.uniform(80, 400)), sigma=0.8, min_size=40)
    sizes = np.bincount(seg.ravel())
    ok = [k for k in np.flatnonzero((sizes >= 80) & (sizes <= 5000))]
    if not ok or hi - lo < 1e-3:
        return None
    k = int(rng.choice(ok))
    m = seg == k
    if rng.random() < 0.3:
        ring = ndimage.binary_dilation(m, iterations=2) & ~m
        nb = [n for n in np.unique(seg[ring]) if sizes[n] <= 5000]
        if nb:
            m |= seg == int(rng.choice(nb))
    m = _largest(m)
    out = np.zeros((h, w), bool)
    out[y0 : y0 + s, x0 : x0 + s] = m
    return out if out.sum() >= MIN_OBJECT_PX else None


@dataclass
class ObjectSample:
    """One training object on one slice: ``z``, ``target`` (y, x) bool, and for objects
    that exist in 3D, ``neighbour`` (the same object on slice ``z + dz``) for
    propagation samples."""

    stack: LabelledStack
    z: int
    target: np.ndarray
    neighbour: np.ndarray | None
    kind: str


def draw_object(
    rng: np.random.Generator, stacks: list[LabelledStack], exclude: tuple[int, ...] = (), propagate_p: float = 0.35
) -> ObjectSample:
    """Draw an object (organ 40 %, sub-region 15 %, merged organs 10 %, superpixel 35 %).

    ``exclude``: organ labels never used as objects (leave-one-organ-out); their voxels
    still appear in the images. With probability ``propagate_p`` an organ object
    comes with its neighbour slice (possibly empty on the target slice: the object's
    end, where propagation must stop).
    """
    while True:
        st = stacks[rng.integers(len(stacks))]
        kind = rng.choice(["organ", "sub", "merged", "superpixel"], p=[0.4, 0.15, 0.1, 0.35])
        z = int(rng.integers(st.image.shape[0]))
        lab = st.labels[z].copy()
        for e in exclude:
            lab[lab == e] = 0
        if kind == "superpixel":
            m = superpixel_object(rng, st.image[z])
            if m is None:
                continue
            if exclude:  # no pseudo-object made mostly of an excluded organ
                ex = np.isin(st.labels[z], exclude)
                if (m & ex).sum() > 0.3 * m.sum():
                    continue
            return ObjectSample(st, z, m, None, "superpixel")
        present = [k for k in np.unique(lab) if k and (lab == k).sum() >= MIN_OBJECT_PX]
        if not present:
            continue
        k = int(rng.choice(present))
        if kind == "organ" and rng.random() < propagate_p:
            dz = int(rng.choice([-1, 1]))
            zn = z + dz
            if 0 <= zn < st.image.shape[0]:
                # target on zn, prompt from z (the object may end at zn)
                return ObjectSample(st, zn, st.labels[zn] == k, st.labels[z] == k, "propagate")
        m = lab == k
        if kind == "sub":
            m = _largest(_random_cut(rng, m))
        elif kind == "merged":
            others = [j for j in present if j != k]
            if others:
                j = int(rng.choice(others))
                mj = lab == j
                if (ndimage.binary_dilation(m, iterations=6) & mj).any():
                    m = m | mj
        if m.sum() < MIN_OBJECT_PX:
            continue
        return ObjectSample(st, z, m, None, str(kind))
