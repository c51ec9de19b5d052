"""The one dock: every tool of the plugin as a tab (Segment in front).

napari docks each manifest widget as its own panel; four panels stacked need
about 1130 x 1650 px. :class:`GISegDock` puts the tools (the classes that stay
available one by one in the Plugins menu) into one ``QTabWidget``, each page in a
``QScrollArea`` so that a long form scrolls instead of pushing the dock taller than
a laptop screen (1366 x 768); a dock narrower than a page's minimum width (its
layout's) scrolls sideways rather than cutting the page off.

The pages are the :data:`PAGES` list: a new tool adds its page with one line,
``DockPage("Title", "napari_gi_seg._qt.my_widget:MyWidget", "my_tool", "tooltip")``
(the widget class takes ``(napari_viewer)``, works on the case controller,
:mod:`napari_gi_seg._qt.controller`, and becomes the dock's attribute ``my_tool``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import QFormLayout, QFrame, QScrollArea, QSizePolicy, QStyle, QTabWidget, QVBoxLayout, QWidget

from . import _context as C
from .controller import register_tool


@dataclass(frozen=True)
class DockPage:
    """One tab of the dock.

    Attributes
    ----------
    title : str
        The tab's title.
    widget : str
        ``"module:Class"`` of the page's widget; the class is called with the viewer.
    attribute : str
        Name of the dock attribute holding the widget (``dock.segment``).
    tip : str
        The tab's tooltip.
    """

    title: str
    widget: str
    attribute: str
    tip: str = ""

    def make(self, viewer) -> QWidget:
        """Import and build the page's widget for ``viewer``."""
        mod, _, cls = self.widget.partition(":")
        return getattr(importlib.import_module(mod), cls)(viewer)


#: The dock's pages, in tab order. New tools append one line here.
PAGES: list[DockPage] = [
    DockPage(
        "Segment",
        "napari_gi_seg._qt.segment_widget:SegmentWidget",
        "segment",
        "Run a registered model on an image layer",
    ),
    DockPage(
        "Correct",
        "napari_gi_seg._qt.correct_widget:CorrectWidget",
        "correct",
        "Correction tools, per-slice review (Shift-R / Shift-N / Shift-U), autosave",
    ),
    DockPage(
        "Prompt",
        "napari_gi_seg._qt.prompt_widget:PromptWidget",
        "prompt",
        "Outline any structure with a box, clicks and scribbles; carry it through the stack",
    ),
    DockPage(
        "Export",
        "napari_gi_seg._qt.export_widget:ExportWidget",
        "export",
        "Write the reviewed slices as an nnU-Net v2 training dataset",
    ),
    DockPage(
        "Fine-tune",
        "napari_gi_seg._qt.finetune_widget:FinetuneWidget",
        "finetune",
        "Fine-tune a model on the exported corrections",
    ),
    DockPage(
        "Previous day",
        "napari_gi_seg._qt.propagate_widget:PropagateWidget",
        "propagate",
        "Bring the previous day's contours onto today's scan (image registration)",
    ),
]
#: Tab titles, in order (of the built-in pages).
TABS = tuple(p.title for p in PAGES)
#: Width the dock asks for (px); napari's layer panels take ~320 px on the left,
#: so on a 1366 px wide screen the canvas keeps about half the window or more.
DOCK_WIDTH = 330
#: The narrowest the dock may be (px) when every page is narrower still.
MIN_WIDTH = 240


def _scrolled(widget: QWidget) -> QScrollArea:
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarAsNeeded)
    area.setVerticalScrollBarPolicy(Qt.ScrollBarAsNeeded)
    for form in widget.findChildren(QFormLayout):  # a field too wide for its row goes below its label
        form.setRowWrapPolicy(QFormLayout.WrapLongRows)
    area.setWidget(widget)
    return area


class GISegDock(QWidget):
    """Dock widget holding the plugin's tools as tabs (:data:`PAGES`, Segment in front).

    Parameters
    ----------
    napari_viewer
        The viewer (napari's public proxy or the viewer itself).
    pages : list of DockPage, optional
        The pages (default :data:`PAGES`).

    Attributes
    ----------
    segment, correct, prompt, export, finetune, propagate:
        The :class:`~.segment_widget.SegmentWidget`,
        :class:`~.correct_widget.CorrectWidget`, :class:`~.prompt_widget.PromptWidget`,
        :class:`~.export_widget.ExportWidget`, :class:`~.finetune_widget.FinetuneWidget`
        and :class:`~.propagate_widget.PropagateWidget` inside the tabs (one attribute
        per page, named by :attr:`DockPage.attribute`).
    pages : dict
        ``{title: widget}`` of every page.
    tabs
        The ``QTabWidget``.
    """

    def __init__(self, napari_viewer, parent=None, pages: list[DockPage] | None = None):
        super().__init__(parent)
        self.viewer = C.unwrap(napari_viewer)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.setUsesScrollButtons(True)
        self.pages: dict[str, QWidget] = {}
        for page in PAGES if pages is None else pages:
            w = page.make(self.viewer)
            setattr(self, page.attribute, w)
            self.pages[page.title] = w
            i = self.tabs.addTab(_scrolled(w), page.title)
            self.tabs.setTabToolTip(i, page.tip)
        self.tabs.setCurrentIndex(0)
        # the Fine-tune plot is a fixed-size pixmap; in the dock it follows the page width
        plot = getattr(getattr(self, "finetune", None), "plot_label", None)
        if plot is not None:
            plot.setScaledContents(True)
            plot.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)
            plot.setFixedHeight(220)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.tabs)
        self._fit_minimum_width()
        register_tool(self.viewer, self)

    def _fit_minimum_width(self) -> None:
        """The dock's minimum width: the widest page's minimum (its layout's) plus a
        vertical scroll bar, so napari never squeezes the dock until a page is cut off
        or scrolls sideways; at most :data:`DOCK_WIDTH` (a page wider than that is a
        layout to fix, and ``tests/widgets/test_dock_fit.py`` says so)."""
        bar = self.style().pixelMetric(QStyle.PM_ScrollBarExtent)
        need = max((a.widget().minimumSizeHint().width() for a in self.page_areas().values()), default=0)
        # + a margin: napari's style sheet widens some boxes after the layout measured them
        self.setMinimumWidth(min(max(MIN_WIDTH, need + bar + 12), DOCK_WIDTH))

    def showEvent(self, event) -> None:  # noqa: N802 - Qt name
        """Recompute the minimum width once napari's style sheet sizes the widgets."""
        self._fit_minimum_width()
        super().showEvent(event)
        QTimer.singleShot(0, self._fit_minimum_width)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt name
        """:data:`DOCK_WIDTH` wide (the pages scroll and wrap), whatever the forms ask."""
        return QSize(DOCK_WIDTH, min(super().sizeHint().height(), 600))

    def show_tab(self, title: str) -> None:
        """Bring the tab ``title`` (a :attr:`DockPage.title`) to the front."""
        self.tabs.setCurrentIndex(list(self.pages).index(title))

    def page_areas(self) -> dict[str, QScrollArea]:
        """``{title: scroll area}`` of every page (the viewport a page is seen through)."""
        return {self.tabs.tabText(i): self.tabs.widget(i) for i in range(self.tabs.count())}
