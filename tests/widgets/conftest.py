"""Fixtures for the dock-widget tests: a viewer with a CHAOS patient, and a segmented
one (the tiny model ``tiny_key`` and ``chaos_volumes`` come from ``tests/conftest.py``).

The widget tests run under Xvfb (``pytest-xvfb``); napari's canvas does not work
with ``QT_QPA_PLATFORM=offscreen``.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def chaos_image_layer(make_napari_viewer, chaos_volumes):
    """A viewer with CHAOS patient 1 as an image layer (scale = spacing in mm)."""
    viewer = make_napari_viewer()
    image, _ = chaos_volumes
    layer = viewer.add_image(image.data, **image.layer_kwargs())
    return viewer, layer


@pytest.fixture
def segmented(qtbot, chaos_image_layer, tiny_key):
    """Viewer + Segment/Correct widgets after segmenting the whole CHAOS stack with the tiny model (sync)."""
    from napari_gi_seg._qt.correct_widget import CorrectWidget
    from napari_gi_seg._qt.segment_widget import SegmentWidget

    viewer, layer = chaos_image_layer
    seg = SegmentWidget(viewer)
    cor = CorrectWidget(viewer)
    qtbot.addWidget(seg)
    qtbot.addWidget(cor)
    seg.select_model(tiny_key)
    seg.device_combo.setCurrentText("cpu")
    seg.run_sync()
    return viewer, layer, seg, cor
