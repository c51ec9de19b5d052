"""Display rules every route through the plugin shares (Qt-free apart from napari).

* A scan with an anatomical frame (its layer ``metadata`` carries ``affine``,
  ``index_order`` and ``coordinate_system``, as :mod:`napari_gi_seg._reader` and the
  sample write them) is shown radiologically: anterior up, the patient's right on
  the screen's left (:func:`napari_gi_seg.io.orientation.radiological_orientation2d`).
* A Labels layer opened beside a case takes the case's (the model's) class names
  and colours (:func:`._context.case_style_for`), not napari's random colours.

A reader cannot reach the camera, so the rules are a ``layers.events.inserted``
listener, installed once per viewer by every dock widget, by the reader and by the
sample-data command (on ``napari.current_viewer()``).
"""

from __future__ import annotations

import weakref

import numpy as np

from ._context import (
    IMAGE_KEY,
    PREDICTION_SUFFIX,
    case_style_for,
    class_names_from_layer,
    get_context,
    style_labels_layer,
)
from ._napari_private import unwrap

_HOOKED: dict[int, weakref.ref] = {}


def display_orientation(layer) -> tuple[str, str] | None:
    """The radiological ``camera.orientation2d`` for a layer read by this plugin
    (its ``metadata`` carries ``affine``, ``index_order``, ``coordinate_system``),
    or ``None`` when the layer has no anatomical frame (TIFF, PNG, plain arrays)."""
    md = getattr(layer, "metadata", None) or {}
    if "affine" not in md or getattr(layer, "ndim", 0) < 3:
        return None
    cs = md.get("coordinate_system") or "RAS"
    try:
        from ..io.orientation import radiological_orientation2d

        return radiological_orientation2d(md["affine"], tuple(md.get("index_order", (2, 1, 0))), cs)
    except (ValueError, TypeError, KeyError, IndexError):
        return None


def show_radiological(viewer, layer) -> bool:
    """Turn the 2D camera so ``layer`` (an image with an anatomical frame) is shown
    radiologically. Returns True when the camera was set."""
    orient = display_orientation(layer)
    if orient is None:
        return False
    unwrap(viewer).camera.orientation2d = orient
    return True


def _on_layer_inserted(viewer, event) -> None:
    from napari.layers import Image, Labels

    layer = unwrap(getattr(event, "value", None))
    try:
        if isinstance(layer, Image):
            show_radiological(viewer, layer)
        elif isinstance(layer, Labels) and layer.ndim == 3 and get_context(layer) is None:
            if not layer.name.endswith(PREDICTION_SUFFIX) and IMAGE_KEY not in (layer.metadata or {}):
                # a blank layer (napari's "new labels" button) keeps napari's colours
                if class_names_from_layer(layer) or np.asarray(layer.data).any():
                    names, colours = case_style_for(viewer, layer)
                    style_labels_layer(layer, names, colours)
    except Exception:  # noqa: BLE001 - display niceties must never break opening a file
        pass


def install_viewer_hooks(viewer) -> None:
    """Install (once per viewer) the plugin's display rules: every image inserted
    with an anatomical frame turns the camera radiological, every Labels layer
    opened beside it takes the case's (or the model's) class names and colours.
    The image layers already in the viewer are shown radiologically now.

    Called by every dock widget, the reader and the sample-data command (on
    ``napari.current_viewer()``), so any route through the plugin gets it."""
    viewer = unwrap(viewer)
    ref = _HOOKED.get(id(viewer))
    if ref is not None and ref() is viewer:
        return
    _HOOKED[id(viewer)] = weakref.ref(viewer)
    wref = weakref.ref(viewer)

    def on_inserted(event, wref=wref):
        v = wref()
        if v is not None:
            _on_layer_inserted(v, event)

    viewer.layers.events.inserted.connect(on_inserted)
    for lyr in reversed(list(viewer.layers)):
        if show_radiological(viewer, lyr):
            break


def hook_current_viewer() -> None:
    """:func:`install_viewer_hooks` on ``napari.current_viewer()`` if there is one
    (the reader and the sample-data command call this; they get no viewer)."""
    import sys

    if "napari" not in sys.modules:  # headless use (CLI, demo --headless): no viewer to hook
        return
    try:
        import napari

        v = napari.current_viewer()
    except Exception:  # noqa: BLE001 - no napari / no Qt: nothing to hook
        return
    if v is not None:
        install_viewer_hooks(v)
