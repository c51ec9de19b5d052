"""Every page of the "GI Seg (all tools)" dock fits the dock at 1366 x 768 and in
napari's default window (its first-start size: the main window's size hint): no
visible widget reaches past the page's viewport (nothing cut off on the right, no
sideways scrolling), and no button, check box, spin box or unwrapped label is
narrower than its text (no "Brow" for "Browse...", no "her" for "here")."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QPoint
from qtpy.QtWidgets import QAbstractButton, QAbstractSpinBox, QApplication, QLabel, QWidget

from napari_gi_seg._qt.dock import PAGES

pytestmark = pytest.mark.gui


def clipped_widgets(area) -> list[str]:
    """Visible descendants of a page (the widget of the ``QScrollArea`` ``area``) that
    reach past the area's viewport on the right, or whose text does not fit.

    Returns one ``"ClassName 'text': why"`` line per offender (empty: the page fits)."""
    viewport = area.viewport()
    vw = viewport.width()
    out = []
    for w in area.widget().findChildren(QWidget):
        if not w.isVisibleTo(area.widget()) or w.width() <= 0:
            continue
        left = w.mapTo(viewport, QPoint(0, 0)).x()
        name = type(w).__name__
        text = w.text() if hasattr(w, "text") and callable(w.text) else ""
        if left < 0 or left + w.width() > vw:
            out.append(f"{name} {text!r}: x {left}..{left + w.width()} past the viewport's {vw} px")
            continue
        wraps = isinstance(w, QLabel) and (w.wordWrap() or w.hasScaledContents() or w.pixmap() is not None)
        if isinstance(w, (QAbstractButton, QAbstractSpinBox)) or (isinstance(w, QLabel) and not wraps):
            need = w.minimumSizeHint().width()
            if w.width() < need:
                out.append(f"{name} {text!r}: {w.width()} px wide, its text needs {need} px")
    return out


def _default_size(viewer) -> tuple[int, int]:
    """napari's window size on first start (``Window.show`` resizes the main window
    to its layout's size hint when there are no saved settings)."""
    hint = viewer.window._qt_window.layout().sizeHint()
    return hint.width(), hint.height()


def _settle(qtbot, ms: int = 150) -> None:
    QApplication.processEvents()
    qtbot.wait(ms)


def test_every_page_fits_at_laptop_and_default_window_size(make_napari_viewer, qtbot, chaos_image_layer, tiny_key):
    viewer, _ = chaos_image_layer
    default = _default_size(viewer)
    viewer.window._qt_window.show()
    _, dock = viewer.window.add_plugin_dock_widget("napari-gi-seg", "GI Seg (all tools)")
    assert [dock.tabs.tabText(i) for i in range(dock.tabs.count())] == [p.title for p in PAGES]
    # the pages as a user sees them mid-case: segmented, some slices reviewed, one edited
    dock.segment.select_model(tiny_key)
    dock.segment.device_combo.setCurrentText("cpu")
    dock.segment.run_sync()
    ctl = dock.segment.controller
    ctl.mark_reviewed([3, 4, 5])
    ctl.write_correction((np.array([ctl.n_slices // 2]), np.array([5]), np.array([5])), 2)
    dock.correct.select_labels(ctl.labels_layer)
    dock.export._refresh()
    problems = {}
    for size in ((1366, 768), default):
        viewer.window._qt_window.resize(*size)
        _settle(qtbot, 300)
        for title, area in dock.page_areas().items():
            dock.show_tab(title)
            _settle(qtbot)
            assert area.viewport().width() >= 200, f"{title} at {size}: a {area.viewport().width()} px viewport"
            bad = clipped_widgets(area)
            if bad:
                problems[f"{title} at {size[0]} x {size[1]} (viewport {area.viewport().width()} px)"] = bad
    assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())


def test_the_check_fails_on_a_page_too_wide(make_napari_viewer, qtbot):
    """The check is not vacuous: a button wider than the dock is reported."""
    from qtpy.QtWidgets import QPushButton, QVBoxLayout

    from napari_gi_seg._qt.dock import _scrolled

    page = QWidget()
    lay = QVBoxLayout(page)
    lay.addWidget(QPushButton("a button whose text is far wider than a narrow dock can show " * 2))
    area = _scrolled(page)
    qtbot.addWidget(area)
    area.resize(320, 400)
    area.show()
    _settle(qtbot)
    bad = clipped_widgets(area)
    assert bad and all("past the viewport" in b for b in bad), bad
