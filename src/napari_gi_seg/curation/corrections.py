"""Correction tools for label volumes (GUI-free).

Every tool is a pure function: it reads a ``(z, y, x)`` uint8 label volume, never
modifies it, and returns a :class:`Correction` that holds the changed slices before
and after. The napari widget applies a correction through the layer's undo history
with ``layer.data_setitem(c.changed_coords(), c.changed_values())``; a Python user
calls :meth:`Correction.apply`.

Conventions shared by all tools
-------------------------------
* Axis order ``(z, y, x)``; ``spacing_mm`` is ``(z, y, x)`` (or ``(y, x)``) in mm.
  Everything works slice by slice in the ``(y, x)`` plane, because abdominal MRI is
  anisotropic (CHAOS T2-SPIR: 1.25 x 1.25 mm in-plane, 7.7 mm between slices).
* ``class_index=None`` means "every foreground class present on the slice".
* **Painting policy**: a tool removes pixels of a class by setting them to
  background (0) and adds pixels to a class only where the slice was background.
  Pixels of *other* classes are never overwritten, so a tool run on the liver
  cannot eat into the right kidney.
* ``Correction.z`` lists only the slices that actually changed (possibly none).

Algorithms (all from :mod:`scipy.ndimage`) and their sources are described in
``docs/corrections.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError

__all__ = [
    "Correction",
    "interpolate_class",
    "fill_holes",
    "remove_islands",
    "smooth_contour",
    "signed_distance",
]


@dataclass
class Correction:
    """The effect of one correction on a label volume.

    Attributes
    ----------
    z
        Indices of the slices that changed, ascending.
    before, after:
        ``(n, y, x)`` uint8, those slices before and after the correction
        (``n == len(z)``).
    description
        Short human-readable summary, e.g. ``"fill holes: class 1 on 3 slices"``.
    """

    z: list[int]
    before: np.ndarray
    after: np.ndarray
    description: str = field(default="")

    def __post_init__(self) -> None:
        self.z = [int(v) for v in self.z]
        if self.before.shape != self.after.shape or self.before.ndim != 3 or self.before.shape[0] != len(self.z):
            raise InputError(
                f"Correction needs before/after of shape (len(z), y, x); got z={len(self.z)}, "
                f"before {self.before.shape}, after {self.after.shape}"
            )

    @property
    def is_empty(self) -> bool:
        """True when nothing changes."""
        return not bool(np.any(self.before != self.after))

    @property
    def n_changed(self) -> int:
        """Number of voxels whose label changes."""
        return int(np.count_nonzero(self.before != self.after))

    def changed_coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(zz, yy, xx)`` int64 index arrays of the voxels that differ, in C order
        (the same order as :meth:`changed_values`)."""
        n, yy, xx = np.nonzero(self.before != self.after)
        zz = np.asarray(self.z, dtype=np.int64)[n] if len(self.z) else n.astype(np.int64)
        return zz, yy, xx

    def changed_values(self) -> np.ndarray:
        """New label values (uint8) at :meth:`changed_coords`."""
        return self.after[self.before != self.after]

    def apply(self, labels: np.ndarray) -> None:
        """Write the change into ``labels`` ``(z, y, x)`` in place."""
        if len(self.z):
            labels[self.changed_coords()] = self.changed_values()

    def inverse(self) -> Correction:
        """The correction that undoes this one."""
        return Correction(list(self.z), self.after.copy(), self.before.copy(), f"undo {self.description}".strip())


# ----------------------------------------------------------------------------- helpers


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"labels must be a 3D (z, y, x) array, got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise InputError(f"labels must be an integer array, got dtype {labels.dtype}")
    return labels


def _check_slices(labels: np.ndarray, slices: Sequence[int] | int) -> list[int]:
    if isinstance(slices, (int, np.integer)):
        slices = [int(slices)]
    zs = sorted({int(z) for z in slices})
    bad = [z for z in zs if not 0 <= z < labels.shape[0]]
    if bad:
        raise InputError(f"slice(s) {bad} out of range 0..{labels.shape[0] - 1}")
    return zs


def _inplane_spacing(spacing_mm: Sequence[float] | None) -> tuple[float, float]:
    if spacing_mm is None:
        return (1.0, 1.0)
    sp = [float(s) for s in spacing_mm]
    if len(sp) not in (2, 3) or min(sp) <= 0 or not all(np.isfinite(sp)):
        raise InputError(f"spacing_mm must be 2 or 3 positive numbers ((z,) y, x), got {spacing_mm}")
    return (sp[-2], sp[-1])


def _classes(slice_: np.ndarray, class_index: int | None) -> list[int]:
    if class_index is not None:
        if not 1 <= int(class_index) <= 255:
            raise InputError(f"class_index must be a foreground label 1..255, got {class_index}")
        return [int(class_index)]
    return [int(c) for c in np.unique(slice_) if c != 0]


