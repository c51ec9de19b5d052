"""The CHAOS challenge's own metrics: RAVD, ASSD and MSSD.

Definitions of Kavur A.E. et al., "CHAOS Challenge - combined (CT-MR) Healthy Abdominal
Organ Segmentation", Medical Image Analysis 69 (2021) 101950 (section 3.3), as the
organisers' evaluation code computes them (``CHAOSmetrics.py`` of the CHAOS evaluation
kit, A.E. Kavur 2019), on boolean ``(z, y, x)`` masks:

* **RAVD** (relative absolute volume difference, percent):
  ``|V_ref - V_seg| / V_ref x 100`` with ``V`` the voxel counts.
* **Surface voxels** of a mask: the mask minus its binary erosion with the
  6-connected (face) structuring element, voxels outside the volume counting as
  foreground (``scipy.ndimage.binary_erosion(..., border_value=1)``), i.e. the kit's
  ``V ^ binary_erosion(V, generate_binary_structure(3, 1), border_value=1)``.
* Distances are Euclidean in mm between surface voxel centres, each surface voxel to
  the nearest surface voxel of the other mask (the kit uses a KD tree on the
  voxels' patient coordinates; here a KD tree on ``index x spacing``, which is the same
  for any rigid, orthogonal voxel grid, oblique included).
* **ASSD** (average symmetric surface distance, mm): the mean of all those distances
  from both surfaces, ``(sum d(seg->ref) + sum d(ref->seg)) / (n_seg + n_ref)``.
* **MSSD** (maximum symmetric surface distance, mm): their maximum (the Hausdorff
  distance between the surface voxel sets).

Empty-mask convention (the kit does not handle empty masks): both empty -> RAVD 0,
ASSD 0, MSSD 0; reference empty, prediction not -> RAVD NaN (no volume to relate to);
exactly one empty -> ASSD and MSSD NaN (undefined; the miss shows in Dice = 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ravd_percent", "surface_voxels", "symmetric_surface_distances_mm", "chaos_metrics"]


def ravd_percent(pred: np.ndarray, ref: np.ndarray) -> float:
    """Relative absolute volume difference in percent, ``|V_ref - V_pred| / V_ref x 100``
    (Kavur et al. 2021). Both empty -> 0.0; empty reference -> NaN."""
    vp, vr = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    if vr == 0:
        return 0.0 if vp == 0 else float("nan")
    return abs(vr - vp) / vr * 100.0


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """``(n, 3)`` integer ``(z, y, x)`` indices of the CHAOS surface voxels of a boolean
    ``(z, y, x)`` mask: the mask minus its 6-connected erosion with the outside counted
    as foreground (module docstring)."""
    from scipy import ndimage

    m = np.asarray(mask, bool)
    if not m.any():
        return np.empty((0, 3), np.int64)
    er = ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(3, 1), border_value=1)
    return np.argwhere(m & ~er)


def symmetric_surface_distances_mm(
    pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each CHAOS surface voxel of ``pred`` to the nearest of
    ``ref`` and from each of ``ref`` to the nearest of ``pred``: ``(d_pred_to_ref,
    d_ref_to_pred)``, 1D float arrays. ``spacing_mm`` is ``(z, y, x)``. Both masks must
    be non-empty (``ValueError`` otherwise)."""
    from scipy.spatial import cKDTree

    sp = np.asarray(spacing_mm, float)
    ps, rs = surface_voxels(pred) * sp, surface_voxels(ref) * sp
    if len(ps) == 0 or len(rs) == 0:
        raise ValueError("surface distances need two non-empty masks")
    d_pr, _ = cKDTree(rs).query(ps)
    d_rp, _ = cKDTree(ps).query(rs)
    return d_pr, d_rp


def chaos_metrics(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float]) -> dict[str, float]:
    """``{"ravd": percent, "assd_mm": mm, "mssd_mm": mm}`` of boolean ``(z, y, x)``
    masks with voxel size ``spacing_mm`` ``(z, y, x)`` (definitions and empty-mask
    convention: module docstring)."""
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    if p.shape != r.shape:
        raise ValueError(f"shape mismatch: prediction {p.shape} vs reference {r.shape}")
    out = {"ravd": ravd_percent(p, r)}
    if not p.any() and not r.any():
        return {**out, "assd_mm": 0.0, "mssd_mm": 0.0}
    if not p.any() or not r.any():
        return {**out, "assd_mm": float("nan"), "mssd_mm": float("nan")}
    d_pr, d_rp = symmetric_surface_distances_mm(p, r, spacing_mm)
    both = np.concatenate([d_pr, d_rp])
    return {**out, "assd_mm": float(both.mean()), "mssd_mm": float(both.max())}
