"""Orientation and frame logic: how a volume's voxel axes lie in the patient.

Axis codes follow nibabel's convention (``("R", "A", "S")`` means the first axis
increases toward the patient's Right, ...; :mod:`nibabel.orientations`).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def radiological_orientation2d(affine, index_order=(2, 1, 0), coordinate_system: str = "RAS") -> tuple[str, str] | None:
    """napari ``camera.orientation2d`` that shows an axial ``(z, y, x)`` slice in the
    radiological convention: anterior at the top, the patient's right on the
    screen's left (ACR/DICOM display convention for axial images).

    ``affine``: the source's voxel-to-world matrix; ``index_order``: as in
    :class:`Volume`; ``coordinate_system``: ``"RAS"`` (NIfTI) or ``"LPS"`` (DICOM).
    Returns ``(vertical, horizontal)`` such as ``("up", "right")``, or ``None``
    when the source has no anatomical frame (TIFF, PNG).
    """
    if coordinate_system not in ("RAS", "LPS"):
        return None
    a = np.asarray(affine, dtype=float)[:3, :3].copy()
    if coordinate_system == "LPS":
        a[:2] *= -1  # LPS -> RAS
    # world direction (RAS) of increasing array y and x: columns of the source axes
    src_axis = {zyx: k for k, zyx in enumerate(index_order)}
    dir_y, dir_x = a[:, src_axis[1]], a[:, src_axis[2]]
    # vertical: rows increase toward the patient's anterior (+A) -> "up" puts them on top
    vertical = "up" if dir_y[1] > 0 else "down"
    # horizontal: columns increase toward the patient's left (-R) -> "right" (default)
    horizontal = "right" if dir_x[0] < 0 else "left"
    return vertical, horizontal


# --------------------------------------------------------------------------- world frame
#: LPS (DICOM) <-> RAS (NIfTI) world frames differ by flipping x and y (PS3.3 C.7.6.2.1.1).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: The documented frame assumption of the formats without orientation, as nibabel axis
#: codes in voxel-axis order (x, y, z) = (column, row, slice):
#:
#: * ``"uwmgi"``: UW-Madison GI Tract PNG slices are axial and displayed radiologically
#:   (Lee S.L. et al., Data in Brief 57 (2024) 111159): rows run anterior -> posterior,
#:   columns patient right -> left; slice numbers increase toward the feet (in every
#:   case-day of ``train.csv`` the stomach lies at lower slice numbers than the large
#:   bowel). Hence ``("L", "P", "I")``.
#: * ``"tiff"``: a TIFF stack is assumed to be displayed the same way (axial, radiological,
#:   first slice at the head), as viewers and the UW-Madison data export it.
ASSUMED_AXCODES: dict[str, tuple[str, str, str]] = {"uwmgi": ("L", "P", "I"), "tiff": ("L", "P", "I")}


class FrameGuessWarning(UserWarning):
    """The input's anatomical frame is not in the file; a documented assumption is used."""


def world_frame(volume) -> str:
    """The world frame of ``volume.affine``: ``"RAS"`` (NIfTI), ``"LPS"`` (DICOM),
    ``"none"`` (a format without orientation: TIFF, UW-Madison PNG; see
    :data:`ASSUMED_AXCODES`) or ``"unknown"`` (a bare array or a layer from another
    plugin: no geometry recorded at all)."""
    md = volume.metadata
    cs = md.get("coordinate_system")
    if cs in ("RAS", "LPS"):
        return cs
    fmt = md.get("format")
    if cs is None and fmt == "nifti":
        return "RAS"
    if cs is None and fmt == "dicom":
        return "LPS"
    if cs == "none" or fmt in ASSUMED_AXCODES:
        return "none"
    return "unknown"