def _build(labels: np.ndarray, zs: Iterable[int], new: dict[int, np.ndarray], description: str) -> Correction:
    keep = [z for z in zs if z in new and np.any(new[z] != labels[z])]
    y, x = labels.shape[1:]
    if keep:
        before = np.stack([np.asarray(labels[z], dtype=np.uint8) for z in keep])
        after = np.stack([new[z].astype(np.uint8) for z in keep])
    else:
        before = np.zeros((0, y, x), np.uint8)
        after = np.zeros((0, y, x), np.uint8)
    return Correction(keep, before, after, description)


def _paint(orig: np.ndarray, out: np.ndarray, c: int, mask: np.ndarray) -> None:
    """Painting policy: class ``c`` pixels outside ``mask`` -> 0; ``mask`` pixels that
    were background in ``orig`` (and still are in ``out``) -> ``c``."""
    out[(orig == c) & ~mask] = 0
    out[mask & (orig == 0) & (out == 0)] = c


# ----------------------------------------------------------------------------- tools


def _per_class_slices(
    labels: np.ndarray,
    zs: Sequence[int],
    class_index: int | None,
    edit: Callable[[np.ndarray, np.ndarray, int], None],
    title: str,
) -> Correction:
    """Run ``edit(orig, out, c)`` for each class ``c`` present on each slice ``z`` of
    ``zs`` (``orig`` the slice as it was, ``out`` its uint8 copy to change in place)
    and collect the changed slices into a :class:`Correction` described by ``title``."""
    new = {}
    for z in zs:
        orig = labels[z]
        out = np.array(orig, dtype=np.uint8, copy=True)
        for c in _classes(orig, class_index):
            edit(orig, out, c)
        new[z] = out
    what = "all classes" if class_index is None else f"class {class_index}"
    return _build(labels, zs, new, f"{title}: {what}")


def signed_distance(mask: np.ndarray, spacing_yx: Sequence[float] = (1.0, 1.0)) -> np.ndarray:
    """Signed Euclidean distance map (mm) of a 2D ``(y, x)`` boolean mask: negative
    inside, positive outside, computed with :func:`scipy.ndimage.distance_transform_edt`
    sampled at the in-plane spacing ``spacing_yx`` (mm).

    Inside pixels get ``-(distance to the nearest outside pixel)``, outside pixels
    ``+(distance to the nearest inside pixel)``, so the object boundary lies at 0
    (Herman, Zheng & Bucholtz 1992).
    """
    mask = np.asarray(mask, bool)
    sampling = tuple(float(s) for s in spacing_yx)
    if not mask.any():
        raise InputError("signed distance of an empty mask is undefined")
    if mask.all():
        return -ndi.distance_transform_edt(np.pad(mask, 1, constant_values=False), sampling=sampling)[1:-1, 1:-1]
    inside = ndi.distance_transform_edt(mask, sampling=sampling)
    outside = ndi.distance_transform_edt(~mask, sampling=sampling)
    return (outside - inside).astype(np.float32)


def interpolate_class(
    labels: np.ndarray,
    class_index: int,
    z0: int,
    z1: int,
    spacing_mm: Sequence[float] | None = None,
) -> Correction:
    """Shape-based interpolation of one class between two edited slices.

    The class masks on slices ``z0`` and ``z1`` are turned into signed distance maps
    (:func:`signed_distance`, in mm when ``spacing_mm`` is given, else in pixels);
    for each slice ``z`` strictly between them the maps are blended linearly with
    weight ``t = (z - z0) / (z1 - z0)`` and the class is where the blend is < 0
    (Raya & Udupa 1990; Herman, Zheng & Bucholtz 1992).

    Parameters
    ----------
    labels: ``(z, y, x)`` integer labels (not modified).
    class_index: the foreground class to interpolate (1..255).
    z0, z1: the two edited slices, ``z0 < z1`` (swapped if given the other way).
    spacing_mm: ``(z, y, x)`` or ``(y, x)`` voxel size in mm; only the in-plane part
        is used (the EDT sampling), so anisotropic pixels interpolate correctly.

    Returns
    -------
    Correction over slices ``z0+1 .. z1-1`` (only those that change). Painting
    policy: class pixels outside the interpolated shape become background, the
    interpolated shape paints the class only over background; other classes are
    untouched.

    Raises
    ------
    ValueError
        ``z0 == z1`` or adjacent slices (nothing in between), a slice out of range, or
        ``class_index`` absent from slice ``z0`` or ``z1``.
    """
    labels = _check_labels(labels)
    z0, z1 = int(z0), int(z1)
    if z0 > z1:
        z0, z1 = z1, z0
    _check_slices(labels, [z0, z1])
    if z1 - z0 < 2:
        raise InputError(f"slices {z0} and {z1} have no slice between them to interpolate")
    c = _classes(labels[z0], class_index)[0]
    m0, m1 = labels[z0] == c, labels[z1] == c
    for z, m in ((z0, m0), (z1, m1)):
        if not m.any():
            raise InputError(f"class {c} is not drawn on slice {z}; draw it on both end slices first")
    sp = _inplane_spacing(spacing_mm)
    d0, d1 = signed_distance(m0, sp), signed_distance(m1, sp)
    new = {}
    for z in range(z0 + 1, z1):
        t = (z - z0) / (z1 - z0)
        mask = ((1.0 - t) * d0 + t * d1) < 0
        out = np.array(labels[z], dtype=np.uint8, copy=True)
        _paint(labels[z], out, c, mask)
        new[z] = out
    return _build(labels, range(z0 + 1, z1), new, f"interpolate class {c} between slices {z0} and {z1}")


