"""Are labels in the image's frame of reference? The one check for every use of labels
drawn on "this" scan: ``segment --adapt`` now, day-N propagation later.

:func:`check_same_frame` refuses labels that belong to another frame of reference:

* DICOM label objects (RTSTRUCT, SEG) and DICOM images carry a ``FrameOfReferenceUID``
  (PS3.3 C.7.4.1: coordinates of two objects are comparable only within one frame).
  The readers keep only its hash (``metadata["frame_of_reference_uid_hash"]``, 16 hex
  digits of sha256; never the UID): where both sides have one, they must be equal. A
  structure set drawn on another series of the patient (another session, another
  scanner) has another UID even when its contours happen to land on this scan's
  slices.
* Files without a frame UID (NIfTI, TIFF) are compared by geometry: the world position
  of the grid's corner voxels (both affines brought to RAS, :func:`.orientation.ras_affine`)
  must agree within :data:`FRAME_TOLERANCE_MM` or half a voxel, whichever is larger.
  A label file from another scan of the same size and spacing but another position or
  orientation is refused. Formats without orientation (``coordinate_system`` ``"none"``)
  cannot be compared and pass.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from .orientation import ras_affine
from .volume import InvalidInputError, Volume

#: World distance (mm) two grids' corner voxels may differ by and still be one frame.
FRAME_TOLERANCE_MM = 1.0


class FrameOfReferenceError(InvalidInputError):
    """Labels drawn in another frame of reference than the image they are used with."""


def _corners_zyx(shape) -> np.ndarray:
    """``(8, 3)`` corner voxel indices ``(z, y, x)`` of a grid."""
    return np.array(list(itertools.product(*[(0, max(0, int(n) - 1)) for n in shape])), float)


def frame_uid_mismatch(image_hash: str, labels_hash: str) -> str | None:
    """Why labels whose ``FrameOfReferenceUID`` hash is ``labels_hash`` do not belong to
    an image with ``image_hash`` (a sentence), or ``None`` when the hashes are equal or
    one is unknown (empty)."""
    if not image_hash or not labels_hash or image_hash == labels_hash:
        return None
    return (
        f"they were drawn in another frame of reference (FrameOfReferenceUID hash {labels_hash} vs the image's "
        f"{image_hash}): another series, session or scanner, whose coordinates do not apply to this scan"
    )


def frame_mismatch(image: Volume, labels: Volume) -> str | None:
    """Why ``labels`` are not in ``image``'s frame of reference (a sentence), or
    ``None`` when they are (or when it cannot be told: no orientation on one side)."""
    hi = image.metadata.get("frame_of_reference_uid_hash")
    hl = labels.metadata.get("frame_of_reference_uid_hash")
    if hi and hl:
        return frame_uid_mismatch(hi, hl)
    a_img, a_lab = ras_affine(image), ras_affine(labels)
    if a_img is None or a_lab is None or tuple(labels.shape) != tuple(image.shape):
        return None
    zyx = _corners_zyx(image.shape)

    def world(a, vol):
        src = np.empty_like(zyx)
        for k in range(3):
            src[:, k] = zyx[:, vol.index_order[k]]
        return (a @ np.c_[src, np.ones(len(src))].T)[:3].T

    d = float(np.linalg.norm(world(a_img, image) - world(a_lab, labels), axis=1).max())
    tol = max(FRAME_TOLERANCE_MM, 0.5 * float(min(image.spacing_mm)))
    if d > tol:
        return (
            f"their grid lies {d:.1f} mm away from the image's in world coordinates (corner voxels; tolerance "
            f"{tol:.1f} mm): drawn on another scan or in another position/orientation"
        )
    return None


def check_same_frame(image: Volume, labels: Volume, source: str | Path | None = None) -> None:
    """Refuse ``labels`` that are not in ``image``'s frame of reference.

    Parameters
    ----------
    image
        The scan the labels are to be used with (``(z, y, x)``, any reader).
    labels
        The label volume as read (:func:`napari_gi_seg.io.read_labels`), on ``image``'s
        grid; for RTSTRUCT and SEG its metadata carries the label object's own frame
        hash.
    source
        The label file, named in the error (default ``labels.metadata["source_path"]``).

    Raises
    ------
    FrameOfReferenceError
        (an :class:`~.volume.InvalidInputError`) naming ``source``: a different
        ``FrameOfReferenceUID``, or a grid more than :data:`FRAME_TOLERANCE_MM` (or
        half a voxel) away in world coordinates (module docstring).
    """
    why = frame_mismatch(image, labels)
    if why is not None:
        src = source if source is not None else labels.metadata.get("source_path", "labels")
        raise FrameOfReferenceError(src, f"labels refused for this scan: {why}")


__all__ = ["check_same_frame", "frame_mismatch", "frame_uid_mismatch", "FrameOfReferenceError", "FRAME_TOLERANCE_MM"]
