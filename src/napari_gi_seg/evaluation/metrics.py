"""Segmentation metrics on label volumes and masks ``(z, y, x)``.

Overlap metrics (per class, on boolean masks, voxels under the ignore label left out)
-------------------------------------------------------------------------------------
With TP, FP, FN counted over the kept voxels:

* Dice = 2 TP / (2 TP + FP + FN) (Dice 1945; Sørensen 1948).
* IoU (Jaccard) = TP / (TP + FP + FN).
* precision = TP / (TP + FP); recall (sensitivity) = TP / (TP + FN).

Empty-mask convention: when prediction and reference are both empty every overlap
metric is **1.0** (nothing to find, nothing found). When one is empty and the other
is not, Dice and IoU are 0.0, and the undefined ratio of precision (empty prediction)
or recall (empty reference) is also **0.0** (a complete miss / a spurious detection).

Surface distance
----------------
HD95 (mm): the 95th percentile Hausdorff distance between the two masks' surfaces,
spacing-aware, computed with MONAI's
:func:`monai.metrics.compute_hausdorff_distance` (``percentile=95``, Euclidean,
symmetric: the larger of the two directed 95th percentiles; surfaces from
:func:`monai.metrics.utils.get_mask_edges`). Empty-mask convention: both empty ->
**0.0 mm**; exactly one empty -> **NaN** (the distance is undefined; aggregation
skips NaN and counts it in ``hd95_undefined``, and the miss shows in Dice = 0).

Radiotherapy contour metrics
----------------------------
How much contour a clinician must redraw matters more in radiotherapy than volume
overlap (Vaassen F. et al., "Evaluation of measures for assessing time-saving of
automatic organ-at-risk segmentation in radiotherapy", Phys Imaging Radiat Oncol 13
(2020) 1-6):

* surface Dice at tolerance ``tau`` mm (Nikolov et al. 2021): the share of both
  surfaces lying within ``tau`` of the other, MONAI's
  :func:`monai.metrics.compute_surface_dice` (edge voxels of each mask, Euclidean
  distances with the voxel spacing; ``tau`` = :data:`SURFACE_DICE_TOLERANCE_MM` unless
  stated). Both empty -> **1.0**; one empty -> **0.0**.
* mean surface distance (mm): symmetric average surface distance, MONAI's
  :func:`monai.metrics.compute_average_surface_distance`. Both empty -> 0.0; one
  empty -> NaN.
* added path length (APL, mm), per slice: the length of the clinician's final contour
  (the reference) that the model's contour does not already provide, i.e. the number
  of reference boundary pixels (4-connected inner boundary of the slice's mask) farther
  than ``tolerance_mm`` (default 0: not on the predicted boundary) from every
  predicted boundary pixel, times the in-plane pixel size (the mean of the row and
  column spacing). A slice with an organ the model missed adds its whole boundary; a
  spurious prediction adds nothing (deleting is fast). The case's APL is the sum
  over slices.

UW-Madison GI Tract (Kaggle 2022) score
---------------------------------------
The competition's evaluation page
(https://www.kaggle.com/competitions/uw-madison-gi-tract-image-segmentation/overview/evaluation)
scores ``0.4 * Dice + 0.6 * Hausdorff`` where the Dice term is the mean 2D Dice over
(slice, class) pairs (both empty -> 1) and the Hausdorff term is a 3D Hausdorff
distance per case-day volume "with slice depth as the Z coordinate ... the slice depth
for all scans is set to 1", normalised by the image size; the score uses one minus the
normalised distance. Implemented here (:func:`kaggle_hausdorff`,
:func:`kaggle_score`) as:

* distance = the symmetric (maximum) Hausdorff distance between the two **3D voxel
  sets** (every voxel, not only surfaces), in voxel units (unit spacing on all three
  axes), computed exactly with :func:`scipy.ndimage.distance_transform_edt`;
* normalised by the volume's diagonal ``sqrt(Z**2 + Y**2 + X**2)`` (voxels) and
  clipped to [0, 1];
* both masks empty -> distance **0** (score term 1); exactly one empty -> distance
  **1** (score term 0). The evaluation page does not state these cases; this is the
  convention of the widely used public re-implementation of the metric;
* combined score = ``0.4 * dice_2d + 0.6 * (1 - distance)`` per class and case-day.
  (Kaggle averages the Dice over all (slice, class) rows of the test set and the
  distance over all case-day volumes; averaging our per-case scores differs only in
  the weighting.)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

#: Weights of the UW-Madison Kaggle score: 0.4 Dice + 0.6 (1 - normalised 3D Hausdorff).
KAGGLE_DICE_WEIGHT = 0.4
KAGGLE_HD_WEIGHT = 0.6

#: Tolerance (mm) of the surface Dice reported by evaluate and the export's provenance.
SURFACE_DICE_TOLERANCE_MM = 2.0

METRIC_NAMES = (
    "dice",
    "iou",
    "precision",
    "recall",
    "hd95_mm",
    "surface_dice",
    "msd_mm",
    "apl_mm",
    "kaggle_hd",
    "kaggle_dice_2d",
    "kaggle_score",
    "ravd",
    "assd_mm",
    "mssd_mm",
)


# ----------------------------------------------------------------- overlap
def _masks(pred, ref, ignore):
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    if p.shape != r.shape:
        raise ValueError(f"shape mismatch: prediction {p.shape} vs reference {r.shape}")
    if ignore is not None:
        keep = ~np.asarray(ignore, bool)
        p, r = p[keep], r[keep]
    return p, r


def confusion(pred: np.ndarray, ref: np.ndarray, ignore: np.ndarray | None = None) -> tuple[int, int, int]:
    """``(TP, FP, FN)`` voxel counts of two boolean masks of the same shape, leaving out
    voxels where ``ignore`` is True. Raises ``ValueError`` on a shape mismatch."""
    p, r = _masks(pred, ref, ignore)
    tp = int(np.count_nonzero(p & r))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp


def _ratio(num: int, den: int, other: int) -> float:
    # num/den; den == 0 -> 1.0 when the "other" error count is 0 too (both empty), else 0.0
    if den == 0:
        return 1.0 if other == 0 else 0.0
    return num / den


def overlap_metrics(pred: np.ndarray, ref: np.ndarray, ignore: np.ndarray | None = None) -> dict[str, float]:
    """``{"dice", "iou", "precision", "recall"}`` of two boolean masks (module docstring
    gives the formulas and the empty-mask convention)."""
    tp, fp, fn = confusion(pred, ref, ignore)
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, 0),
        "iou": _ratio(tp, tp + fp + fn, 0),
        "precision": _ratio(tp, tp + fp, fn),
        "recall": _ratio(tp, tp + fn, fp),
    }


def dice(pred: np.ndarray, ref: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Dice of two boolean masks of the same shape; voxels where ``ignore`` is True
    are left out. Both empty -> 1.0, one empty -> 0.0."""
    p, r = _masks(pred, ref, ignore)
    s = int(p.sum()) + int(r.sum())
    if s == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / s


