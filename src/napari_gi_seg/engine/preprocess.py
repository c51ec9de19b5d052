"""Preprocessing shared by inference and training (one place for each fact):
intensity normalisation, 2.5D context stacking and in-plane resizing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def normalise_intensity(
    data: np.ndarray,
    method: str = "percentile",
    percentiles: Sequence[float] = (0.5, 99.5),
) -> np.ndarray:
    """Per-volume intensity normalisation of a ``(z, y, x)`` image, returns float32.

    ``"percentile"``: clip to the given low/high percentiles of all voxels and scale
    linearly to [0, 1] (the nnU-Net-style robust min/max for MRI, whose intensities
    have no physical unit). ``"zscore"``: subtract the mean and divide by the standard
    deviation of the voxels above the low percentile (background air excluded),
    after clipping to the percentiles.

    Raises ``ValueError`` for non-finite voxels (a NaN would spread through the
    network silently).
    """
    x = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("image contains NaN or infinite voxels")
    lo, hi = np.percentile(x, percentiles)
    if hi <= lo:
        hi = lo + 1.0
    x = np.clip(x, lo, hi)
    if method == "percentile":
        return (x - lo) / (hi - lo)
    if method == "zscore":
        fg = x[x > lo]
        mu, sd = (float(fg.mean()), float(fg.std())) if fg.size else (float(x.mean()), float(x.std()))
        return (x - mu) / max(sd, 1e-6)
    raise ValueError(f"unknown normalisation {method!r}")


def context_indices(z: Sequence[int] | np.ndarray, offsets: Sequence[int], depth: int) -> np.ndarray:
    """Slice indices of the 2.5D input for each target slice, clamped at the edges.

    Returns ``(len(z), len(offsets))`` int64: ``clip(z + offset, 0, depth - 1)``, so
    the first slice's ``-1`` neighbour is the first slice itself.
    """
    z = np.asarray(z, dtype=np.int64)[:, None]
    return np.clip(z + np.asarray(offsets, dtype=np.int64)[None, :], 0, depth - 1)


def context_batch(volume: np.ndarray, z: Sequence[int], offsets: Sequence[int]) -> np.ndarray:
    """``(N, C, y, x)`` float32 2.5D stack for target slices ``z`` of a normalised
    ``(z, y, x)`` volume, ``C = len(offsets)`` (see :func:`context_indices`)."""
    idx = context_indices(z, offsets, volume.shape[0])
    return np.ascontiguousarray(volume[idx], dtype=np.float32)


def resize_images(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of ``(N, C, h, w)`` to ``(N, C, *size)`` (no-op when equal)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def resize_labels(y: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of integer labels ``(N, h, w)`` to ``(N, *size)``."""
    if tuple(y.shape[-2:]) == tuple(size):
        return y
    return F.interpolate(y[:, None].float(), size=tuple(size), mode="nearest")[:, 0].to(y.dtype)
