"""Multi-page TIFF stacks (``.tif``/``.tiff``) with tifffile.

Reading: the first series of the file as ``(z, y, x)`` (a single page becomes
``(1, y, x)``). Spacing, in this order of precedence:

1. OME-TIFF ``Pixels`` ``PhysicalSizeZ/Y/X`` with their units (default µm, OME schema);
2. ImageJ metadata: ``spacing`` (z) and ``unit``, with the ``XResolution`` /
   ``YResolution`` tags (pixels per unit) for x and y;
3. TIFF ``XResolution``/``YResolution`` with ``ResolutionUnit`` inch or cm (in-plane
   only; z is then 1 mm and flagged);
4. none: 1 mm, with ``metadata["spacing_assumed"] = True``.

``metadata["spacing_source"]`` says which. TIFF has no patient orientation: the
affine is ``diag(sx, sy, sz, 1)`` in NIfTI voxel order ``(x, y, z)``
(``index_order = (2, 1, 0)``, ``coordinate_system = "none"``).

Frame assumption (documented, never silent): a TIFF stack is taken as axial slices
displayed radiologically, as viewers export them: rows run anterior -> posterior,
columns the patient's right -> left, the first page at the head (axis codes
``("L", "P", "I")`` in (x, y, z), :data:`napari_gi_seg.io.orientation.ASSUMED_AXCODES`).
The engine, which reorients every scan into the model's frame, and the NIfTI writer
use that assumption and emit a
:class:`~napari_gi_seg.io.orientation.FrameGuessWarning` when they do.

Writing labels: ImageJ hyperstack ``ZYX``, uint8 (uint16 above 255), ``unit = mm``,
``spacing`` = z spacing and resolution = 1 / in-plane spacing, so ImageJ/Fiji and this
reader get the spacing back.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .._atomic import atomic_path
from ..errors import InputError
from .volume import InvalidInputError, Volume, check_claimed_size

TIFF_SUFFIXES = (".tif", ".tiff")

# Length units -> mm.
_UNIT_MM = {
    "mm": 1.0,
    "millimeter": 1.0,
    "millimetre": 1.0,
    "cm": 10.0,
    "centimeter": 10.0,
    "centimetre": 10.0,
    "m": 1000.0,
    "meter": 1000.0,
    "metre": 1000.0,
    "um": 1e-3,
    "µm": 1e-3,
    "μm": 1e-3,
    "micron": 1e-3,
    "microns": 1e-3,
    "micrometer": 1e-3,
    "\\u00b5m": 1e-3,
    "nm": 1e-6,
    "nanometer": 1e-6,
    "inch": 25.4,
    "in": 25.4,
}


def is_tiff(path: str | Path) -> bool:
    """True for ``.tif``/``.tiff`` file names (case-insensitive)."""
    return str(path).lower().endswith(TIFF_SUFFIXES)


def _unit_to_mm(unit) -> float | None:
    if unit is None:
        return None
    u = str(unit).strip().lower()
    return _UNIT_MM.get(u) or _UNIT_MM.get(u.replace("\u00b5", "u").replace("\u03bc", "u"))


def _resolution(page, tag: str) -> float | None:
    t = page.tags.get(tag)
    if t is None:
        return None
    num, den = t.value if isinstance(t.value, tuple) else (t.value, 1)
    if not num or not den:
        return None
    return float(den) / float(num)  # unit per pixel


def _ome_spacing(xml: str) -> tuple[float | None, float | None, float | None]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None, None
    pix = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pix is None:
        return None, None, None
    out = []
    for ax in ("Z", "Y", "X"):
        v = pix.get(f"PhysicalSize{ax}")
        f = _unit_to_mm(pix.get(f"PhysicalSize{ax}Unit", "µm"))
        out.append(float(v) * f if v is not None and f is not None else None)
    return tuple(out)  # type: ignore[return-value]


def read_tiff(path: str | Path, as_labels: bool = False) -> Volume:
    """Read a TIFF stack into a :class:`Volume` ``(z, y, x)``.

    Parameters
    ----------
    path: ``.tif``/``.tiff`` file (ImageJ, OME or plain multi-page).
    as_labels: check the data are non-negative integers and store uint8/uint16.

    Raises
    ------
    InvalidInputError
        Unreadable/corrupt file; more data than the reader cap
        (:func:`~napari_gi_seg.io.volume.check_claimed_size`, checked before
        allocating); not enough memory; data that is not a grey ``(z, y, x)`` stack (RGB,
        channels or time points); NaN/inf voxels; non-integer or negative labels.
    """
    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            check_claimed_size(path, tuple(series.shape), np.dtype(series.dtype).itemsize)  # before allocating
            arr = series.asarray()
            axes = series.axes
            page = tif.pages[0]
            ij = tif.imagej_metadata or {}
            ome = tif.ome_metadata if tif.is_ome else None
            res_unit = page.tags.get("ResolutionUnit")
            res_unit = int(res_unit.value) if res_unit is not None else 1
            rx, ry = _resolution(page, "XResolution"), _resolution(page, "YResolution")
    except (FileNotFoundError, InvalidInputError):
        raise
    except MemoryError as e:
        raise InvalidInputError(path, "not enough memory to read this stack") from e
    except Exception as e:  # tifffile raises TiffFileError, ValueError, struct.error, ...
        raise InvalidInputError(path, f"cannot read TIFF (truncated or corrupt file?): {e}") from e

    # Drop singleton axes other than Y/X, then require (Z)YX.
    keep = [i for i, a in enumerate(axes) if arr.shape[i] != 1 or a in "YX"]
    arr = arr.reshape([arr.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if axes == "YX":
        arr, axes = arr[None], "ZYX"
    if len(axes) != 3 or axes[1:] != "YX" or axes[0] in "SCT":
        raise InvalidInputError(
            path,
            f"expected a grey stack (z, y, x); got axes {axes!r} with shape {arr.shape} "
            "(RGB, several channels or time points are not supported)",
        )
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise InvalidInputError(path, f"{int((~np.isfinite(arr)).sum())} voxels are NaN or infinite")

    sz = sy = sx = None
    source = None
    if ome:
        sz, sy, sx = _ome_spacing(ome)
        if sy or sx:
            source = "ome"
    if source is None and ij:
        f = _unit_to_mm(ij.get("unit"))
        if f is not None:
            sz = float(ij["spacing"]) * f if ij.get("spacing") else None
            sx = rx * f if rx else None
            sy = ry * f if ry else None
            source = "imagej"
    if source is None and res_unit in (2, 3) and (rx or ry):
        f = 25.4 if res_unit == 2 else 10.0
        sx = rx * f if rx else None
        sy = ry * f if ry else None
        source = "resolution tags"
    assumed = [n for n, v in zip("zyx", (sz, sy, sx)) if not v or v <= 0]
    sz, sy, sx = (v if v and v > 0 else 1.0 for v in (sz, sy, sx))

    if as_labels:
        if np.issubdtype(arr.dtype, np.floating) and np.any(np.mod(arr, 1) != 0) or np.any(arr < 0):
            raise InvalidInputError(path, "label stack has negative or non-integer values")
        arr = arr.astype(np.uint8 if arr.max(initial=0) <= 255 else np.uint16)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32, copy=False)
    md = {
        "source_path": str(path),
        "format": "tiff",
        "is_labels": bool(as_labels),
        "coordinate_system": "none",
        "spacing_source": (source or "none") + (f"; {','.join(assumed)} assumed 1 mm" if assumed else ""),
        "spacing_assumed": bool(assumed),
    }
    return Volume(np.ascontiguousarray(arr), (sz, sy, sx), np.diag([sx, sy, sz, 1.0]), (2, 1, 0), md)


def write_tiff_labels(
    path: str | Path, labels: np.ndarray, spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
) -> Path:
    """Write a ``(z, y, x)`` label volume as an ImageJ TIFF (uint8, uint16 above 255)
    with ``spacing_mm`` = (z, y, x) in mm. Written to a temp file then renamed.

    Raises ``ValueError`` for a non-3D array or negative / non-integer labels.
    """
    import tifffile

    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"{path}: labels must be (z, y, x), got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or (np.issubdtype(labels.dtype, np.floating) and np.any(np.mod(labels, 1)))):
        raise InputError(f"{path}: labels must be non-negative integers")
    arr = labels.astype(np.uint8 if labels.max(initial=0) <= 255 else np.uint16)
    sz, sy, sx = (float(s) for s in spacing_mm)
    path = Path(path)
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            arr,
            imagej=True,
            resolution=(1.0 / sx, 1.0 / sy),
            metadata={"axes": "ZYX", "spacing": sz, "unit": "mm"},
        )
    return path