def dice_per_class(
    pred: np.ndarray, ref: np.ndarray, classes: Sequence[int], ignore_index: int | None = 255
) -> dict[int, float]:
    """``{class: Dice}`` for integer label volumes of equal shape, ignoring voxels where
    ``ref == ignore_index``."""
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape} vs reference {ref.shape}")
    ign = (ref == ignore_index) if ignore_index is not None else None
    return {int(c): dice(pred == c, ref == c, ign) for c in classes}


# ----------------------------------------------------------------- distances
def _surface_pair(pred, ref, spacing_mm, ignore):
    """The two masks as MONAI wants them for a surface distance: ignored voxels
    cleared in both, cropped to the union's bounding box (+1 voxel, so the distance
    transform stays small), as ``(1, 1, *shape)`` bool tensors.

    Parameters
    ----------
    pred, ref : np.ndarray
        Masks of equal shape ``(z, y, x)`` or ``(y, x)``, cast to bool.
    spacing_mm : Sequence[float]
        Voxel size in mm, one value per axis (only its length is checked here).
    ignore : np.ndarray or None
        Voxels to clear in both masks.

    Returns
    -------
    pred_any, ref_any : bool
        Whether each mask has a voxel left.
    pair : tuple of torch.Tensor or None
        ``(pred, ref)`` cropped tensors; ``None`` when either mask is empty.

    Raises
    ------
    ValueError
        Shapes differ, or ``spacing_mm`` has not one value per axis.
    """
    import torch

    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    if p.shape != r.shape:
        raise ValueError(f"shape mismatch: prediction {p.shape} vs reference {r.shape}")
    if len(spacing_mm) != p.ndim:
        raise ValueError(f"spacing_mm {tuple(spacing_mm)} must have one value per axis of {p.shape}")
    if ignore is not None:
        keep = ~np.asarray(ignore, bool)
        p, r = p & keep, r & keep
    pe, re_ = bool(p.any()), bool(r.any())
    if not (pe and re_):
        return pe, re_, None
    idx = np.nonzero(p | r)
    sl = tuple(slice(max(0, int(i.min()) - 1), int(i.max()) + 2) for i in idx)
    pt = torch.from_numpy(np.ascontiguousarray(p[sl]))[None, None]
    rt = torch.from_numpy(np.ascontiguousarray(r[sl]))[None, None]
    return pe, re_, (pt, rt)


