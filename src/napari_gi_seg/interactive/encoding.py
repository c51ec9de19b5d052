"""How a slice and its prompts become the promptable network's input (one place, used
by inference and by training).

The network works on a square **crop** around the object (RITM's zoom-in, Sofiiuk et
al. 2022, "Reviving iterative training with mask guidance for interactive
segmentation"): the bounding box of the box prompt, the current mask and the positive
clicks, grown by ``crop_margin`` of its side on every side, resampled to
``size x size`` pixels. Channels, in order:

1. the 2.5D image context: slices ``z + o`` for ``o`` in the spec's ``context_offsets``
   (clamped to the stack), each normalised by the 1st/99th percentile of the target
   slice's crop (so the network sees local contrast, whatever the sequence);
2. ``box``: 1 inside the box, else 0 (all 0 without a box);
3. ``positive`` / ``negative``: disks of ``click_radius_px`` crop pixels at the clicks,
   plus the scribbles (resampled, values in [0, 1]);
4. ``previous_mask``: the current object on this slice (for propagation: the object on
   the neighbouring slice).

All coordinates are ``(y, x)`` pixel indices of the slice; boxes are half-open
``[y0, y1) x [x0, x1)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Crop side the network sees (pixels).
CROP_SIZE = 96
CROP_MARGIN = 0.25
CLICK_RADIUS_PX = 2.5
#: Smallest crop side (slice pixels): a click alone opens a window this wide.
MIN_CROP_PX = 32
CROP_PERCENTILES = (1.0, 99.0)


@dataclass
class SlicePrompts:
    """The prompts on one slice.

    Attributes
    ----------
    box
        ``(y0, x0, y1, x1)`` half-open pixel box, or ``None``.
    points
        ``[(y, x, positive), ...]`` clicks.
    scribbles
        ``[(mask, positive), ...]``, each mask ``(y, x)`` bool.
    """

    box: tuple[int, int, int, int] | None = None
    points: list[tuple[int, int, bool]] = field(default_factory=list)
    scribbles: list[tuple[np.ndarray, bool]] = field(default_factory=list)

    def copy(self) -> SlicePrompts:
        return SlicePrompts(self.box, list(self.points), list(self.scribbles))

    @property
    def empty(self) -> bool:
        return self.box is None and not self.points and not self.scribbles


@dataclass(frozen=True)
class Crop:
    """A square window ``[y0, y0 + side) x [x0, x0 + side)`` of a slice (may reach past
    its edges; outside pixels read as 0)."""

    y0: int
    x0: int
    side: int

    def to_crop(self, y: float, x: float, size: int = CROP_SIZE) -> tuple[float, float]:
        """Slice pixel ``(y, x)`` (centre) to crop-grid coordinates."""
        s = size / self.side
        return (y + 0.5 - self.y0) * s - 0.5, (x + 0.5 - self.x0) * s - 0.5


def bbox_of(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Half-open ``(y0, x0, y1, x1)`` of a ``(y, x)`` mask, or ``None`` when empty."""
    ys = np.flatnonzero(mask.any(1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(0))
    return int(ys[0]), int(xs[0]), int(ys[-1]) + 1, int(xs[-1]) + 1


def crop_for(
    shape_yx: tuple[int, int],
    box: tuple[int, int, int, int] | None,
    mask: np.ndarray | None = None,
    points: list[tuple[int, int, bool]] | tuple = (),
    margin: float = CROP_MARGIN,
) -> Crop:
    """The crop around a box, the mask's bounding box and the positive clicks.

    Parameters
    ----------
    shape_yx : (int, int)
        Slice shape.
    box : (y0, x0, y1, x1) or None
    mask : (y, x) bool or None
    points : list of (y, x, positive)
    margin : float
        Fraction of the side added on each side.

    Returns
    -------
    Crop
        Centred on the union bounding box, side ``max(h, w) * (1 + 2 margin)`` but at least
        :data:`MIN_CROP_PX` and at most the larger slice side times 1.5.
    """
    parts = []
    if box is not None:
        parts.append(box)
    if mask is not None:
        b = bbox_of(mask)
        if b is not None:
            parts.append(b)
    for y, x, pos in points:
        if pos:
            parts.append((y, x, y + 1, x + 1))
    if not parts:
        parts.append((0, 0, shape_yx[0], shape_yx[1]))
    y0 = min(p[0] for p in parts)
    x0 = min(p[1] for p in parts)
    y1 = max(p[2] for p in parts)
    x1 = max(p[3] for p in parts)
    side = max(y1 - y0, x1 - x0) * (1.0 + 2.0 * margin)
    side = int(round(min(max(side, MIN_CROP_PX), 1.5 * max(shape_yx))))
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    return Crop(int(round(cy - side / 2.0)), int(round(cx - side / 2.0)), side)


def extract(arr: np.ndarray, crop: Crop) -> np.ndarray:
    """``arr[..., crop]`` (last two axes ``(y, x)``), zero outside the array."""
    out = np.zeros(arr.shape[:-2] + (crop.side, crop.side), dtype=arr.dtype)
    h, w = arr.shape[-2:]
    sy0, sx0 = max(crop.y0, 0), max(crop.x0, 0)
    sy1, sx1 = min(crop.y0 + crop.side, h), min(crop.x0 + crop.side, w)
    if sy1 > sy0 and sx1 > sx0:
        out[..., sy0 - crop.y0 : sy1 - crop.y0, sx0 - crop.x0 : sx1 - crop.x0] = arr[..., sy0:sy1, sx0:sx1]
    return out


def paste(crop_mask: np.ndarray, crop: Crop, shape_yx: tuple[int, int]) -> np.ndarray:
    """Put a ``(side, side)`` crop mask back into an empty ``shape_yx`` slice."""
    out = np.zeros(shape_yx, dtype=crop_mask.dtype)
    h, w = shape_yx
    sy0, sx0 = max(crop.y0, 0), max(crop.x0, 0)
    sy1, sx1 = min(crop.y0 + crop.side, h), min(crop.x0 + crop.side, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0:sy1, sx0:sx1] = crop_mask[sy0 - crop.y0 : sy1 - crop.y0, sx0 - crop.x0 : sx1 - crop.x0]
    return out


def resize(arr: np.ndarray, size: int, mode: str = "bilinear") -> np.ndarray:
    """Resample the last two axes of a float array to ``(size, size)`` (torch
    ``interpolate``; antialiased when shrinking)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    lead = t.shape[:-2]
    t = t.reshape(1, -1, *t.shape[-2:])
    shrink = t.shape[-1] > size
    if mode == "nearest":
        r = F.interpolate(t, size=(size, size), mode="nearest")
    else:
        r = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return r.reshape(*lead, size, size).numpy()


def normalise_crop(img: np.ndarray, percentiles=CROP_PERCENTILES) -> np.ndarray:
    """Scale ``(c, h, w)`` image crops to [0, 1] by the percentiles of the centre
    channel (the target slice)."""
    centre = img[img.shape[0] // 2]
    lo, hi = np.percentile(centre, percentiles)
    if hi - lo < 1e-6:
        hi = lo + 1.0
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def disks(points_cyx: list[tuple[float, float]], size: int = CROP_SIZE, radius: float = CLICK_RADIUS_PX) -> np.ndarray:
    """``(size, size)`` float32 map with 1 inside a disk around each crop-grid point."""
    out = np.zeros((size, size), np.float32)
    if not points_cyx:
        return out
    yy, xx = np.mgrid[0:size, 0:size]
    for cy, cx in points_cyx:
        out[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 1.0
    return out


def encode(
    image_context: np.ndarray,
    prompts: SlicePrompts,
    previous: np.ndarray | None,
    crop: Crop,
    size: int = CROP_SIZE,
    radius: float = CLICK_RADIUS_PX,
) -> np.ndarray:
    """The network input for one slice.

    Parameters
    ----------
    image_context : (c, y, x) float
        The 2.5D context slices (any intensity scale).
    prompts : SlicePrompts
        Box, clicks and scribbles in slice pixels.
    previous : (y, x) bool or None
        The current object on this slice, or the neighbour's for propagation.
    crop : Crop
        From :func:`crop_for`.

    Returns
    -------
    (c + 4, size, size) float32
        Image channels, then ``box``, ``positive``, ``negative``, ``previous_mask``.
    """
    img = normalise_crop(resize(extract(image_context.astype(np.float32), crop), size))
    h, w = image_context.shape[-2:]
    s = size / crop.side
    box = np.zeros((size, size), np.float32)
    if prompts.box is not None:
        y0, x0, y1, x1 = prompts.box
        cy0, cx0 = int(np.floor((y0 - crop.y0) * s)), int(np.floor((x0 - crop.x0) * s))
        cy1, cx1 = int(np.ceil((y1 - crop.y0) * s)), int(np.ceil((x1 - crop.x0) * s))
        box[max(cy0, 0) : max(cy1, 0), max(cx0, 0) : max(cx1, 0)] = 1.0
    pos = disks([crop.to_crop(y, x, size) for y, x, p in prompts.points if p], size, radius)
    neg = disks([crop.to_crop(y, x, size) for y, x, p in prompts.points if not p], size, radius)
    for m, p in prompts.scribbles:
        r = resize(extract(m.astype(np.float32), crop), size)
        r = np.clip(r * 4.0, 0.0, 1.0)  # thin strokes survive the shrink
        if p:
            pos = np.maximum(pos, r)
        else:
            neg = np.maximum(neg, r)
    prev = np.zeros((size, size), np.float32)
    if previous is not None and previous.any():
        prev = resize(extract(previous.astype(np.float32), crop), size)
    del h, w
    return np.concatenate([img, box[None], pos[None], neg[None], prev[None]]).astype(np.float32)


def decode(logits: np.ndarray, crop: Crop, shape_yx: tuple[int, int]) -> np.ndarray:
    """``(size, size)`` logits to a ``shape_yx`` bool mask (bilinear upsampling of the
    logits to the crop's side, threshold 0, pasted at the crop)."""
    up = resize(logits[None], crop.side)[0]
    return paste(up > 0.0, crop, shape_yx)


def context_slices(volume: np.ndarray, z: int, offsets=(-1, 0, 1)) -> np.ndarray:
    """``(len(offsets), y, x)``: slices ``z + o``, clamped to the stack."""
    n = volume.shape[0]
    return np.stack([volume[min(max(z + o, 0), n - 1)] for o in offsets])
