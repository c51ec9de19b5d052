"""The one volume type of the project.

Every reader returns a :class:`Volume`; the engine, the trainer, the exporter and the
writers take one. Axis order is always ``(z, y, x)``: ``z`` is the slice axis (axial
for the abdominal MRI this project targets), ``y`` rows, ``x`` columns.

Geometry convention
-------------------
``affine`` is the 4x4 matrix of the *source file* that maps voxel indices in the
source's own axis order to world coordinates in mm (NIfTI/RAS+ for NIfTI, LPS for
DICOM as in the DICOM standard, PS3.3 C.7.6.2.1.1). Because readers transpose the
source array into ``(z, y, x)``, :attr:`Volume.index_order` records how: the source
voxel index ``i_src[k] = i_zyx[index_order[k]]``.  Writers use it to put an array
back into the source's axis order so that labels line up with the image in 3D
Slicer, ITK-SNAP or a planning system. For NIfTI the source order is ``(i, j, k)``
= ``(x, y, z)``, so ``index_order = (2, 1, 0)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GiSegError

# Metadata keys that may be copied from a source file. Anything else (notably every
# DICOM patient-module attribute) is dropped. See PS3.15 Annex E for the DICOM
# de-identification profile this list is meant to respect.
SAFE_METADATA_KEYS = (
    "source_path",
    "format",
    "modality",
    "series_description",
    "series_instance_uid_hash",
    "case_id",
    "day",
    "is_labels",
    "synthetic",
    "class_names",
    "index_order",
    # added by the I/O readers (io/tiff.py, io/uwmgi.py, io/dicom.py):
    "spacing_source",  # where spacing_mm came from, e.g. "imagej", "ome", "file names"
    "spacing_assumed",  # True when the file had no spacing and 1 mm was assumed
    "slice_numbers",  # UW-Madison: slice number (from the file name) of each z index
    "coordinate_system",  # world frame of `affine`: "RAS" (NIfTI), "LPS" (DICOM), "none"
    "volume_label",  # DICOM: the volume of a series that holds several ("e1", "e2": echoes)
    "echo_time_ms",  # DICOM: EchoTime of a volume split from a multi-echo series
    "echo_number",  # DICOM: EchoNumbers of that volume
    "frame_of_reference_uid_hash",  # DICOM: sha256 (16 hex) of the FrameOfReferenceUID (io.frames)
    "photometric",  # DICOM: "MONOCHROME1 (inverted)" when the reader inverted the values
    "spatial_units",  # NIfTI: the xyzt_units the file's spacing was converted from (e.g. "micron")
    "burned_in_annotation",  # DICOM (0028,0301) BurnedInAnnotation YES: identifiers may be in the pixels
)

#: Layer-metadata key holding the random token of a volume's DICOM reference (see
#: :func:`register_dicom_ref`); the token means nothing outside this Python process.
DICOM_REF_TOKEN_KEY = "dicom_ref_token"

# Process-local store of DICOM references by random token, so that a napari layer
# (whose metadata may be saved or exported) carries only the token, never the UIDs.
# Bounded: the oldest references are dropped first.
_DICOM_REFS: dict[str, Any] = {}
_MAX_DICOM_REFS = 256


def register_dicom_ref(ref: Any) -> str:
    """Keep ``ref`` (a :class:`~napari_gi_seg.io.dicom.DicomReference`) in this process
    and return its random token (``ref.token``). Nothing is written anywhere."""
    token = str(ref.token)
    _DICOM_REFS.pop(token, None)
    _DICOM_REFS[token] = ref
    while len(_DICOM_REFS) > _MAX_DICOM_REFS:
        _DICOM_REFS.pop(next(iter(_DICOM_REFS)))
    return token


def lookup_dicom_ref(token: Any) -> Any:
    """The DICOM reference registered under ``token`` in this process, else ``None``."""
    return _DICOM_REFS.get(str(token)) if token else None


class InvalidInputError(GiSegError, ValueError):
    """A file or folder of a supported format that cannot be read.

    The message always names the file and the problem, e.g.
    ``"scan.nii.gz: 4D NIfTI (256, 256, 30, 5) is not supported; ..."``.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{display_path(self.path)}: {problem}")


