"""Volumes to SimpleITK images and back: geometry in one world frame (LPS mm).

A :class:`~napari_gi_seg.io.volume.Volume` stores its ``(z, y, x)`` array and the
source file's affine (RAS for NIfTI, LPS for DICOM, none for TIFF/PNG; see
:mod:`napari_gi_seg.io.orientation`). SimpleITK indexes ``(x, y, z)`` and maps an index
to a physical point by ``origin + direction @ diag(spacing) @ index``
(ITK Software Guide, section 4.1.4 "Defining origin and spacing"). Both scans of a
registration are put in LPS, the frame ITK and DICOM use.
"""

from __future__ import annotations

import numpy as np

from ..io.orientation import LPS_TO_RAS, assumed_affine, ras_affine, world_frame, zyx_affine

__all__ = ["world_zyx_affine", "to_sitk", "sitk_threads", "smooth_resample"]


def world_zyx_affine(volume) -> np.ndarray:
    """The 4x4 matrix mapping ``(z, y, x)`` indices of ``volume`` to LPS mm.

    A volume without an anatomical frame (TIFF, PNG) gets the format's documented
    assumption (:func:`~napari_gi_seg.io.orientation.assumed_affine`), as the NIfTI
    writer does; two such volumes then share that assumed frame.
    """
    ras = ras_affine(volume)
    if ras is None:
        ras = assumed_affine(volume) if world_frame(volume) == "none" else np.asarray(volume.affine, float)
    lps = np.linalg.inv(LPS_TO_RAS) @ ras
    return zyx_affine(lps, volume.index_order)


def to_sitk(array: np.ndarray, zyx_world: np.ndarray, pixel_type=None):
    """A SimpleITK image of the ``(z, y, x)`` ``array`` on the grid ``zyx_world``
    (4x4, ``(z, y, x)`` index -> LPS mm, e.g. :func:`world_zyx_affine`).

    Spacing is the length of each axis' column; direction the unit columns in
    SimpleITK's ``(x, y, z)`` order.
    """
    import SimpleITK as sitk

    arr = np.ascontiguousarray(array)
    img = sitk.GetImageFromArray(arr if pixel_type is None else arr.astype(pixel_type))
    cols = np.asarray(zyx_world, float)[:3, [2, 1, 0]]  # x, y, z index axes
    spacing = np.linalg.norm(cols, axis=0)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in (cols / spacing).ravel()])
    img.SetOrigin([float(v) for v in np.asarray(zyx_world, float)[:3, 3]])
    return img


class sitk_threads:
    """Context manager: SimpleITK's global default thread count set to ``n`` (ITK's
    default is every core, which on a shared 2-core machine only adds contention)."""

    def __init__(self, n: int):
        self.n = max(1, int(n))

    def __enter__(self):
        import SimpleITK as sitk

        self._old = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(self.n)
        return self

    def __exit__(self, *exc):
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(self._old)


def smooth_resample(img, spacing_mm: tuple[float, float, float]):
    """``img`` resampled (linear) onto the same field of view with SimpleITK-order
    ``spacing_mm`` (x, y, z) wherever that is coarser than the image's, after a Gaussian
    of sigma = half the new spacing along each coarsened axis (anti-aliasing)."""
    import SimpleITK as sitk

    old = np.asarray(img.GetSpacing(), float)
    new = np.maximum(old, np.asarray(spacing_mm, float))
    if np.allclose(new, old):
        return img
    sig = [float(0.5 * n) if n > o * 1.01 else 0.0 for n, o in zip(new, old)]
    sm = sitk.SmoothingRecursiveGaussian(img, [max(s, 1e-3) for s in sig]) if max(sig) > 0 else img
    size = [max(2, int(round(s * o / n))) for s, o, n in zip(img.GetSize(), old, new)]
    # the same physical extent (centre of the first voxel moved by half the change of spacing)
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    origin = np.asarray(img.GetOrigin()) + d @ ((new - old) / 2.0)
    return sitk.Resample(
        sm,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        origin.tolist(),
        new.tolist(),
        img.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )
