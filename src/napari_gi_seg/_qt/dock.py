"""The one dock: Segment, Correct and review, Export, Fine-tune and Previous day as tabs.

napari docks each manifest widget as its own panel; four panels stacked need
about 1130 x 1650 px. :class:`GISegDock` puts the same four widgets (the classes
that stay available one by one in the Plugins menu) into one ``QTabWidget``,
Segment in front, each page in a ``QScrollArea`` so that a long form scrolls
instead of pushing the dock taller than a laptop screen (1366 x 768).
"""

from __future__ import annotations

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy, QTabWidget, QVBoxLayout, QWidget

from . import _context as C

#: Tab titles, in order.
TABS = ("Segment", "Correct", "Export", "Fine-tune", "Previous day")
#: Width the dock asks for (px); napari's layer panels take ~320 px on the left,
#: so on a 1366 px wide screen the canvas keeps about half the window or more.
DOCK_WIDTH = 330


def _scrolled(widget: QWidget) -> QScrollArea:
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # pages follow the dock width
    area.setWidget(widget)
    return area


class GISegDock(QWidget):
    """Dock widget holding the plugin's four tools as tabs (Segment in front).

    Parameters
    ----------
    napari_viewer
        The viewer (napari's public proxy or the viewer itself).

    Attributes
    ----------
    segment, correct, export, finetune, propagate:
        The :class:`~.segment_widget.SegmentWidget`,
        :class:`~.correct_widget.CorrectWidget`, :class:`~.export_widget.ExportWidget`,
        :class:`~.finetune_widget.FinetuneWidget` and
        :class:`~.propagate_widget.PropagateWidget` inside the tabs.
    tabs
        The ``QTabWidget``.
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        from .correct_widget import CorrectWidget
        from .export_widget import ExportWidget
        from .finetune_widget import FinetuneWidget
        from .propagate_widget import PropagateWidget
        from .segment_widget import SegmentWidget

        self.viewer = C.unwrap(napari_viewer)
        self.segment = SegmentWidget(self.viewer)
        self.correct = CorrectWidget(self.viewer)
        self.export = ExportWidget(self.viewer)
        self.finetune = FinetuneWidget(self.viewer)
        self.propagate = PropagateWidget(self.viewer)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        tips = (
            "Run a registered model on an image layer",
            "Correction tools, per-slice review (Shift-R / Shift-N / Shift-U), autosave",
            "Write the reviewed slices as an nnU-Net v2 training dataset",
            "Fine-tune a model on the exported corrections",
            "Bring the previous day's contours onto today's scan (image registration)",
        )
        pages = (self.segment, self.correct, self.export, self.finetune, self.propagate)
        for title, w, tip in zip(TABS, pages, tips):
            i = self.tabs.addTab(_scrolled(w), title)
            self.tabs.setTabToolTip(i, tip)
        self.tabs.setCurrentIndex(0)
        # the Fine-tune plot is a fixed-size pixmap; in the dock it follows the page width
        plot = getattr(self.finetune, "plot_label", None)
        if plot is not None:
            plot.setScaledContents(True)
            plot.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)
            plot.setFixedHeight(220)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.tabs)
        self.setMinimumWidth(240)
        C.register_widget(self.viewer, self)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt name
        """:data:`DOCK_WIDTH` wide (the pages scroll and wrap), whatever the forms ask."""
        return QSize(DOCK_WIDTH, min(super().sizeHint().height(), 600))

    def show_tab(self, title: str) -> None:
        """Bring the tab ``title`` (one of :data:`TABS`) to the front."""
        self.tabs.setCurrentIndex(TABS.index(title))