def display_path(path: str | Path) -> str:
    """``path`` as a message shows it: control characters (a newline, a tab, an
    escape) written as Python escapes (``\\n``), so a hostile file name cannot cut or
    forge the one-line error."""
    s = str(path)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)


#: Default cap on the voxel data one reader may hold (bytes, as float32): 2 GiB, i.e.
#: 512 x 512 x 2048 voxels. ``$NAPARI_GI_SEG_MAX_VOLUME_BYTES`` overrides it.
DEFAULT_MAX_VOLUME_BYTES = 2 * 1024**3


def max_volume_bytes() -> int:
    """The reader cap (bytes): ``$NAPARI_GI_SEG_MAX_VOLUME_BYTES`` (an integer; a
    malformed value is ignored) or :data:`DEFAULT_MAX_VOLUME_BYTES`."""
    import os

    try:
        v = int(float(os.environ.get("NAPARI_GI_SEG_MAX_VOLUME_BYTES", "")))
    except ValueError:
        return DEFAULT_MAX_VOLUME_BYTES
    return v if v > 0 else DEFAULT_MAX_VOLUME_BYTES


def check_claimed_size(path: str | Path, shape: tuple[int, ...], itemsize: int = 4) -> int:
    """Refuse, before anything is allocated, a volume whose header claims more voxel
    data than :func:`max_volume_bytes`.

    ``shape``: the claimed array shape; ``itemsize``: bytes per voxel of the array the
    reader will hold (at least 4: images become float32). Returns the claimed bytes.

    Raises
    ------
    InvalidInputError
        Negative dimensions or more bytes than the cap (the message gives both and the
        environment variable that raises the cap).
    """
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise InvalidInputError(path, f"the header claims a negative dimension {tuple(dims)}")
    n = 1
    for d in dims:
        n *= d
    claimed = n * max(int(itemsize), 4)
    cap = max_volume_bytes()
    if claimed > cap:
        raise InvalidInputError(
            path,
            f"the header claims {tuple(dims)} voxels = {claimed / 1024**3:.1f} GiB as float32, above the "
            f"{cap / 1024**3:.1f} GiB limit (damaged or hostile file?; set NAPARI_GI_SEG_MAX_VOLUME_BYTES to raise it)",
        )
    return claimed


