"""The demo's Qt part: a napari viewer with the sample and the plugin's widgets.
The headless core (load, segment, evaluate, overlay) is :mod:`napari_gi_seg.demo`."""

from __future__ import annotations

import numpy as np


def open_demo_viewer(model: str | None = None, device: str = "auto", start: bool = True, show: bool = True):
    """A napari viewer with the CHAOS sample, the four widgets docked and (``start``)
    the segmentation running. Returns ``(viewer, {name: widget})``."""
    import napari

    from .._sample_data import chaos_sample
    from ..io.orientation import radiological_orientation2d
    from .correct_widget import CorrectWidget
    from .export_widget import ExportWidget
    from .finetune_widget import FinetuneWidget
    from .segment_widget import SegmentWidget

    viewer = napari.Viewer(title="napari-gi-seg demo", show=show)
    image_name = None
    for data, kw, kind in chaos_sample():
        kw = dict(kw)
        if kind == "labels":
            kw["name"] = f"{image_name or 'image'} ground truth"
            kw["visible"] = False
            viewer.add_labels(data, **kw)
        else:
            image_name = kw.get("name")
            layer = viewer.add_image(data, **kw)
            orient = radiological_orientation2d(
                layer.metadata.get("affine", np.eye(4)),
                layer.metadata.get("index_order", (2, 1, 0)),
                layer.metadata.get("coordinate_system", "RAS"),
            )
            if orient is not None:
                viewer.camera.orientation2d = orient
    widgets = {
        "Segment": SegmentWidget(viewer),
        "Correct and review": CorrectWidget(viewer),
        "Export training data": ExportWidget(viewer),
        "Fine-tune": FinetuneWidget(viewer),
    }
    docks = {
        name: viewer.window.add_dock_widget(w, name=name, area="right", tabify=name != "Segment")
        for name, w in widgets.items()
    }
    docks["Segment"].raise_()
    seg = widgets["Segment"]
    if model:
        seg.select_model(model)
    seg.device_combo.setCurrentText(device)
    if start and seg.model_key() is not None:
        seg.run()
    return viewer, widgets
