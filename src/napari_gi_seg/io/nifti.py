"""NIfTI-1/NIfTI-2 (``.nii``, ``.nii.gz``) reading and writing with nibabel.

Geometry: nibabel gives the array in voxel order ``(i, j, k)`` with the file's
affine (qform/sform, RAS+ world mm). We transpose to ``(z, y, x) = (k, j, i)``
(``index_order = (2, 1, 0)``) and keep the affine untouched, so
:func:`write_nifti_labels` can transpose back and reuse it: labels written here
overlay the source image in any NIfTI-aware tool.

Guards before anything is allocated (:func:`check_nifti_header`): the raw header is
read with nibabel's header class **without** its repairs (``check=False``; nibabel's
loader silently turns a zero ``pixdim`` into 1 mm and a negative one positive), so a
zero, negative or NaN voxel spacing is refused; the voxel data the header claims
(``prod(dim) x bitpix / 8`` after ``vox_offset``) must fit the reader cap
(:func:`~napari_gi_seg.io.volume.max_volume_bytes`, 2 GiB as float32 by default) and
the file: an uncompressed file must be at least that long, and a ``.nii.gz`` must
decompress to at least that many bytes. The gzip trailer's ``ISIZE`` field (the
uncompressed length modulo 2**32, RFC 1952 section 2.3.1) answers that without
decompressing; only when it disagrees (a multi-member gzip, or a lie) is the stream
decompressed and counted, in 1 MiB chunks, up to the claimed length. A 63-byte file
that claims 1.5 GB is thus refused in microseconds instead of driving the process
to 2 GB.
"""

from __future__ import annotations

import gzip
import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from .._atomic import atomic_path
from .volume import InvalidInputError, Volume, check_claimed_size

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: mm per unit of the NIfTI ``xyzt_units`` spatial code (nibabel's names); ``unknown``
#: (code 0, common in converters) is taken as mm.
SPATIAL_UNIT_MM = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}
#: Corner-voxel distance (mm) above which a qform/sform disagreement is warned.
QFORM_SFORM_TOLERANCE_MM = 1.0
_LABEL_NAME = re.compile(r"(^|[_\-.])(label|labels|seg|segmentation|mask|gt)([_\-.0-9]|$)", re.I)
MAX_LABEL_VALUE = 255