@dataclass
class Volume:
    """An image or label stack with its geometry.

    Attributes
    ----------
    data
        ``(z, y, x)`` array. Images are float32 (or the source's integer type);
        label volumes are small unsigned integers (uint8/uint16).
    spacing_mm
        Voxel size ``(z, y, x)`` in mm. ``z`` is the distance between slice centres.
    affine
        4x4 float64 voxel-to-world matrix of the source file, in the source's own
        axis order (see module docstring). Identity scaled by spacing when the
        source has none (TIFF, PNG).
    index_order
        Permutation that maps ``(z, y, x)`` axes to the source's voxel axes.
    metadata
        Safe, non-identifying metadata only (keys in :data:`SAFE_METADATA_KEYS`).
    _dicom_ref
        Private: for a DICOM series, the UIDs, per-slice positions and Patient/Study
        module values that RTSTRUCT and DICOM-SEG outputs must reference
        (:class:`~napari_gi_seg.io.dicom.DicomReference`), else ``None``. Kept out of
        ``repr``, comparisons, :attr:`metadata` and layer metadata (which carry only a
        random token), so it never reaches exported datasets, sessions or logs.
    """

    data: np.ndarray
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    index_order: tuple[int, int, int] = (2, 1, 0)
    metadata: dict[str, Any] = field(default_factory=dict)
    _dicom_ref: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise ValueError(f"Volume data must be 3D (z, y, x), got shape {self.data.shape}")
        self.spacing_mm = tuple(float(s) for s in self.spacing_mm)  # type: ignore[assignment]
        if len(self.spacing_mm) != 3 or not all(np.isfinite(self.spacing_mm)) or min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing_mm must be 3 positive numbers (z, y, x), got {self.spacing_mm}")
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        self.index_order = tuple(int(i) for i in self.index_order)  # type: ignore[assignment]
        self.metadata = {k: v for k, v in self.metadata.items() if k in SAFE_METADATA_KEYS}

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(z, y, x)`` shape in voxels."""
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def name(self) -> str:
        """A display name from the source file name (no patient data), with the
        ``volume_label`` of a volume split from a multi-volume series (``"DICOM_anon_e1"``)."""
        src = self.metadata.get("source_path")
        if not src:
            return "volume"
        n = Path(src).name
        for suf in (".nii.gz", ".nii", ".tif", ".tiff", ".csv", ".png"):
            if n.lower().endswith(suf):
                n = n[: -len(suf)]
                break
        label = self.metadata.get("volume_label")
        return f"{n}_{label}" if label else n

    def with_data(self, data: np.ndarray, **metadata: Any) -> Volume:
        """A copy sharing the geometry with new ``(z, y, x)`` data of the same shape.

        Raises
        ------
        ValueError
            If ``data.shape`` differs from :attr:`shape`.
        """
        if tuple(data.shape) != self.shape:
            raise ValueError(f"shape {data.shape} differs from the volume's {self.shape}")
        md = dict(self.metadata)
        md.update(metadata)
        return dataclasses.replace(self, data=data, metadata=md)

    def to_source_order(self, data: np.ndarray | None = None) -> np.ndarray:
        """``data`` (default :attr:`data`) transposed from ``(z, y, x)`` to the source's axis order."""
        arr = self.data if data is None else data
        # i_src[k] = i_zyx[index_order[k]]  ->  src = zyx.transpose(index_order)
        return np.transpose(arr, self.index_order)

    def layer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a napari layer: ``scale`` = spacing (mm), name, metadata.

        A DICOM volume's private reference is registered in this process and only its
        random token goes into the metadata (:data:`DICOM_REF_TOKEN_KEY`).
        """
        md = {
            **self.metadata,
            "affine": self.affine.tolist(),
            "index_order": list(self.index_order),
            "spacing_mm": list(self.spacing_mm),
        }
        if self._dicom_ref is not None:
            md[DICOM_REF_TOKEN_KEY] = register_dicom_ref(self._dicom_ref)
        return {"scale": self.spacing_mm, "name": self.name, "metadata": md}


def volume_from_layer_metadata(data: np.ndarray, metadata: dict[str, Any], scale=None) -> Volume:
    """Rebuild a :class:`Volume` from a napari layer's ``data`` and ``metadata``.

    Used by writers and widgets: the affine and axis order stored by
    :meth:`Volume.layer_kwargs` survive a round trip through napari.
    ``scale`` (the layer's scale, mm) is used when the metadata has no spacing.
    The DICOM reference registered under the metadata's token (if any, and if its
    slice count and image size match ``data``) is re-attached.
    """
    spacing = metadata.get("spacing_mm") or (list(scale) if scale is not None else [1.0, 1.0, 1.0])
    spacing = [float(s) for s in spacing][-3:]
    affine = np.asarray(metadata.get("affine", np.diag([spacing[2], spacing[1], spacing[0], 1.0])))
    index_order = tuple(metadata.get("index_order", (2, 1, 0)))
    data = np.asarray(data)
    ref = lookup_dicom_ref(metadata.get(DICOM_REF_TOKEN_KEY))
    if ref is not None and data.ndim == 3 and tuple(ref.shape) != tuple(data.shape):
        ref = None
    return Volume(data, tuple(spacing), affine, index_order, dict(metadata), _dicom_ref=ref)
