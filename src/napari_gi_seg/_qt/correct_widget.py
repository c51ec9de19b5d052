"""Correct-and-review dock widget.

Layout and wiring over :mod:`napari_gi_seg.curation.corrections` (every tool returns a
``Correction``, applied with
:meth:`~napari_gi_seg._qt.controller.CaseController.write_correction` so napari's
undo/redo covers it),
:mod:`napari_gi_seg.curation.review` (per-slice state, least-confident slice) and
:mod:`napari_gi_seg.curation.session` (autosave every 30 s and on close, restore when the
same image is opened again; answering "No" keeps the earlier session as a dated copy that
*Restore earlier session...* brings back).

Keyboard shortcuts (bound on the viewer; none of them is a napari default):

=========  ==============================================================
Shift-R    mark the current slice reviewed and go to the next unreviewed
Shift-N    go to the next unreviewed slice
Shift-U    go to the least confident unreviewed slice (model entropy)
=========  ==============================================================

``NAPARI_GI_SEG_RESTORE=yes|no`` answers the "restore the saved session?" question
without a dialog (tests, scripted use).
"""

from __future__ import annotations

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import NotFoundError
from . import _context as C
from ._sessions import SessionMixin, _flush_autosavers
from .controller import controller_of, register_tool
from .structures import new_structure_button

AUTOSAVE_MS = 30_000
SHORTCUTS = {
    "Shift-R": "mark the current slice reviewed and go to the next unreviewed",
    "Shift-N": "go to the next unreviewed slice",
    "Shift-U": "go to the least confident unreviewed slice",
}
_STATE_NAMES = ("unseen", "predicted", "edited", "reviewed")


