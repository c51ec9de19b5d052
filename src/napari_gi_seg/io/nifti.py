"""NIfTI-1/NIfTI-2 (``.nii``, ``.nii.gz``) reading and writing with nibabel.

Geometry: nibabel gives the array in voxel order ``(i, j, k)`` with the file's
affine (qform/sform, RAS+ world mm). We transpose to ``(z, y, x) = (k, j, i)``
(``index_order = (2, 1, 0)``) and keep the affine untouched, so
:func:`write_nifti_labels` can transpose back and reuse it: labels written here
overlay the source image in any NIfTI-aware tool.
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

import numpy as np

from .volume import InvalidInputError, Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
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
        Truncated or corrupt file, 4D data (a trailing singleton axis is dropped),
        NaN/inf voxels, non-positive spacing.
    """
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except FileNotFoundError:
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
    data = np.ascontiguousarray(np.transpose(arr, (2, 1, 0)))
    labels = looks_like_labels(path, data) if as_labels is None else as_labels
    if labels:
        if np.any(data < 0) or np.any(np.mod(data, 1) != 0):
            raise InvalidInputError(path, "label volume has negative or non-integer values")
        data = data.astype(np.uint8 if data.max(initial=0) <= 255 else np.uint16)
    else:
        data = data.astype(np.float32, copy=False)
    return Volume(
        data=data,
        spacing_mm=(zooms[2], zooms[1], zooms[0]),
        affine=np.asarray(img.affine, dtype=np.float64),
        index_order=(2, 1, 0),
        metadata={"source_path": str(path), "format": "nifti", "modality": "MR", "is_labels": bool(labels)},
    )


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
    volume:
        The image whose geometry is written: its affine, converted to RAS from the
        world frame in its metadata (:func:`nifti_affine`: DICOM's LPS is flipped here,
        by every writer: labels, exported cases, demo output), and its source axis
        order (``index_order``).
    path:
        ``.nii`` or ``.nii.gz`` file; written to a temp file then renamed (atomic).
    data:
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
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    tmp = path.with_name(".tmp-" + name)
    nib.save(img, str(tmp))
    tmp.replace(path)
    return path
