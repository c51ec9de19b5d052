"""Helpers shared by the widget tests (imported by conftest and the tests)."""

from __future__ import annotations

import numpy as np

from _tiny import CHAOS_CLASSES, TINY_NAME, tiny_spec  # noqa: F401  (re-exported for the widget tests)


def wait_worker(qtbot, widget, timeout_ms: int = 120_000) -> None:
    """Block (processing Qt events) until a widget's worker/process has finished."""
    qtbot.waitUntil(lambda: not widget.is_running, timeout=timeout_ms)


PLUGIN = "napari-gi-seg"
DOCK = "GI Seg (all tools)"


def click(qtbot, button) -> None:
    """A real left click on an enabled button."""
    from qtpy.QtCore import Qt

    assert button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.LeftButton)


def open_dock_and_segment(qtbot, make_napari_viewer, image_path, model_key: str):
    """The user's route: a new viewer, ``viewer.open(path, plugin="napari-gi-seg")``,
    the all-tools dock from the Plugins menu (``add_plugin_dock_widget``), the Segment
    page's Run clicked with ``model_key`` on the CPU, waited for. Returns
    ``(viewer, dock)`` (the unwrapped ``GISegDock``)."""
    from napari_gi_seg._qt import _context as C

    viewer = make_napari_viewer()
    viewer.open(str(image_path), plugin=PLUGIN)
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, DOCK)
    qtbot.addWidget(dock)
    dock = C.unwrap(dock)
    seg = dock.segment
    seg.select_model(model_key)
    seg.device_combo.setCurrentText("cpu")
    click(qtbot, seg.run_button)
    wait_worker(qtbot, seg)
    return viewer, dock


def np_equal(a, b) -> bool:
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def qt_binding_leaks_none(n: int = 200) -> bool:
    """True when the Qt binding drops a reference to ``None`` on every call of a
    void method (PySide6 6.12.0 on Python 3.11: ``QLabel.setText`` x 6,500 aborts
    the interpreter with ``none_dealloc``; Python >= 3.12 has an immortal None).
    Needs a QApplication."""
    import sys

    from qtpy.QtWidgets import QLabel

    if sys.version_info >= (3, 12):
        return False
    lab = QLabel()
    before = sys.getrefcount(None)
    for _ in range(n):
        lab.setText("x")
    lab.deleteLater()
    return before - sys.getrefcount(None) >= n * 0.9
