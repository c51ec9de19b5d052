"""Run-length encoding (RLE) of 2D masks, UW-Madison GI Tract (Kaggle 2022) convention.

Convention (the competition's ``train.csv``, column ``segmentation``):

* the mask ``(H, W)`` = ``(height, width)`` = ``(rows, columns)`` is flattened in
  row-major (C) order, i.e. pixel ``(y, x)`` has flat index ``y * W + x``;
* the string is space-separated pairs ``start length`` with a **1-based** ``start``;
* runs are maximal (two runs never touch), in increasing order;
* an empty mask is the empty string.

This is byte-identical to the encoder every public Kaggle notebook used::

    pixels = np.concatenate([[0], img.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]

Scan file names in the Kaggle tree look like ``slice_0065_266_266_1.50_1.50.png``:
slice index, width ``W``, height ``H`` (pixels) and pixel spacing ``x, y`` (mm).
Slice ids in ``train.csv`` look like ``case123_day20_slice_0065``.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

from ..errors import InputError

_ID = re.compile(r"^case(\d+)_day(\d+)_slice_(\d+)$")
_SCAN = re.compile(r"^slice_(\d+)_(\d+)_(\d+)_(\d+(?:\.\d+)?)_(\d+(?:\.\d+)?)\.png$", re.I)


class ScanName(NamedTuple):
    """Geometry parsed from a UW-Madison scan file name.

    ``slice_index`` (1-based as in the file name), ``width``/``height`` in pixels,
    ``spacing_x_mm``/``spacing_y_mm`` pixel spacing in mm.
    """

    slice_index: int
    width: int
    height: int
    spacing_x_mm: float
    spacing_y_mm: float


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2D mask ``(H, W)`` (bool or any dtype; non-zero = inside) as RLE.

    Returns ``"start length start length ..."`` with 1-based starts over the
    row-major flattened mask, or ``""`` for an empty mask (see module docstring).

    Raises
    ------
    ValueError
        If ``mask`` is not 2D.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"rle_encode expects a 2D (H, W) mask, got shape {mask.shape}")
    flat = (mask.ravel(order="C") != 0).view(np.int8)
    if flat.size == 0:
        return ""
    # Indices where the value changes; +1 = 1-based start of a run / 1-based end + 1.
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    if flat[0]:
        edges = np.concatenate(([0], edges))
    if flat[-1]:
        edges = np.concatenate((edges, [flat.size]))
    if edges.size == 0:
        return ""
    runs = edges + 0
    runs[0::2] += 1  # 0-based start -> 1-based
    runs[1::2] = edges[1::2] - edges[0::2]
    return " ".join(map(str, runs.tolist()))


def rle_runs(rle: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse an RLE string into ``(starts0, lengths)`` int64 arrays.

    ``starts0`` are 0-based flat indices. An empty or whitespace-only string gives
    two empty arrays.

    Raises
    ------
    ValueError
        Odd number of values, non-integers, starts < 1 or lengths < 1.
    """
    if not isinstance(rle, str):
        # pandas gives float NaN for empty cells
        if rle is None or (isinstance(rle, float) and np.isnan(rle)):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        raise InputError(f"RLE must be a string, got {type(rle).__name__}")
    parts = rle.split()
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if len(parts) % 2:
        raise InputError(f"RLE has an odd number of values ({len(parts)}); expected start/length pairs")
    try:
        vals = np.fromiter(map(int, parts), dtype=np.int64, count=len(parts))
    except ValueError as e:
        raise InputError(f"RLE has a non-integer value: {e}") from e
    starts, lengths = vals[0::2], vals[1::2]
    if starts.min() < 1:
        raise InputError(f"RLE start {int(starts.min())} < 1 (starts are 1-based)")
    if lengths.min() < 1:
        raise InputError(f"RLE run length {int(lengths.min())} < 1")
    return starts - 1, lengths


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode an RLE string into a ``(H, W)`` uint8 mask with values 0/1.

    Parameters
    ----------
    rle: Kaggle RLE string (``""`` or NaN for an empty mask).
    shape: ``(H, W)`` = (height, width) in pixels; for a scan named
        ``slice_NNNN_W_H_pw_ph.png`` that is ``(H, W)``.

    Raises
    ------
    ValueError
        Malformed RLE (see :func:`rle_runs`), or a run that ends beyond ``H * W``
        (the mask does not fit the geometry).
    """
    h, w = int(shape[0]), int(shape[1])
    n = h * w
    starts, lengths = rle_runs(rle)
    out = np.zeros(n, dtype=np.uint8)
    if starts.size == 0:
        return out.reshape(h, w)
    ends = starts + lengths
    if int(ends.max()) > n:
        raise InputError(f"RLE run ends at pixel {int(ends.max())} beyond the {h}x{w} mask ({n} pixels)")
    if starts.size <= 4096:
        for a, b in zip(starts.tolist(), ends.tolist()):
            out[a:b] = 1
    else:  # many runs: +1 at every start, -1 at every end, cumulative sum = coverage
        delta = np.zeros(n + 1, dtype=np.int32)
        np.add.at(delta, starts, 1)
        np.add.at(delta, ends, -1)
        out[:] = np.cumsum(delta[:-1]) > 0
    return out.reshape(h, w)


def parse_uwmgi_id(slice_id: str) -> tuple[int, int, int]:
    """``"case123_day20_slice_0065"`` -> ``(123, 20, 65)`` = (case, day, slice index).

    Raises
    ------
    ValueError
        If the id does not follow ``case<N>_day<M>_slice_<NNNN>``.
    """
    m = _ID.match(str(slice_id).strip())
    if not m:
        raise InputError(f"not a UW-Madison slice id (case<N>_day<M>_slice_<NNNN>): {slice_id!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def case_day_of(slice_id: str) -> str:
    """``"case123_day20_slice_0065"`` -> ``"case123_day20"``."""
    case, day, _ = parse_uwmgi_id(slice_id)
    return f"case{case}_day{day}"


def parse_scan_name(name: str) -> ScanName:
    """Parse a UW-Madison scan file name ``slice_NNNN_W_H_pw_ph.png``.

    ``"slice_0001_360_310_1.50_1.50.png"`` -> ``ScanName(1, 360, 310, 1.5, 1.5)``:
    the image is 310 rows (H) x 360 columns (W), pixel spacing 1.5 x 1.5 mm.
    A leading folder is ignored.

    Raises
    ------
    ValueError
        If the name does not follow the pattern or a size/spacing is not positive.
    """
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    m = _SCAN.match(base)
    if not m:
        raise InputError(f"not a UW-Madison scan file name (slice_NNNN_W_H_pw_ph.png): {base!r}")
    s = ScanName(int(m.group(1)), int(m.group(2)), int(m.group(3)), float(m.group(4)), float(m.group(5)))
    if min(s.width, s.height) <= 0 or min(s.spacing_x_mm, s.spacing_y_mm) <= 0:
        raise InputError(f"{base!r}: width, height and pixel spacing must be positive")
    return s


#: ``(H, W)`` of every scan geometry in the UW-Madison training set (from the scan
#: file names: ``266_266``, ``234_234``, ``276_276`` and ``360_310`` = W 360 x H 310).
UWMGI_SHAPES: tuple[tuple[int, int], ...] = ((234, 234), (266, 266), (276, 276), (310, 360))


def infer_mask_shape(rles, candidates: tuple[tuple[int, int], ...] = UWMGI_SHAPES) -> tuple[int, int] | None:
    """Guess the ``(H, W)`` of a set of masks that share one geometry (one case-day)
    from their RLE strings alone, when no scan file name is at hand.

    A candidate fits when every run ends within ``H * W`` pixels and **no run crosses
    a row boundary** (organs do not touch the image's left/right edges, so with the
    wrong width runs would wrap). Returns the one fitting candidate, or ``None`` when
    none or several fit (e.g. all masks empty). On the full UW-Madison ``train.csv``
    exactly one of :data:`UWMGI_SHAPES` fits each of the 274 case-days.
    """
    parsed = [rle_runs(r) for r in rles]
    parsed = [(s, n) for s, n in parsed if s.size]
    if not parsed:
        return None
    starts = np.concatenate([s for s, _ in parsed])
    last = np.concatenate([s + n - 1 for s, n in parsed])  # 0-based last pixel of each run
    fits = [(h, w) for h, w in candidates if int(last.max()) < h * w and not np.any(starts // w != last // w)]
    return fits[0] if len(fits) == 1 else None