def is_nifti(path: str | Path) -> bool:
    """True for ``.nii``/``.nii.gz`` file names (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def looks_like_labels(path: str | Path, data: np.ndarray) -> bool:
    """Heuristic: a label volume has a label-like file name (``label_1.nii.gz``,
    ``case_seg.nii``) and/or integer-valued voxels in 0..255 with few distinct values.

    Integer content alone is not enough (many MR images are int16), so it needs the
    name, or float-stored integers with at most 32 distinct values and max <= 255.
    """
    name_says = bool(_LABEL_NAME.search(Path(str(path)).name.split(".")[0]))
    if data.size == 0:
        return False
    sample = data[:: max(1, data.shape[0] // 8)]
    if not np.all(np.isfinite(sample)):
        return False
    if np.any(sample < 0) or np.any(sample > MAX_LABEL_VALUE) or not np.all(np.mod(sample, 1) == 0):
        return False
    if name_says:
        return True
    return np.unique(sample).size <= 32 and np.issubdtype(data.dtype, np.floating)


def _raw_header(path: Path):
    """nibabel header of ``path`` parsed without nibabel's repairs, and whether the
    file is gzip-compressed (by its magic bytes, not its name)."""
    import nibabel as nib

    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:
            raw = f.read(540)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise InvalidInputError(path, f"cannot read NIfTI (truncated or corrupt gzip stream): {e}") from e
    for endian in ("<", ">"):
        if len(raw) >= 4:
            size = struct.unpack(endian + "i", raw[:4])[0]
            cls = {348: nib.Nifti1Header, 540: nib.Nifti2Header}.get(size)
            if cls is not None and len(raw) >= size:
                try:
                    return cls(binaryblock=raw[:size], endianness=endian, check=False), gz
                except Exception as e:  # nibabel raises several kinds for garbage
                    raise InvalidInputError(path, f"not a valid NIfTI header: {e}") from e
    raise InvalidInputError(path, f"not a NIfTI file (header size field is not 348 or 540; {len(raw)} bytes read)")


def _gzip_holds_at_least(path: Path, n: int) -> tuple[bool, int]:
    """Whether the gzip file decompresses to >= ``n`` bytes: the trailer's ISIZE
    (length mod 2**32) first, then a bounded streaming count. Returns (ok, bytes seen)."""
    fsize = path.stat().st_size
    if fsize >= 18 and n < 2**32:
        with open(path, "rb") as f:
            f.seek(-4, io.SEEK_END)
            isize = struct.unpack("<I", f.read(4))[0]
        if isize >= n:
            return True, isize
    seen = 0
    try:
        with gzip.open(path, "rb") as f:
            while seen < n:
                chunk = f.read(min(1 << 20, n - seen))
                if not chunk:
                    break
                seen += len(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError):
        return False, seen
    return seen >= n, seen


def check_nifti_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """Validate a NIfTI file's raw header against the file before any voxel is read
    (see the module docstring); returns the claimed ``(shape, dtype)``.

    Raises
    ------
    InvalidInputError
        Not a NIfTI header; an unknown data type; a zero, negative or NaN spacing
        (``pixdim[1..3]``) in the raw header; a claim above the reader cap; a file
        (or gzip stream) shorter than the voxel data the header claims.
    FileNotFoundError
        ``path`` does not exist.
    """
    path = Path(path)
    hdr, gz = _raw_header(path)
    try:
        shape = tuple(int(d) for d in hdr.get_data_shape())
        dtype = np.dtype(hdr.get_data_dtype())
        offset = int(hdr.get_data_offset())
    except Exception as e:  # HeaderDataError, unknown datatype code, ...
        raise InvalidInputError(path, f"invalid NIfTI header (dimensions or data type): {e}") from e
    pix = np.asarray(hdr["pixdim"], dtype=np.float64)[1 : 1 + min(len(shape), 3)]
    bad = [(i + 1, float(v)) for i, v in enumerate(pix) if not np.isfinite(v) or v <= 0]
    if bad:
        txt = ", ".join(f"pixdim[{i}] = {v:g}" for i, v in bad)
        raise InvalidInputError(
            path, f"invalid voxel spacing in the header ({txt}); spacing must be a positive number of mm"
        )
    if dtype.fields is not None or dtype.kind not in "biuf":
        kind = str(hdr.get_value_label("datatype")) if "datatype" in hdr else str(dtype)
        raise InvalidInputError(
            path,
            f"voxels of data type {kind} ({dtype}) are not supported: expected one grey value per voxel "
            "(an RGB or complex NIfTI is not an MR magnitude image; convert it to a scalar volume)",
        )
    check_claimed_size(path, shape, dtype.itemsize)
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if gz:
        ok, seen = _gzip_holds_at_least(path, need)
        if not ok:
            raise InvalidInputError(
                path,
                f"truncated: the header claims {need} bytes ({shape} x {dtype}) but the compressed stream "
                f"holds {'only ' + str(seen) if seen else 'fewer'} bytes",
            )
    else:
        size = path.stat().st_size
        if size < need:
            raise InvalidInputError(
                path, f"truncated: the header claims {need} bytes ({shape} x {dtype}) but the file has {size}"
            )
    return shape, dtype


def read_nifti(path: str | Path, as_labels: bool | None = None) -> Volume:
    """Read a 3D NIfTI file into a :class:`Volume` (``(z, y, x)``).

    Parameters
    ----------
    path: ``.nii`` or ``.nii.gz`` file.
    as_labels: force label (uint8/uint16) or image (float32) interpretation;
        ``None`` decides with :func:`looks_like_labels` (recorded in
        ``metadata["is_labels"]``).

    Raises
    ------
    InvalidInputError
        Truncated or corrupt file, a header that claims more data than the file holds
        or than the reader cap (:func:`check_nifti_header`), 4D data (a trailing
        singleton axis is dropped), NaN/inf voxels, zero/negative/NaN spacing, not
        enough memory.
    """
    path = Path(path)
    check_nifti_header(path)  # before nibabel repairs the header or allocates anything
    try:
        return _read_checked(path, as_labels)
    except MemoryError as e:
        raise InvalidInputError(path, "not enough memory to read this volume") from e


def _gunzip_verified(path: Path) -> bytes:
    """The whole decompressed stream of a ``.nii.gz``, its CRC-32 and length checked
    against the gzip trailer (RFC 1952 section 2.3.1; Python's :mod:`gzip` checks them at
    the end of each member). nibabel reads only the bytes the header claims and so never
    reaches the trailer: a flipped bit would be read as data."""
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        if isinstance(e, EOFError):
            what = "truncated: the gzip stream ends before its end-of-stream marker"
        elif "crc" in str(e).lower():
            what = "gzip CRC check failed: the file is damaged, a flipped bit?"
        else:
            what = "corrupt gzip stream"
        raise InvalidInputError(path, f"cannot read NIfTI ({what}; {type(e).__name__}: {e}); nothing was read") from e


def _read_checked(path: Path, as_labels: bool | None) -> Volume:
    import nibabel as nib

    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        if gz:
            raw = _gunzip_verified(path)
            cls = nib.Nifti2Image if raw[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") else nib.Nifti1Image
            img = cls.from_bytes(raw)
            del raw
        else:
            img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except (FileNotFoundError, InvalidInputError):
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError, nib.filebasedimages.ImageFileError) as e:
        raise InvalidInputError(path, f"cannot read NIfTI (truncated or corrupt file?): {e}") from e
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise InvalidInputError(
            path, f"{arr.ndim}D NIfTI {arr.shape} is not supported; expected one 3D volume (x, y, z)"
        )
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        n = int((~np.isfinite(arr)).sum())
        raise InvalidInputError(path, f"{n} voxels are NaN or infinite")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if min(zooms) <= 0:
        raise InvalidInputError(path, f"non-positive voxel spacing {zooms} in the header")
    affine = np.asarray(img.affine, dtype=np.float64)
    units = str(img.header.get_xyzt_units()[0] or "unknown")
    scale = SPATIAL_UNIT_MM.get(units, 1.0)
    _warn_qform_sform(path, img.header, arr.shape, scale)
    if scale != 1.0:  # spacing and world coordinates in mm, as everything downstream expects
        zooms = tuple(z * scale for z in zooms)
        affine = affine.copy()
        affine[:3, :] *= scale
    data = np.ascontiguousarray(np.transpose(arr, (2, 1, 0)))
    labels = looks_like_labels(path, data) if as_labels is None else as_labels
    if labels:
        if np.any(data < 0) or np.any(np.mod(data, 1) != 0):
            raise InvalidInputError(path, "label volume has negative or non-integer values")
        data = data.astype(np.uint8 if data.max(initial=0) <= 255 else np.uint16)
    else:
        data = data.astype(np.float32, copy=False)
    md = {"source_path": str(path), "format": "nifti", "modality": "MR", "is_labels": bool(labels)}
    if scale != 1.0:
        md["spatial_units"] = units
        md["spacing_source"] = f"pixdim in {units} (xyzt_units), converted to mm"
    return Volume(
        data=data, spacing_mm=(zooms[2], zooms[1], zooms[0]), affine=affine, index_order=(2, 1, 0), metadata=md
    )


class NiftiGeometryWarning(UserWarning):
    """A NIfTI file whose two orientation fields (qform, sform) place the image differently."""


def _warn_qform_sform(path: Path, hdr, shape, mm_per_unit: float = 1.0) -> float:
    """Warn (:class:`NiftiGeometryWarning`) when both the qform and the sform are set
    (codes > 0) and map the grid's corner voxels more than :data:`QFORM_SFORM_TOLERANCE_MM`
    apart (``mm_per_unit``: the file's spatial unit in mm); returns that distance (mm, 0
    when one is unset). The sform is used, as
    nibabel's ``get_best_affine`` (NIfTI-1 method 3 before method 2) does."""
    import itertools
    import warnings

    try:
        qc, sc = int(hdr["qform_code"]), int(hdr["sform_code"])
        if qc <= 0 or sc <= 0:
            return 0.0
        q, sf = hdr.get_qform(), hdr.get_sform()
    except Exception:  # noqa: BLE001 - a header nibabel cannot turn into both matrices: nothing to compare
        return 0.0
    corners = np.array(list(itertools.product(*[(0, max(0, int(n) - 1)) for n in shape[:3]])), float)
    pts = np.c_[corners, np.ones(len(corners))].T
    d = float(np.linalg.norm((q @ pts - sf @ pts)[:3], axis=0).max()) * mm_per_unit
    if d > QFORM_SFORM_TOLERANCE_MM:
        warnings.warn(
            f"{path}: the qform and the sform place the image up to {d:.1f} mm apart; using the sform "
            f"(sform_code {sc}, as nibabel and FSL do; ITK-based tools such as 3D Slicer may use the qform). "
            "Check which one the scanner or converter meant",
            NiftiGeometryWarning,
            stacklevel=4,
        )
    return d


