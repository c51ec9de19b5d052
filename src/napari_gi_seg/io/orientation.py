"""Orientation and frame logic: how a volume's voxel axes lie in the patient.

Axis codes follow nibabel's convention (``("R", "A", "S")`` means the first axis
increases toward the patient's Right, ...; :mod:`nibabel.orientations`).
"""

from __future__ import annotations

import numpy as np


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