def hd95_mm(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_mm: Sequence[float],
    ignore: np.ndarray | None = None,
    percentile: float = 95.0,
) -> float:
    """95th percentile symmetric Hausdorff distance in mm between two boolean masks
    ``(z, y, x)`` (or ``(y, x)``) with voxel size ``spacing_mm`` in the same axis order.

    Uses :func:`monai.metrics.compute_hausdorff_distance`. Ignored voxels are cleared
    in both masks first. Both empty -> 0.0; one empty -> NaN (module docstring).
    Raises ``ValueError`` on a shape mismatch or a spacing of the wrong length.
    """
    from monai.metrics import compute_hausdorff_distance

    pe, re_, pair = _surface_pair(pred, ref, spacing_mm, ignore)
    if pair is None:
        return 0.0 if not pe and not re_ else float("nan")
    pt, rt = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = compute_hausdorff_distance(
            pt, rt, include_background=True, percentile=percentile, spacing=[float(s) for s in spacing_mm]
        )
    return float(d.reshape(-1)[0])


def surface_dice(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_mm: Sequence[float],
    tolerance_mm: float = SURFACE_DICE_TOLERANCE_MM,
    ignore: np.ndarray | None = None,
) -> float:
    """Surface Dice of two boolean masks ``(z, y, x)`` at ``tolerance_mm`` (MONAI's
    :func:`monai.metrics.compute_surface_dice`, voxel size ``spacing_mm``); ignored
    voxels cleared in both. Both empty -> 1.0, one empty -> 0.0 (module docstring).
    Raises ``ValueError`` on a shape mismatch or a spacing of the wrong length."""
    from monai.metrics import compute_surface_dice

    pe, re_, pair = _surface_pair(pred, ref, spacing_mm, ignore)
    if pair is None:
        return 1.0 if not pe and not re_ else 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = compute_surface_dice(
            *pair,
            class_thresholds=[float(tolerance_mm)],
            include_background=True,
            spacing=[float(s) for s in spacing_mm],
        )
    return float(d.reshape(-1)[0])


def mean_surface_distance_mm(
    pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float], ignore: np.ndarray | None = None
) -> float:
    """Symmetric mean surface distance (mm) of two boolean masks (MONAI's
    :func:`monai.metrics.compute_average_surface_distance`). Both empty -> 0.0, one
    empty -> NaN."""
    from monai.metrics import compute_average_surface_distance

    pe, re_, pair = _surface_pair(pred, ref, spacing_mm, ignore)
    if pair is None:
        return 0.0 if not pe and not re_ else float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = compute_average_surface_distance(
            *pair, include_background=True, symmetric=True, spacing=[float(s) for s in spacing_mm]
        )
    return float(d.reshape(-1)[0])