class CorrectWidget(SessionMixin, QWidget):
    """Dock widget: correction tools on the selected class, review state, autosave
    (the session half is :class:`~._sessions.SessionMixin`)."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = C.unwrap(napari_viewer)  # the real viewer, also when napari hands a proxy
        self._ctx: C.CaseContext | None = None
        self._save_worker = None
        self._autosavers: dict[int, object] = {}  # id(ctx) -> Autosaver
        self._autosaver_list: list = []  # same objects, for the close hook
        self._asked: set[str] = set()  # fingerprints already offered for restore

        self.labels_combo = QComboBox()
        self.class_combo = QComboBox()
        for c in (self.labels_combo, self.class_combo):  # long layer names must not widen the dock
            c.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            c.setMinimumContentsLength(10)
        self.z_from = QSpinBox()
        self.z_to = QSpinBox()
        self.from_here = QPushButton("here")
        self.to_here = QPushButton("here")
        row_from, row_to = QHBoxLayout(), QHBoxLayout()
        for row, w in ((row_from, (self.z_from, self.from_here)), (row_to, (self.z_to, self.to_here))):
            for x in w:
                row.addWidget(x)
        for b in (self.from_here, self.to_here):
            b.setToolTip("take the slice shown")
        self.scope_combo = QComboBox()
        self.scope_combo.addItems(["current slice", "range"])
        self.area_spin = QDoubleSpinBox()
        self.area_spin.setRange(0.0, 10000.0)
        self.area_spin.setDecimals(0)  # whole mm²: a narrower box that fits the dock
        self.area_spin.setValue(50.0)
        self.area_spin.setSuffix(" mm²")
        self.sigma_spin = QDoubleSpinBox()
        self.sigma_spin.setRange(0.1, 20.0)
        self.sigma_spin.setDecimals(1)
        self.sigma_spin.setSingleStep(0.5)
        self.sigma_spin.setValue(1.5)
        self.sigma_spin.setSuffix(" mm")

        self.interp_button = QPushButton("Interpolate from -> to")
        self.interp_button.setToolTip("Shape-based interpolation of the class between the 'from' and 'to' slices")
        self.fill_button = QPushButton("Fill holes")
        self.islands_button = QPushButton("Remove islands < min area")
        self.smooth_button = QPushButton("Smooth contour (sigma)")

        tools = QFormLayout()
        tools.addRow("labels", self.labels_combo)
        tools.addRow("class", self.class_combo)
        tools.addRow(new_structure_button(self))  # a structure the model does not know (TG-263 names)
        tools.addRow("from", row_from)
        tools.addRow("to", row_to)
        tools.addRow(self.interp_button)
        tools.addRow("scope", self.scope_combo)
        tools.addRow(self.fill_button)
        tools.addRow("min area", self.area_spin)  # each box a field of its own: fits the dock's width
        tools.addRow(self.islands_button)
        tools.addRow("sigma", self.sigma_spin)
        tools.addRow(self.smooth_button)
        tools_box = QGroupBox("Correct")
        tools_box.setLayout(tools)

        self.state_label = QLabel("")
        self.counts_label = QLabel("")
        for lab in (self.state_label, self.counts_label):  # the counts must not widen the dock
            lab.setWordWrap(True)
        self.review_button = QPushButton("Reviewed, next (Shift-R)")
        self.next_button = QPushButton("Next unreviewed (Shift-N)")
        self.least_button = QPushButton("Least confident (Shift-U)")
        rev = QVBoxLayout()
        rev.addWidget(self.state_label)
        rev.addWidget(self.counts_label)
        for b in (self.review_button, self.next_button, self.least_button):
            rev.addWidget(b)
        review_box = QGroupBox("Review")
        review_box.setLayout(rev)

        self.session_label = QLabel("")
        self.session_label.setWordWrap(True)
        self.save_button = QPushButton("Save session now")
        self.earlier_button = QPushButton("Restore earlier session...")
        self.earlier_button.setToolTip("Sessions of this scan kept when you answered No to restoring them")
        ses = QVBoxLayout()
        ses.addWidget(self.session_label)
        ses.addWidget(self.save_button)
        ses.addWidget(self.earlier_button)
        session_box = QGroupBox("Session (autosaved every 30 s)")
        session_box.setLayout(ses)

        lay = QVBoxLayout(self)
        lay.addWidget(tools_box)
        lay.addWidget(review_box)
        lay.addWidget(session_box)
        from .adapt_panel import AdaptPanel

        self.adapt_panel = AdaptPanel(self.viewer, lambda: self._ctx)  # Adapt to this scan / Keep for this patient
        lay.addWidget(self.adapt_panel)
        lay.addStretch(1)

        self.labels_combo.currentIndexChanged.connect(self._labels_changed)
        self.from_here.clicked.connect(lambda: self.z_from.setValue(self.current_z()))
        self.to_here.clicked.connect(lambda: self.z_to.setValue(self.current_z()))
        self.interp_button.clicked.connect(lambda: self.interpolate())
        self.fill_button.clicked.connect(lambda: self.fill_holes())
        self.islands_button.clicked.connect(lambda: self.remove_islands())
        self.smooth_button.clicked.connect(lambda: self.smooth())
        self.review_button.clicked.connect(lambda: self.mark_reviewed_and_next())
        self.next_button.clicked.connect(lambda: self.go_next_unreviewed())
        self.least_button.clicked.connect(lambda: self.go_least_confident())
        self.save_button.clicked.connect(lambda: self.autosave_now(force=True))
        self.earlier_button.clicked.connect(lambda: self.restore_earlier())

        self.viewer.layers.events.inserted.connect(self._layers_changed)
        self.viewer.layers.events.removed.connect(self._layers_changed)
        self.viewer.dims.events.current_step.connect(self._update_state)
        for key, fn in (
            ("Shift-R", self.mark_reviewed_and_next),
            ("Shift-N", self.go_next_unreviewed),
            ("Shift-U", self.go_least_confident),
        ):
            self.viewer.bind_key(key, lambda v, fn=fn: fn(), overwrite=True)

        self._timer = QTimer(self)
        self._timer.setInterval(AUTOSAVE_MS)
        self._timer.timeout.connect(self.autosave_now)
        self._timer.start()
        self.destroyed.connect(lambda *a, lst=self._autosaver_list: _flush_autosavers(lst))
        from qtpy.QtWidgets import QApplication

        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(lambda lst=self._autosaver_list: _flush_autosavers(lst))

        self._layers_changed()
        for img in C.image_layers(self.viewer):
            self.offer_restore(img)
        register_tool(self.viewer, self)

    # ------------------------------------------------------------------ case
    @property
    def context(self) -> C.CaseContext | None:
        """The case of the selected Labels layer."""
        return self._ctx

    def _layers_changed(self, event=None) -> None:
        from napari.layers import Image

        C.refresh_labels_combo(self.viewer, self.labels_combo, event)
        self._labels_changed()
        if event is not None and getattr(event, "type", "") == "inserted" and isinstance(event.value, Image):
            self.offer_restore(event.value)

    def select_labels(self, layer) -> None:
        """Work on ``layer`` (a Labels layer of the viewer)."""
        self.labels_combo.setCurrentText(layer.name)
        self._labels_changed()

    def _labels_changed(self, *args) -> None:
        name = self.labels_combo.currentText()
        layer = self.viewer.layers[name] if name and name in self.viewer.layers else None
        ctx = C.adopt_labels_layer(self.viewer, layer) if layer is not None else None
        if ctx is not self._ctx:
            if self._ctx is not None:
                try:
                    self._ctx.changed.disconnect(self._on_ctx_changed)
                except (TypeError, ValueError, RuntimeError):
                    pass
            self._ctx = ctx
            if ctx is not None:
                ctx.changed.connect(self._on_ctx_changed)
        self._refresh_classes()
        self._update_state()

    def _refresh_classes(self) -> None:
        current = self.class_combo.currentData()
        self.class_combo.clear()
        ctx = self._ctx
        if ctx is None:
            return
        for idx, name in ctx.foreground_names.items():
            self.class_combo.addItem(f"{idx}: {name}", idx)
        n = ctx.labels_layer.data.shape[0]
        for sb in (self.z_from, self.z_to):
            sb.setRange(0, n - 1)
        if current is not None:
            i = self.class_combo.findData(current)
            if i >= 0:
                self.class_combo.setCurrentIndex(i)

    def select_class(self, class_index: int) -> None:
        """Select the class with label value ``class_index``."""
        i = self.class_combo.findData(int(class_index))
        if i < 0:
            raise NotFoundError(f"class {class_index} is not one of {self._ctx.foreground_names if self._ctx else {}}")
        self.class_combo.setCurrentIndex(i)

    def current_z(self) -> int:
        """The slice shown (z index of the selected Labels layer)."""
        ctx = self._ctx
        if ctx is None:
            return 0
        return C.current_slice(self.viewer, ctx.labels_layer)

    def go_to(self, z: int) -> None:
        """Show slice ``z``."""
        if self._ctx is not None:
            C.set_current_slice(self.viewer, self._ctx.labels_layer, int(z))
            self._update_state()

    # ------------------------------------------------------------------ edits
    def _scope_slices(self) -> list[int]:
        if self.scope_combo.currentText() == "range":
            a, b = sorted((self.z_from.value(), self.z_to.value()))
            return list(range(a, b + 1))
        return [self.current_z()]

    def _apply(self, make) -> object | None:
        """Run a correction function and apply its result through the undo history."""
        from napari.utils.notifications import show_error, show_info

        ctx = self._ctx
        if ctx is None:
            show_error("No labels layer: run Segment first or open a label file.")
            return None
        ctl = controller_of(self.viewer, ctx)
        try:
            corr = make(ctl.labels(), ctx)
        except (ValueError, IndexError) as e:
            show_error(str(e))
            return None
        if corr.is_empty:
            show_info(f"{corr.description or 'correction'}: nothing to change")
            return corr
        ctl.write_correction(corr.changed_coords(), corr.changed_values())  # one undo step, slices EDITED
        return corr

    def _spacing(self, ctx) -> tuple[float, float, float]:
        return tuple(float(s) for s in ctx.labels_layer.scale[-3:])

    def _class(self, class_index):
        return self.class_combo.currentData() if class_index is None else int(class_index)

    def interpolate(self, class_index: int | None = None, z0: int | None = None, z1: int | None = None):
        """Shape-based interpolation of the class between slices ``z0`` and ``z1``
        (default: the 'from'/'to' boxes). Returns the applied ``Correction``."""
        from ..curation.corrections import interpolate_class

        c = self._class(class_index)
        a = self.z_from.value() if z0 is None else int(z0)
        b = self.z_to.value() if z1 is None else int(z1)
        return self._apply(lambda lab, ctx: interpolate_class(lab, c, a, b, spacing_mm=self._spacing(ctx)))

    def fill_holes(self, class_index: int | None = None, slices=None):
        """Fill holes of the class (all classes when the picker is empty) on the scope."""
        from ..curation.corrections import fill_holes

        c = self._class(class_index)
        zs = self._scope_slices() if slices is None else list(slices)
        return self._apply(lambda lab, ctx: fill_holes(lab, zs, c))

    def remove_islands(self, class_index: int | None = None, slices=None, min_area_mm2: float | None = None):
        """Remove 2D islands of the class smaller than the area (mm²) on the scope."""
        from ..curation.corrections import remove_islands

        c = self._class(class_index)
        zs = self._scope_slices() if slices is None else list(slices)
        area = self.area_spin.value() if min_area_mm2 is None else float(min_area_mm2)
        return self._apply(lambda lab, ctx: remove_islands(lab, zs, area, self._spacing(ctx), c))

    def smooth(self, class_index: int | None = None, slices=None, sigma_mm: float | None = None):
        """Gaussian-smooth the class contour (sigma in mm) on the scope."""
        from ..curation.corrections import smooth_contour

        c = self._class(class_index)
        zs = self._scope_slices() if slices is None else list(slices)
        sigma = self.sigma_spin.value() if sigma_mm is None else float(sigma_mm)
        return self._apply(lambda lab, ctx: smooth_contour(lab, zs, sigma, self._spacing(ctx), c))

    # ------------------------------------------------------------------ review
    def mark_reviewed_and_next(self) -> int | None:
        """Mark the current slice REVIEWED and show the next unreviewed one
        (``None`` when every slice is reviewed)."""
        ctx = self._ctx
        if ctx is None:
            return None
        z = self.current_z()
        controller_of(self.viewer, ctx).mark_reviewed(z)
        self._mark_dirty(ctx)
        nxt = ctx.tracker.next_unreviewed(z)
        if nxt is not None:
            self.go_to(nxt)
        return nxt

    def go_next_unreviewed(self) -> int | None:
        """Show the next slice that is not reviewed."""
        ctx = self._ctx
        if ctx is None:
            return None
        nxt = ctx.tracker.next_unreviewed(self.current_z())
        if nxt is not None:
            self.go_to(nxt)
        return nxt

    def go_least_confident(self) -> int | None:
        """Show the unreviewed slice where the model is least sure (highest mean
        normalised entropy, :func:`napari_gi_seg.curation.review.slice_uncertainty`,
        computed per slice by the segmentation worker; here only an argmax over
        ``(z,)`` values)."""
        from napari.utils.notifications import show_info

        ctx = self._ctx
        if ctx is None:
            return None
        u = ctx.uncertainty()
        if u is None:
            show_info("No model probabilities for this case: run Segment first.")
            return self.go_next_unreviewed()
        z = ctx.tracker.least_confident_unreviewed(u)
        if z is not None:
            self.go_to(z)
        return z

    def _on_ctx_changed(self) -> None:
        if self._ctx is not None and self._ctx.image_layer is not None:
            self._mark_dirty(self._ctx)
        self._update_state()

    def _update_state(self, *args) -> None:
        if getattr(self, "adapt_panel", None) is not None:
            self.adapt_panel.refresh()
        ctx = self._ctx
        if ctx is None or ctx.labels_layer is None:
            self.state_label.setText("No case: run Segment or open labels.")
            self.counts_label.setText("")
            return
        z = self.current_z()
        state = _STATE_NAMES[int(ctx.tracker.states[z])]
        u = ctx.uncertainty_at(z)
        extra = f", uncertainty {u:.2f}" if u is not None else ""
        self.state_label.setText(f"slice {z} / {ctx.tracker.n_slices - 1}: <b>{state}</b>{extra}")
        counts = ctx.tracker.counts()
        self.counts_label.setText("  ".join(f"{k} {counts[k]}" for k in ("reviewed", "edited", "predicted", "unseen")))

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt name
        _flush_autosavers(self._autosaver_list)
        super().closeEvent(event)
