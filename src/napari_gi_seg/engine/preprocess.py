"""Preprocessing shared by inference and training (one place for each fact):
intensity normalisation, 2.5D context stacking and in-plane resizing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError


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
        raise InputError("image contains NaN or infinite voxels")
    lo, hi = (np.float32(v) for v in np.percentile(x, percentiles))
    if hi <= lo:
        hi = lo + np.float32(1.0)
    x = np.clip(x, lo, hi)
    if method == "percentile":
        return (x - lo) / (hi - lo)
    if method == "zscore":
        fg = x[x > lo]
        mu, sd = (float(fg.mean()), float(fg.std())) if fg.size else (float(x.mean()), float(x.std()))
        return ((x - mu) / max(sd, 1e-6)).astype(np.float32)
    raise InputError(f"unknown normalisation {method!r}")


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


# --------------------------------------------------------------------------- in-plane grid
#: smp encoders downsample 5 times: a network input must be a multiple of 32 pixels.
NETWORK_MULTIPLE = 32


@dataclass(frozen=True)
class InplaneGrid:
    """How one slice of the model-frame volume becomes the network's input and back.

    A slice ``(h, w)`` of pixel spacing ``spacing_mm`` (y, x) is resampled (bilinear,
    edges aligned: ``align_corners=False``) to ``resampled`` = ``round(h * sy / ty)``,
    ``round(w * sx / tx)`` pixels of the target spacing ``(ty, tx)``, which keeps the
    aspect ratio, then placed at ``offset`` inside a ``padded`` canvas (centred; the
    border gets the background value). A negative offset crops (training only, see
    :func:`inplane_grid`). :meth:`from_network` is the exact inverse of the crop/pad
    and resamples back to ``(h, w)``.
    """

    shape: tuple[int, int]
    resampled: tuple[int, int]
    padded: tuple[int, int]
    offset: tuple[int, int]

    def to_network(self, x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """``(N, C, h, w)`` -> ``(N, C, *padded)``: resample, then pad (or crop) centred."""
        x = resize_images(x, self.resampled)
        (oy, ox), (H, W), (rh, rw) = self.offset, self.padded, self.resampled
        if (oy, ox) == (0, 0) and (H, W) == (rh, rw):
            return x
        out = torch.full((*x.shape[:2], H, W), float(fill), dtype=x.dtype, device=x.device)
        sy0, sx0 = max(0, -oy), max(0, -ox)  # source start (crop)
        dy0, dx0 = max(0, oy), max(0, ox)  # destination start (pad)
        hh, ww = min(rh - sy0, H - dy0), min(rw - sx0, W - dx0)
        out[..., dy0 : dy0 + hh, dx0 : dx0 + ww] = x[..., sy0 : sy0 + hh, sx0 : sx0 + ww]
        return out

    def labels_to_network(self, y: torch.Tensor, fill: int = 0) -> torch.Tensor:
        """Integer labels ``(N, h, w)`` -> ``(N, *padded)`` (nearest; same placement as
        :meth:`to_network`, the border gets ``fill``)."""
        y = resize_labels(y, self.resampled)
        (oy, ox), (H, W), (rh, rw) = self.offset, self.padded, self.resampled
        out = torch.full((y.shape[0], H, W), fill, dtype=y.dtype)
        sy0, sx0, dy0, dx0 = max(0, -oy), max(0, -ox), max(0, oy), max(0, ox)
        hh, ww = min(rh - sy0, H - dy0), min(rw - sx0, W - dx0)
        out[:, dy0 : dy0 + hh, dx0 : dx0 + ww] = y[:, sy0 : sy0 + hh, sx0 : sx0 + ww]
        return out

    def from_network(self, p: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, C, *padded)`` -> ``(N, C, h, w)``: crop the padding
        off, resample back (bilinear). Only for grids that did not crop."""
        if min(self.offset) < 0:
            raise InputError("a cropping grid cannot be inverted")
        (oy, ox), (rh, rw) = self.offset, self.resampled
        p = p[..., oy : oy + rh, ox : ox + rw]
        return resize_images(p, self.shape)


def inplane_grid(
    shape: Sequence[int],
    spacing_mm: Sequence[float] | None,
    target_spacing_mm: Sequence[float] | None,
    input_size: Sequence[int],
    fixed: bool = False,
) -> InplaneGrid:
    """The :class:`InplaneGrid` of a model-frame slice ``shape`` ``(h, w)``.

    ``spacing_mm`` / ``target_spacing_mm``: ``(y, x)`` pixel spacing of the slice and
    of the model (:attr:`~napari_gi_seg.models.spec.ModelFrame.spacing_mm`); when either
    is ``None`` the slice is squashed to ``input_size`` (the behaviour before model
    frames, used for bare arrays). ``fixed=False`` (inference): the canvas is
    ``input_size``, or larger (the next multiple of 32) when the resampled slice does
    not fit, so nothing is ever cropped. ``fixed=True`` (training batches): exactly
    ``input_size``, centre-cropped when larger.
    """
    h, w = int(shape[0]), int(shape[1])
    size = (int(input_size[0]), int(input_size[1]))
    if spacing_mm is None or target_spacing_mm is None:
        return InplaneGrid((h, w), size, size, (0, 0))
    rh = max(1, int(round(h * float(spacing_mm[0]) / float(target_spacing_mm[0]))))
    rw = max(1, int(round(w * float(spacing_mm[1]) / float(target_spacing_mm[1]))))
    if fixed:
        H, W = size
    else:
        H = size[0] if rh <= size[0] else -(-rh // NETWORK_MULTIPLE) * NETWORK_MULTIPLE
        W = size[1] if rw <= size[1] else -(-rw // NETWORK_MULTIPLE) * NETWORK_MULTIPLE
    # centre; a negative offset crops (floor division keeps pad and crop symmetric)
    return InplaneGrid((h, w), (rh, rw), (H, W), ((H - rh) // 2, (W - rw) // 2))