def fill_holes(labels: np.ndarray, slices: Sequence[int], class_index: int | None = None) -> Correction:
    """Fill holes of each class on each slice (2D).

    A hole is a background region not connected to the slice border through
    background, found with :func:`scipy.ndimage.binary_fill_holes` (4-connected
    background, i.e. its default cross structure). Holes are filled only where the
    slice is background: an island of another class inside the liver stays.

    Parameters
    ----------
    labels: ``(z, y, x)`` integer labels (not modified).
    slices: slice indices to process.
    class_index: one class, or ``None`` for every class on the slice.

    Raises ``ValueError`` for slices out of range.
    """
    labels = _check_labels(labels)
    zs = _check_slices(labels, slices)

    def edit(orig, out, c):
        m = orig == c
        if m.any():
            out[ndi.binary_fill_holes(m) & (orig == 0) & (out == 0)] = c

    return _per_class_slices(labels, zs, class_index, edit, "fill holes")


def remove_islands(
    labels: np.ndarray,
    slices: Sequence[int],
    min_area_mm2: float,
    spacing_mm: Sequence[float] | None,
    class_index: int | None = None,
) -> Correction:
    """Remove small islands: 2D connected components of a class smaller than
    ``min_area_mm2`` become background.

    Components are found per class per slice with :func:`scipy.ndimage.label` using
    8-connectivity (pixels touching at a corner belong together); a component's
    area is its pixel count times the pixel area ``spacing_y * spacing_x`` (mm²).

    Parameters
    ----------
    labels: ``(z, y, x)`` integer labels (not modified).
    slices: slice indices to process.
    min_area_mm2: components with area strictly below this (mm²) are removed.
    spacing_mm: ``(z, y, x)`` or ``(y, x)`` in mm (``None`` -> 1 mm pixels).
    class_index: one class, or ``None`` for every class on the slice.

    Raises ``ValueError`` for a negative area or slices out of range.
    """
    labels = _check_labels(labels)
    zs = _check_slices(labels, slices)
    if not np.isfinite(min_area_mm2) or min_area_mm2 < 0:
        raise InputError(f"min_area_mm2 must be >= 0, got {min_area_mm2}")
    sy, sx = _inplane_spacing(spacing_mm)
    min_px = float(min_area_mm2) / (sy * sx)
    structure = ndi.generate_binary_structure(2, 2)

    def edit(orig, out, c):
        comp, n = ndi.label(orig == c, structure=structure)
        if n == 0:
            return
        sizes = np.bincount(comp.ravel())
        small = np.nonzero(sizes < min_px)[0]
        small = small[small != 0]
        if small.size:
            out[np.isin(comp, small)] = 0

    return _per_class_slices(labels, zs, class_index, edit, f"remove islands < {min_area_mm2:g} mm²")


def smooth_contour(
    labels: np.ndarray,
    slices: Sequence[int],
    sigma_mm: float,
    spacing_mm: Sequence[float] | None,
    class_index: int | None = None,
) -> Correction:
    """Smooth each class's contour on each slice.

    The binary mask of the class is blurred with :func:`scipy.ndimage.gaussian_filter`
    (standard deviation ``sigma_mm`` converted to pixels per in-plane axis, so the
    blur is isotropic in mm) and re-thresholded at 0.5: bumps and notches narrower
    than about ``sigma_mm`` disappear while the area stays nearly the same. Painting
    policy as in the module docstring (additions only over background).

    Parameters
    ----------
    labels: ``(z, y, x)`` integer labels (not modified).
    slices: slice indices to process.
    sigma_mm: Gaussian standard deviation in mm (> 0).
    spacing_mm: ``(z, y, x)`` or ``(y, x)`` in mm (``None`` -> 1 mm pixels).
    class_index: one class, or ``None`` for every class on the slice.

    Raises ``ValueError`` for a non-positive sigma or slices out of range.
    """
    labels = _check_labels(labels)
    zs = _check_slices(labels, slices)
    if not np.isfinite(sigma_mm) or sigma_mm <= 0:
        raise InputError(f"sigma_mm must be > 0, got {sigma_mm}")
    sy, sx = _inplane_spacing(spacing_mm)
    sigma_px = (float(sigma_mm) / sy, float(sigma_mm) / sx)

    def edit(orig, out, c):
        m = orig == c
        if m.any():
            sm = ndi.gaussian_filter(m.astype(np.float32), sigma=sigma_px, mode="constant") >= 0.5
            _paint(orig, out, c, sm)

    return _per_class_slices(labels, zs, class_index, edit, f"smooth contour (sigma {sigma_mm:g} mm)")