def added_path_length_per_slice(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_mm: Sequence[float],
    tolerance_mm: float = 0.0,
    ignore: np.ndarray | None = None,
) -> np.ndarray:
    """Added path length (mm) per slice of ``(z, y, x)`` boolean masks: the length of
    the reference's boundary not within ``tolerance_mm`` of the prediction's boundary
    (Vaassen et al. 2020; module docstring). ``spacing_mm`` is ``(z, y, x)``; slices
    whose voxels are all ignored give NaN. Returns ``(z,)`` float64."""
    from scipy import ndimage

    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    if p.shape != r.shape or p.ndim != 3:
        raise ValueError(f"expected two (z, y, x) masks of one shape, got {p.shape} and {r.shape}")
    dy, dx = float(spacing_mm[1]), float(spacing_mm[2])
    px = (dy + dx) / 2.0
    keep = None if ignore is None else ~np.asarray(ignore, bool)
    out = np.zeros(p.shape[0])
    cross = ndimage.generate_binary_structure(2, 1)
    for z in range(p.shape[0]):
        if keep is not None and not keep[z].any():
            out[z] = np.nan
            continue
        rz = r[z] if keep is None else r[z] & keep[z]
        if not rz.any():
            continue
        pz = p[z] if keep is None else p[z] & keep[z]
        rb = rz & ~ndimage.binary_erosion(rz, cross, border_value=0)
        pb = pz & ~ndimage.binary_erosion(pz, cross, border_value=0)
        if not pb.any():
            out[z] = rb.sum() * px
            continue
        dist = ndimage.distance_transform_edt(~pb, sampling=(dy, dx))
        out[z] = np.count_nonzero(dist[rb] > tolerance_mm + 1e-6) * px
    return out


def hausdorff_voxels(pred: np.ndarray, ref: np.ndarray) -> float:
    """Symmetric (maximum) Hausdorff distance between two boolean voxel sets in voxel
    units (unit spacing on every axis), over all voxels: ``max(max_{a in A} d(a, B),
    max_{b in B} d(b, A))``. Exact (Euclidean distance transform,
    :func:`scipy.ndimage.distance_transform_edt`). Both empty -> 0.0; one empty -> inf."""
    from scipy.ndimage import distance_transform_edt

    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    if p.shape != r.shape:
        raise ValueError(f"shape mismatch: prediction {p.shape} vs reference {r.shape}")
    pe, re_ = bool(p.any()), bool(r.any())
    if not pe and not re_:
        return 0.0
    if pe != re_:
        return math.inf
    if np.array_equal(p, r):
        return 0.0
    # Cropping to the union's bounding box is exact: every nearest point lies inside it.
    idx = np.nonzero(p | r)
    sl = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    p, r = p[sl], r[sl]
    d_to_r = distance_transform_edt(~r)
    d_to_p = distance_transform_edt(~p)
    return float(max(d_to_r[p].max(), d_to_p[r].max()))


def kaggle_hausdorff(pred: np.ndarray, ref: np.ndarray) -> float:
    """UW-Madison (Kaggle 2022) normalised 3D Hausdorff distance in [0, 1] of two
    ``(z, y, x)`` boolean masks of one case-day: :func:`hausdorff_voxels` (slice depth 1)
    divided by the volume diagonal ``sqrt(Z**2 + Y**2 + X**2)``, clipped to 1.
    Both empty -> 0.0; one empty -> 1.0 (see module docstring for the source)."""
    p = np.asarray(pred, bool)
    d = hausdorff_voxels(p, ref)
    diag = math.sqrt(sum(int(s) ** 2 for s in p.shape))
    return float(min(1.0, d / diag))


