"""Overlay pictures in the radiological convention, with a legend of the organs.

Every PNG the project writes of a scan (the ``demo`` overlay, the ``evaluate``
report) shows an axial slice the way the viewer does: anterior at the top, the
patient's right on the picture's left (ACR/DICOM display convention), derived from
the volume's affine by :func:`napari_gi_seg.io.orientation.radiological_orientation2d`,
and names each colour.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..io.volume import Volume

__all__ = ["display_orientation", "to_display", "add_legend"]


def display_orientation(volume: Volume) -> tuple[str, str] | None:
    """napari-style ``(vertical, horizontal)`` orientation that shows ``volume``'s
    axial ``(y, x)`` slices radiologically, or ``None`` when the volume has no
    anatomical frame (``metadata["coordinate_system"] == "none"``: TIFF, PNG).

    Parameters
    ----------
    volume
        The scan; its ``affine``, ``index_order`` and ``metadata["coordinate_system"]``
        (``"RAS"`` when absent, as for NIfTI) are used.
    """
    from ..io.orientation import radiological_orientation2d

    cs = (volume.metadata or {}).get("coordinate_system") or "RAS"
    return radiological_orientation2d(volume.affine, volume.index_order, cs)


def to_display(slice_yx: np.ndarray, orientation: tuple[str, str] | None) -> np.ndarray:
    """A ``(y, x)`` slice flipped so that ``imshow`` (row 0 at the top, column 0 at
    the left) shows it as napari does with ``camera.orientation2d = orientation``.

    Parameters
    ----------
    slice_yx
        ``(y, x)`` array (image or labels).
    orientation
        ``(vertical, horizontal)`` from :func:`display_orientation`; ``None`` leaves
        the slice as stored.

    Returns
    -------
    A ``(y, x)`` view of the same data.
    """
    a = np.asarray(slice_yx)
    if orientation is None:
        return a
    vertical, horizontal = orientation
    if vertical == "up":
        a = a[::-1]
    if horizontal == "left":
        a = a[:, ::-1]
    return a


def add_legend(fig, class_names: Mapping[int, str], colours: Mapping[int, str], extra: Mapping[str, str] | None = None):
    """A legend (one patch per organ in its colour) below the panels of ``fig``.

    Parameters
    ----------
    fig
        A matplotlib figure.
    class_names
        ``{label value: organ name}`` (background 0 is skipped).
    colours
        ``{label value: "#rrggbb"}``.
    extra
        More entries ``{text: colour}`` (e.g. ``{"manual (contour)": "white"}``).

    Returns
    -------
    The matplotlib ``Legend``.
    """
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=colours.get(k, "#ffffff"), edgecolor="none", label=str(v))
        for k, v in sorted(class_names.items())
        if int(k) != 0
    ]
    handles += [Patch(facecolor="none", edgecolor=c, label=t) for t, c in (extra or {}).items()]
    return fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False, fontsize=9)