def nifti_affine(volume: Volume) -> np.ndarray:
    """The volume's affine in NIfTI's RAS+ world frame (source voxel order), the one
    place where a world frame is decided for writing:

    * DICOM (LPS): x and y flipped, ``diag(-1, -1, 1, 1) @ A`` (PS3.3 C.7.6.2.1.1);
    * NIfTI (RAS): unchanged;
    * TIFF / UW-Madison PNG (no orientation): the format's documented assumption
      (:func:`.orientation.assumed_affine`), with a
      :class:`~.orientation.FrameGuessWarning`;
    * no geometry recorded at all (a bare array's volume): unchanged.
    """
    import warnings

    from .orientation import LPS_TO_RAS, FrameGuessWarning, assumed_affine, world_frame

    frame = world_frame(volume)
    if frame == "LPS":
        return LPS_TO_RAS @ volume.affine
    if frame == "none":
        warnings.warn(
            f"{volume.name}: {volume.metadata.get('format', 'this')} input has no patient orientation; the NIfTI "
            "affine states the documented assumption (docs/data-formats.md)",
            FrameGuessWarning,
            stacklevel=3,
        )
        return assumed_affine(volume)
    return np.asarray(volume.affine, dtype=np.float64)


def write_nifti(volume: Volume, path: str | Path, data: np.ndarray | None = None) -> Path:
    """Write ``data`` (default ``volume.data``; ``(z, y, x)``) as NIfTI with the
    volume's geometry, so it overlays the source scan in any NIfTI-aware tool.

    Parameters
    ----------
    volume
        The image whose geometry is written: its affine, converted to RAS from the
        world frame in its metadata (:func:`nifti_affine`: DICOM's LPS is flipped here,
        by every writer: labels, exported cases, demo output), and its source axis
        order (``index_order``).
    path
        ``.nii`` or ``.nii.gz`` file; written to a temp file then renamed (atomic).
    data
        ``(z, y, x)`` array of the volume's shape. Integer data is stored as
        uint8/uint16 (labels), floats as float32.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If the shape differs from the volume's.
    """
    import nibabel as nib

    path = Path(path)
    arr = volume.data if data is None else np.asarray(data)
    if tuple(arr.shape) != volume.shape:
        raise ValueError(f"{path}: data shape {arr.shape} differs from the image's {volume.shape}")
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        arr = arr.astype(np.uint8 if arr.max(initial=0) <= 255 else np.uint16)
    else:
        arr = arr.astype(np.float32)
    src = volume.to_source_order(arr)
    affine = nifti_affine(volume)
    img = nib.Nifti1Image(src, affine)
    img.header.set_zooms(tuple(np.abs(np.array(volume.spacing_mm))[list(volume.index_order)]))
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path