def ras_affine(volume) -> np.ndarray | None:
    """``volume.affine`` in NIfTI's RAS+ world frame (source voxel order): a DICOM
    (LPS) affine gets x and y flipped (``diag(-1, -1, 1, 1) @ A``); ``None`` when the
    volume has no anatomical frame (:func:`world_frame` ``"none"``/``"unknown"``)."""
    frame = world_frame(volume)
    if frame == "LPS":
        return LPS_TO_RAS @ volume.affine
    if frame == "RAS":
        return np.asarray(volume.affine, dtype=float)
    return None


def assumed_affine(volume) -> np.ndarray:
    """A RAS affine (source voxel order) for a volume without orientation (TIFF, PNG):
    its axes point along the format's :data:`ASSUMED_AXCODES`, scaled by its spacing,
    origin at 0 mm. The NIfTI writer uses it so a file written from such a volume tells
    other tools the same assumption the engine makes."""
    from nibabel.orientations import axcodes2ornt

    codes = _zyx_from_xyz(
        ASSUMED_AXCODES.get(volume.metadata.get("format", ""), ASSUMED_AXCODES["tiff"]), volume.index_order
    )
    out = np.zeros((4, 4))
    out[3, 3] = 1.0
    for j, (ax, sign) in enumerate(axcodes2ornt(codes)):
        out[int(ax), j] = sign * volume.spacing_mm[j]
    return source_affine(out, volume.index_order)


def zyx_affine(affine, index_order=(2, 1, 0)) -> np.ndarray:
    """The 4x4 matrix mapping ``(z, y, x)`` array indices to the same world point as
    ``affine`` maps the source's voxel indices (``i_src[k] = i_zyx[index_order[k]]``,
    see :class:`~napari_gi_seg.io.volume.Volume`)."""
    a = np.asarray(affine, dtype=float)
    out = np.eye(4)
    out[:, 3] = a[:, 3]
    for k, j in enumerate(index_order):
        out[:3, j] = a[:3, k]
    return out


def array_axcodes(volume, model_axcodes: tuple[str, str, str]) -> tuple[tuple[str, str, str], str | None]:
    """Orientation axis codes of ``volume.data``'s ``(z, y, x)`` axes, and why they are a
    guess (``None`` when they come from the file's affine).

    NIfTI/DICOM: ``nibabel.aff2axcodes`` of the RAS affine in ``(z, y, x)`` order.
    TIFF/UW-Madison: :data:`ASSUMED_AXCODES` of the format. No geometry at all (a bare
    array, a layer from another plugin): the model's own ``model_axcodes`` (x, y, z),
    i.e. the data is taken as stored in the model's frame (the behaviour before frames).
    """
    import nibabel as nib

    frame = world_frame(volume)
    if frame in ("RAS", "LPS"):
        return tuple(nib.aff2axcodes(zyx_affine(ras_affine(volume), volume.index_order))), None  # type: ignore[return-value]
    if frame == "none":
        fmt = volume.metadata.get("format", "")
        codes = ASSUMED_AXCODES.get(fmt, ASSUMED_AXCODES["tiff"])
        why = (
            f"{fmt or 'this'} input has no patient orientation; assumed axial slices displayed radiologically "
            f"(columns to the patient's {_WORD[codes[0]]}, rows to {_WORD[codes[1]]}, slices to {_WORD[codes[2]]}), "
            "see docs/data-formats.md"
        )
        return _zyx_from_xyz(codes, volume.index_order), why
    why = "the input carries no geometry (no affine or coordinate system); assumed to be stored in the model's frame"
    return tuple(reversed(model_axcodes)), why  # type: ignore[return-value]


_WORD = {"L": "left", "R": "right", "A": "anterior", "P": "posterior", "S": "superior", "I": "inferior"}


def _zyx_from_xyz(codes_src, index_order) -> tuple[str, str, str]:
    out = [""] * 3
    for k, j in enumerate(index_order):
        out[j] = codes_src[k]
    return tuple(out)  # type: ignore[return-value]