def dice_2d_mean(pred: np.ndarray, ref: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Mean over slices ``z`` of the 2D Dice of ``(z, y, x)`` boolean masks (both empty
    -> 1 per slice), the Dice term of the Kaggle score. Slices whose voxels are all
    ignored are skipped; NaN when every slice is."""
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    if p.shape != r.shape:
        raise ValueError(f"shape mismatch: prediction {p.shape} vs reference {r.shape}")
    if ignore is not None:
        keep = ~np.asarray(ignore, bool)
        p, r = p & keep, r & keep
        reviewed = keep.reshape(keep.shape[0], -1).any(1)
    else:
        reviewed = np.ones(p.shape[0], bool)
    axes = tuple(range(1, p.ndim))
    inter = np.count_nonzero(p & r, axis=axes)
    total = np.count_nonzero(p, axis=axes) + np.count_nonzero(r, axis=axes)
    d = np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))[reviewed]
    return float(d.mean()) if d.size else float("nan")


def kaggle_score(pred: np.ndarray, ref: np.ndarray, ignore: np.ndarray | None = None) -> dict[str, float]:
    """``{"kaggle_dice_2d", "kaggle_hd", "kaggle_score"}`` for one class of one
    case-day, ``(z, y, x)`` boolean masks: ``0.4 * dice_2d + 0.6 * (1 - kaggle_hd)``.
    Ignored voxels are cleared in both masks for the distance."""
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    d2 = dice_2d_mean(p, r, ignore)
    if ignore is not None:
        keep = ~np.asarray(ignore, bool)
        p, r = p & keep, r & keep
    hd = kaggle_hausdorff(p, r)
    return {
        "kaggle_dice_2d": d2,
        "kaggle_hd": hd,
        "kaggle_score": KAGGLE_DICE_WEIGHT * d2 + KAGGLE_HD_WEIGHT * (1.0 - hd),
    }


# ----------------------------------------------------------------- per case / aggregation
def _class_items(class_names) -> list[tuple[int, str]]:
    if isinstance(class_names, Mapping):
        return [(int(k), str(v)) for k, v in class_names.items() if int(k) != 0]
    return [(i + 1, str(n)) for i, n in enumerate(class_names)]


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_mm: Sequence[float],
    class_names: Sequence[str] | Mapping[int, str],
    ignore_index: int | None = 255,
    kaggle: bool = True,
    rt: bool = True,
    surface_tolerance_mm: float = SURFACE_DICE_TOLERANCE_MM,
    chaos: bool = True,
) -> dict:
    """All metrics of one case, per class.

    Parameters
    ----------
    pred, ref:
        Either ``(z, y, x)`` integer label volumes (class with label value ``v`` is
        ``pred == v``), or ``(K, z, y, x)`` masks (channel ``k`` is the k-th class;
        multi-label, classes may overlap). ``ref`` voxels equal to ``ignore_index``
        (e.g. unreviewed slices) are left out of every metric.
    spacing_mm
        Voxel size ``(z, y, x)`` in mm (for HD95).
    class_names
        A list (the k-th name is label value k + 1, or channel k for 4D input) or a
        ``{label value: name}`` mapping (0 = background is skipped).
    kaggle
        Also compute the UW-Madison terms (``kaggle_hd``, ``kaggle_dice_2d``,
        ``kaggle_score``).
    rt
        Also compute the radiotherapy contour metrics: ``surface_dice`` at
        ``surface_tolerance_mm``, ``msd_mm``, ``apl_mm`` (total added path length) and
        ``apl_mm_per_slice`` (list over z, NaN where the slice is ignored).
    chaos
        Also compute the CHAOS challenge metrics ``ravd`` (percent), ``assd_mm`` and
        ``mssd_mm`` (:mod:`napari_gi_seg.evaluation.chaos_metrics`; ignored voxels are
        left out of both masks).

    Returns
    -------
    ``{"per_class": {name: {"dice", "iou", "precision", "recall", "hd95_mm",
    "surface_dice", "msd_mm", "apl_mm", "apl_mm_per_slice", "kaggle_hd",
    "kaggle_dice_2d", "kaggle_score", "ravd", "assd_mm", "mssd_mm", "ref_voxels", "pred_voxels"}},
    "mean_dice": float, "surface_dice_tolerance_mm": float}``. See the module docstring for definitions and empty-mask
    conventions.

    Raises ``ValueError`` for mismatched shapes.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape} vs reference {ref.shape}")
    items = _class_items(class_names)
    if pred.ndim == 4 and len(items) != pred.shape[0]:
        raise ValueError(f"{pred.shape[0]} mask channels but {len(items)} class names")
    if pred.ndim not in (3, 4):
        raise ValueError(f"expected (z, y, x) labels or (K, z, y, x) masks, got shape {pred.shape}")
    per_class = {}
    for k, (value, name) in enumerate(items):
        if pred.ndim == 4:
            r_raw, p = ref[k], pred[k] != 0
            r = (r_raw != 0) & (r_raw != ignore_index) if ignore_index is not None else r_raw != 0
        else:
            r_raw, p = ref, pred == value
            r = ref == value
        ign = (r_raw == ignore_index) if ignore_index is not None else None
        if ign is not None and not ign.any():
            ign = None
        m = overlap_metrics(p, r, ign)
        m["hd95_mm"] = hd95_mm(p, r, spacing_mm, ign)
        if rt:
            m["surface_dice"] = surface_dice(p, r, spacing_mm, surface_tolerance_mm, ign)
            m["msd_mm"] = mean_surface_distance_mm(p, r, spacing_mm, ign)
            apl = added_path_length_per_slice(p, r, spacing_mm, 0.0, ign)
            m["apl_mm"] = float(np.nansum(apl))
            m["apl_mm_per_slice"] = [round(float(v), 3) for v in apl]
        if kaggle:
            m.update(kaggle_score(p, r, ign))
        if chaos:
            from .chaos_metrics import chaos_metrics

            m.update(
                chaos_metrics(p & ~ign, r & ~ign, spacing_mm) if ign is not None else chaos_metrics(p, r, spacing_mm)
            )
        keep = ~ign if ign is not None else slice(None)
        m["ref_voxels"] = int(np.count_nonzero(r[keep]))
        m["pred_voxels"] = int(np.count_nonzero(p[keep]))
        per_class[name] = m
    out = {"per_class": per_class, "mean_dice": float(np.mean([m["dice"] for m in per_class.values()]))}
    if rt:
        out["surface_dice_tolerance_mm"] = float(surface_tolerance_mm)
    return out


