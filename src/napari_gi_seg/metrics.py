"""Segmentation metrics on label volumes ``(z, y, x)``.

Dice = 2|A∩B| / (|A|+|B|) (Dice 1945). Convention for empty masks: both empty ->
Dice 1.0 (nothing to find, nothing found), one empty -> 0.0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def dice(pred: np.ndarray, ref: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Dice of two boolean masks of the same shape; voxels where ``ignore`` is True
    are left out. Both empty -> 1.0."""
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    if ignore is not None:
        keep = ~np.asarray(ignore, bool)
        p, r = p[keep], r[keep]
    s = int(p.sum()) + int(r.sum())
    if s == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / s


def dice_per_class(pred: np.ndarray, ref: np.ndarray, classes: Sequence[int], ignore_index: int | None = 255) -> dict[int, float]:
    """``{class: Dice}`` for integer label volumes of equal shape, ignoring voxels where
    ``ref == ignore_index``."""
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape} vs reference {ref.shape}")
    ign = (ref == ignore_index) if ignore_index is not None else None
    return {int(c): dice(pred == c, ref == c, ign) for c in classes}
