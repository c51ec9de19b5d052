"""The demo's Qt part: a napari viewer with the sample and the plugin's dock.
The headless core (load, segment, evaluate, overlay) is :mod:`napari_gi_seg.demo`."""

from __future__ import annotations

#: The manifest name of the one dock (``napari.yaml``).
DOCK_NAME = "GI Seg (all tools)"


def open_demo_viewer(model: str | None = None, device: str = "auto", start: bool = True, show: bool = True):
    """A napari viewer with the CHAOS sample (File > Open Sample's route), the
    plugin's dock (Plugins > GI Seg's route: ``add_plugin_dock_widget``) and
    (``start``) the segmentation running.

    Returns ``(viewer, {name: widget})`` with the dock under ``"GI Seg"`` and its
    tools under ``"Segment"``, ``"Correct and review"``, ``"Export training data"``
    and ``"Fine-tune"``.
    """
    import napari

    from . import _context as C

    viewer = napari.Viewer(title="napari-gi-seg demo", show=show)
    viewer.open_sample("napari-gi-seg", "chaos_t2spir")
    # the sample's manual labels arrive as the hidden "image_1 ground truth" layer
    _, dock = viewer.window.add_plugin_dock_widget("napari-gi-seg", DOCK_NAME)
    dock = C.unwrap(dock)
    widgets = {
        "GI Seg": dock,
        "Segment": dock.segment,
        "Correct and review": dock.correct,
        "Export training data": dock.export,
        "Fine-tune": dock.finetune,
    }
    seg = dock.segment
    if model:
        seg.select_model(model)
    seg.device_combo.setCurrentText(device)
    if start and seg.model_key() is not None:
        seg.run()
    return viewer, widgets