def rt_contour_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_mm: Sequence[float],
    class_names: Mapping[int, str],
    slices: Sequence[int] | None = None,
    tolerance_mm: float = SURFACE_DICE_TOLERANCE_MM,
) -> dict:
    """Radiotherapy contour metrics between the model's labels ``pred`` and the
    clinician's final labels ``ref`` (``(z, y, x)`` integer volumes), per organ, on
    ``slices`` only (default all): ``{"surface_dice_tolerance_mm": tau, "per_class":
    {name: {"surface_dice", "msd_mm", "hd95_mm", "apl_mm", "apl_mm_per_slice": {z: mm}}}}``
    (APL per slice listed for the given slices). Definitions: module docstring."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape} vs reference {ref.shape}")
    zs = list(range(ref.shape[0])) if slices is None else sorted({int(z) for z in slices})
    ignore = np.ones(ref.shape, bool)
    ignore[zs] = False
    per_class = {}
    for value, name in _class_items(class_names):
        p, r = pred == value, ref == value
        apl = added_path_length_per_slice(p, r, spacing_mm, 0.0, ignore)
        per_class[name] = {
            "surface_dice": round(surface_dice(p, r, spacing_mm, tolerance_mm, ignore), 6),
            "msd_mm": round(mean_surface_distance_mm(p, r, spacing_mm, ignore), 4),
            "hd95_mm": round(hd95_mm(p, r, spacing_mm, ignore), 4),
            "apl_mm": round(float(np.nansum(apl[zs])), 3),
            "apl_mm_per_slice": {str(z): round(float(apl[z]), 3) for z in zs},
        }
    return {"surface_dice_tolerance_mm": float(tolerance_mm), "per_class": per_class}


def aggregate(per_case: Mapping[str, dict]) -> dict:
    """Summarise :func:`evaluate_case` results ``{case_id: result}``.

    Returns ``{"per_class": {name: {metric: mean over cases (NaN skipped),
    metric + "_std": std, "hd95_undefined": count of NaN HD95, "n_cases": n}},
    "mean_<metric>": mean over classes of the per-class means}`` for every metric in
    :data:`METRIC_NAMES` that was computed.
    """
    names: list[str] = []
    for res in per_case.values():
        names += [n for n in res["per_class"] if n not in names]
    per_class = {}
    for n in names:
        rows = [res["per_class"][n] for res in per_case.values() if n in res["per_class"]]
        out = {"n_cases": len(rows)}
        for m in METRIC_NAMES:
            vals = np.array([r[m] for r in rows if m in r], dtype=float)
            if vals.size == 0:
                continue
            finite = vals[np.isfinite(vals)]
            out[m] = float(finite.mean()) if finite.size else float("nan")
            out[m + "_std"] = float(finite.std()) if finite.size else float("nan")
            if m == "hd95_mm":
                out["hd95_undefined"] = int(vals.size - finite.size)
        per_class[n] = out
    summary = {"per_class": per_class}
    for m in METRIC_NAMES:
        vals = [pc[m] for pc in per_class.values() if m in pc and np.isfinite(pc[m])]
        if any(m in pc for pc in per_class.values()):
            summary[f"mean_{m}"] = float(np.mean(vals)) if vals else float("nan")
    return summary