# --------------------------------------------------------------------------- frame map
class FrameMap:
    """Exact, invertible map between an input ``(z, y, x)`` array and the same voxels
    laid out in a model's frame (axis permutation and flips only; no resampling).

    Built by :func:`frame_map`. ``ornt`` is nibabel's orientation transform
    (``nibabel.orientations.ornt_transform``): row ``i`` = (model axis receiving input
    axis ``i``, +1 or -1 for a flip), in ``(z, y, x)`` array order on both sides.

    Attributes
    ----------
    ornt: ``(3, 2)`` float array (input axis -> model axis, flip).
    input_shape, model_shape: ``(z, y, x)`` shapes before/after.
    input_spacing_mm, model_spacing_mm: ``(z, y, x)`` voxel sizes (mm) before/after.
    input_axcodes, model_axcodes: axis codes of the ``(z, y, x)`` axes before/after.
    guess: why the input's orientation is assumed, or ``None``.
    """

    def __init__(self, ornt, input_shape, input_spacing_mm, input_axcodes, model_axcodes, guess=None):
        self.ornt = np.asarray(ornt, dtype=float)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.input_spacing_mm = tuple(float(s) for s in input_spacing_mm)
        self.input_axcodes = tuple(input_axcodes)
        self.model_axcodes = tuple(model_axcodes)
        self.guess = guess
        dst = [0, 0, 0]
        shp = [0, 0, 0]
        for i, (ax, _) in enumerate(self.ornt):
            dst[int(ax)] = self.input_spacing_mm[i]
            shp[int(ax)] = self.input_shape[i]
        self.model_spacing_mm = tuple(dst)
        self.model_shape = tuple(shp)
        # inverse: model axis ornt[i, 0] goes back to input axis i, with the same flip
        self._inverse = np.zeros((3, 2))
        for i, (ax, flip) in enumerate(self.ornt):
            self._inverse[int(ax)] = (i, flip)

    @property
    def is_identity(self) -> bool:
        """True when the input is already stored in the model's frame."""
        return bool(np.array_equal(self.ornt, [[0, 1], [1, 1], [2, 1]]))

    @property
    def slice_axis_kept(self) -> bool:
        """True when the input's slice axis ``z`` is the model's slice axis (possibly
        reversed), so each input slice is one model slice."""
        return int(self.ornt[0, 0]) == 0

    @property
    def slices_reversed(self) -> bool:
        """True when the model's slices run in the opposite order to the input's."""
        return self.slice_axis_kept and self.ornt[0, 1] < 0

    def model_slices(self, z) -> np.ndarray:
        """Model-frame slice index of each input slice index ``z`` (only when
        :attr:`slice_axis_kept`; raises ``ValueError`` otherwise)."""
        if not self.slice_axis_kept:
            raise InputError("the input's slice axis is not the model's slice axis")
        z = np.asarray(z, dtype=np.int64)
        return self.input_shape[0] - 1 - z if self.slices_reversed else z

    def to_model(self, arr: np.ndarray) -> np.ndarray:
        """``(..., z, y, x)`` input-grid array (last three axes) -> the model's frame."""
        return _apply_last3(arr, self.ornt)

    def from_model(self, arr: np.ndarray) -> np.ndarray:
        """``(..., Z, Y, X)`` model-frame array (last three axes) -> the input's layout."""
        return _apply_last3(arr, self._inverse)

    def inplane_from_model(self, arr):
        """``(..., Y, X)`` model-frame slices (numpy or torch; last two axes) -> the
        input's ``(y, x)`` layout, for an input whose slice axis is kept."""
        if not self.slice_axis_kept:
            raise InputError("the input's slice axis is not the model's slice axis")
        # input axis 1 (y) went to model axis ornt[1, 0] with flip ornt[1, 1]
        if int(self.ornt[1, 0]) == 2:  # in-plane axes swapped
            arr = arr.transpose(-1, -2) if hasattr(arr, "dim") else np.swapaxes(arr, -1, -2)
        flips = [d for d, f in ((-2, self.ornt[1, 1]), (-1, self.ornt[2, 1])) if f < 0]
        if flips:
            arr = arr.flip(flips) if hasattr(arr, "dim") else np.flip(arr, tuple(flips))
        return arr


