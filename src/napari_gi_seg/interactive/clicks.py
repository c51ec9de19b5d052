"""Simulated clicks: the CVPR 2025 MedSegFM interactive protocol's click and its scores.

The challenge ("CVPR 2025: Foundation Models for Interactive 3D Biomedical Image
Segmentation", protocol after Sofiiuk et al. 2022 and Kirillov et al. 2023) starts
from a box, then places each click at the point of the **largest error region**
(false negatives -> positive click, false positives -> negative click) that lies
deepest inside it: the maximum of its Euclidean distance transform. The same rule
drives the training's click simulation (:mod:`napari_gi_seg.training.prompt_train`)
and the benchmark (``benchmarks/interactive.py``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two bool arrays of one shape; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def next_click(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, bool] | None:
    """The protocol's next click on a slice.

    Parameters
    ----------
    pred, truth : (y, x) bool
        Current mask and reference.

    Returns
    -------
    (y, x, positive) or None
        The deepest pixel (maximum Euclidean distance to the region's border, the slice
        edge counting as border) of the largest connected error region (8-connected);
        ``positive`` when that region is missed object (false negative). ``None``
        when the mask is exact.
    """
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    best = None
    for region, positive in ((truth & ~pred, True), (pred & ~truth, False)):
        if not region.any():
            continue
        lab, n = ndimage.label(region, structure=np.ones((3, 3), bool))
        sizes = np.bincount(lab.ravel())[1:]
        k = int(np.argmax(sizes)) + 1
        if best is None or sizes[k - 1] > best[0]:
            best = (int(sizes[k - 1]), lab == k, positive)
    if best is None:
        return None
    comp = np.pad(best[1], 1)
    dist = ndimage.distance_transform_edt(comp)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(y), int(x), best[2]


def clicks_to_reach(dices: list[float], target: float = 0.9, max_clicks: int | None = None) -> int:
    """NoC@target: the number of clicks after the box at which Dice first reaches
    ``target`` (``dices[0]`` is the box alone, ``dices[k]`` after k clicks); the cap
    ``max_clicks`` (default ``len(dices) - 1``) when never reached (the convention of
    Xu et al. 2016 and RITM)."""
    cap = len(dices) - 1 if max_clicks is None else max_clicks
    for k, d in enumerate(dices):
        if d >= target:
            return k
    return cap