def _apply_last3(arr: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    from nibabel.orientations import apply_orientation

    arr = np.asarray(arr)
    lead = arr.ndim - 3
    moved = np.moveaxis(arr, list(range(lead, arr.ndim)), [0, 1, 2])
    out = apply_orientation(moved, ornt)
    return np.moveaxis(out, [0, 1, 2], list(range(lead, arr.ndim)))


def frame_map(volume, model_axcodes: tuple[str, str, str]) -> FrameMap:
    """The :class:`FrameMap` that lays ``volume`` out in a model's frame.

    Parameters
    ----------
    volume
        :class:`~napari_gi_seg.io.volume.Volume` (``(z, y, x)`` data, affine in the
        source's voxel order, ``metadata["coordinate_system"]`` ``"RAS"``/``"LPS"``).
    model_axcodes
        The model's axis codes in nibabel voxel-axis order (x, y, z)
        (:attr:`napari_gi_seg.models.spec.ModelFrame.axcodes`), e.g. ``("L", "A", "S")``.

    Returns
    -------
    FrameMap
        Uses ``nibabel.orientations.io_orientation`` on the volume's RAS affine in
        ``(z, y, x)`` order (the closest axis for oblique scans) and
        ``ornt_transform`` to the model's codes. Inputs without orientation use a
        documented assumption (:func:`array_axcodes`); ``FrameMap.guess`` says so.
    """
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    target = tuple(reversed(tuple(model_axcodes)))  # (z, y, x) order
    codes, guess = array_axcodes(volume, tuple(model_axcodes))
    if guess is None:
        start = io_orientation(zyx_affine(ras_affine(volume), volume.index_order))
    else:
        start = axcodes2ornt(codes)
    ornt = ornt_transform(start, axcodes2ornt(target))
    return FrameMap(ornt, volume.shape, volume.spacing_mm, codes, target, guess)


def source_affine(zyx: np.ndarray, index_order=(2, 1, 0)) -> np.ndarray:
    """Inverse of :func:`zyx_affine`: the affine in the source's voxel order."""
    a = np.asarray(zyx, dtype=float)
    out = np.eye(4)
    out[:, 3] = a[:, 3]
    for k, j in enumerate(index_order):
        out[:3, k] = a[:3, j]
    return out


def reorient_volume(volume, axcodes: tuple[str, str, str]):
    """The same anatomy stored in another orientation: a new
    :class:`~napari_gi_seg.io.volume.Volume` whose ``(z, y, x)`` axes have the axis
    codes ``axcodes`` (nibabel voxel-axis order (x, y, z), e.g. ``("R", "A", "S")`` for
    RAS canonical) and whose affine is adjusted (``nibabel.orientations.inv_ornt_aff``)
    so every voxel keeps its world position. The affine stays in the volume's own
    world frame (LPS stays LPS) and in NIfTI voxel order (``index_order = (2, 1, 0)``).

    Raises
    ------
    ValueError
        When the volume has no anatomical frame (TIFF, PNG, bare arrays).
    """
    import dataclasses

    from nibabel.orientations import inv_ornt_aff

    if world_frame(volume) not in ("RAS", "LPS"):
        raise InputError(f"{volume.name}: no anatomical frame to reorient (coordinate system {world_frame(volume)!r})")
    fm = frame_map(volume, axcodes)
    data = np.ascontiguousarray(fm.to_model(volume.data))
    aff_zyx = zyx_affine(volume.affine, volume.index_order) @ inv_ornt_aff(fm.ornt, volume.shape)
    return dataclasses.replace(
        volume,
        data=data,
        spacing_mm=fm.model_spacing_mm,
        affine=source_affine(aff_zyx, (2, 1, 0)),
        index_order=(2, 1, 0),
        metadata=dict(volume.metadata),
        **({"_dicom_ref": None} if hasattr(volume, "_dicom_ref") else {}),  # per-slice DICOM refs no longer apply
    )
