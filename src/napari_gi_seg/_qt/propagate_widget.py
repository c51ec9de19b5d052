"""Bring the previous day's contours: propagation in the dock.

The clinician picks today's image layer, the previous day's scan and its labels or
RTSTRUCT; :func:`napari_gi_seg.propagation.propagate` runs as a job of the controller's
runner (:func:`._qt.controller.run_job`: a napari ``thread_worker``, progress in the
activity dock, Cancel between registration stages, sync mode for tests). The result goes
into the case's Labels layer through the case controller
(:meth:`~.controller.CaseController.write_model_output`: one undo step, slices marked
PREDICTED, not reviewed; edited and reviewed slices are kept).

Per structure the clinician chooses the model's labels or the propagated contour.
Default (:func:`default_source`): the model's where the case already has the model's
labels of that structure, the propagated contour otherwise; on the benchmark
(docs/benchmarks.md, "Propagation") the registration did not beat the bundled model on
the organs it knows, and propagation is the only first pass for structures no model has.
"""

from __future__ import annotations

import os

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import InputError
from . import _context as C

#: Registration choices shown in the widget -> stages.
STAGE_CHOICES = {
    "automatic": None,
    "rigid -> affine -> B-spline": ("rigid", "affine", "bspline"),
    "rigid -> affine": ("rigid", "affine"),
    "rigid": ("rigid",),
    "none (scanner coordinates)": (),
}
SOURCES = ("propagated", "model")


def default_source(name: str, model_names: set[str]) -> str:
    """``"model"`` when the case's current labels hold the model's ``name``, else
    ``"propagated"`` (see the module docstring for why)."""
    return "model" if name in model_names else "propagated"


def _work(prev_path: str, labels_path: str, today, stages, progress=None, cancel=None):
    """The worker body: read the previous scan and labels, propagate (any thread)."""
    from ..io import read_image
    from ..propagation import RegistrationSettings, default_settings, propagate, read_previous_labels

    vols = [v for v in read_image(prev_path) if not v.metadata.get("is_labels")]
    if len(vols) != 1:
        raise InputError(f"{prev_path}: holds {len(vols)} image series; choose the folder of one series")
    labels = read_previous_labels(labels_path, vols[0])
    settings = default_settings(vols[0], today) if stages is None else RegistrationSettings(stages=stages)
    return propagate(vols[0], labels, today, settings=settings, progress=progress, cancel=cancel)


class PropagateWidget(QWidget):
    """ "Bring the previous day's contours" (one page of the GI Seg dock).

    Attributes
    ----------
    image_combo, prev_edit, labels_edit, stages_combo, run_button, cancel_button,
    apply_button, status_label:
        The controls (tests drive them).
    choices
        ``{structure name: QComboBox}`` "propagated"/"model", built after a run.
    result
        The last :class:`~napari_gi_seg.propagation.PropagationResult`, or ``None``.
    """

    finished = Signal(object)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = C.unwrap(napari_viewer)
        self.result = None
        self.choices: dict[str, QComboBox] = {}
        self._job = None
        self._ctx = None
        self._model_labels: np.ndarray | None = None
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("Today's scan (an image layer)")
        form.addRow("Today:", self.image_combo)
        self.prev_edit, prev_row = self._path_row("Previous day's scan: DICOM series folder, NIfTI or TIFF", True)
        form.addRow("Previous scan:", prev_row)
        self.labels_edit, lab_row = self._path_row("Its labels: NIfTI, TIFF, RTSTRUCT (.dcm) or DICOM-SEG", False)
        form.addRow("Its contours:", lab_row)
        self.stages_combo = QComboBox()
        self.stages_combo.addItems(list(STAGE_CHOICES))
        self.stages_combo.setToolTip(
            "automatic: two scans of one session (one Frame of Reference) are registered with itk-elastix "
            "when it is installed, else carried by scanner coordinates; another day: SimpleITK rigid -> "
            "affine -> B-spline. The other choices run SimpleITK's stages: deformable (B-spline) follows "
            "the organs, rigid only moves the whole scan, none keeps the scanner coordinates."
        )
        form.addRow("Registration:", self.stages_combo)
        lay.addLayout(form)
        row = QHBoxLayout()
        self.run_button = QPushButton("Bring contours")
        self.run_button.setToolTip("Register the previous scan to today's and carry its contours over")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        lay.addLayout(row)
        self.choice_form = QFormLayout()
        lay.addLayout(self.choice_form)
        self.apply_button = QPushButton("Apply choices")
        self.apply_button.setToolTip("Write the chosen source per structure (one undo step)")
        self.apply_button.setEnabled(False)
        lay.addWidget(self.apply_button)
        self.status_label = QLabel("Choose the previous day's scan and contours.")
        self.status_label.setWordWrap(True)
        lay.addWidget(self.status_label)
        lay.addStretch(1)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.apply_button.clicked.connect(self.apply_choices)
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self._refresh_images()
        C.register_widget(self.viewer, self)

    def _path_row(self, tip: str, folder: bool):
        edit = QLineEdit()
        edit.setToolTip(tip)
        button = QPushButton("...")
        button.setFixedWidth(32)
        button.setToolTip("Browse")

        def browse():
            if folder:
                p = QFileDialog.getExistingDirectory(self, tip)
            else:
                p, _ = QFileDialog.getOpenFileName(self, tip)
            if p:
                edit.setText(p)

        button.clicked.connect(browse)
        w = QWidget()
        h = QHBoxLayout(w)
        h.setContentsMargins(0, 0, 0, 0)
        h.addWidget(edit)
        h.addWidget(button)
        return edit, w

    def _refresh_images(self, event=None) -> None:
        current = self.image_combo.currentText()
        names = [lyr.name for lyr in C.image_layers(self.viewer)]
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)

    def image_layer(self):
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    @property
    def is_running(self) -> bool:
        return self._job is not None and self._job.is_running

    # ------------------------------------------------------------------ run
    def _prepare(self):
        from napari.utils.notifications import show_error

        from ..io.volume import volume_from_layer_metadata

        layer = self.image_layer()
        prev, labels = self.prev_edit.text().strip(), self.labels_edit.text().strip()
        problem = None
        if self.is_running:
            problem = "Propagation is already running; cancel it first."
        elif layer is None or layer.data.ndim != 3:
            problem = "Open today's scan (a 3D image) first."
        elif not prev or not os.path.exists(prev):
            problem = f"{prev or 'Previous scan'}: not found; choose the previous day's scan."
        elif not labels or not os.path.exists(labels):
            problem = f"{labels or 'Contours'}: not found; choose the previous day's labels or RTSTRUCT."
        if problem:
            show_error(problem)
            self.status_label.setText(problem)
            return None
        today = volume_from_layer_metadata(np.asarray(layer.data), dict(layer.metadata), layer.scale)
        return prev, labels, today, STAGE_CHOICES[self.stages_combo.currentText()]

    def run(self) -> None:
        """Propagate as a job (a worker thread; the calling thread with
        ``NAPARI_GI_SEG_SYNC=1``)."""
        args = self._prepare()
        if args is None:
            return
        from .controller import run_job

        self._set_running(True)
        self.status_label.setText("Registering the previous scan to today's...")
        self._job = run_job(
            _work,
            *args,
            title="Previous day's contours:",
            on_returned=self._on_result,
            on_errored=self._on_error,
            on_finished=self._on_finished,
            parent=self,
        )

    def cancel(self) -> None:
        """Stop at the next registration step; nothing is written."""
        if self._job is not None:
            self._job.cancel()
        self.status_label.setText("Cancelling...")

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_error(self, exc) -> None:
        from napari.utils.notifications import show_error

        show_error(f"Propagation failed: {exc}")
        self.status_label.setText(f"Failed: {exc}")

    def _on_finished(self) -> None:
        self._set_running(False)

    def _on_result(self, result) -> None:
        if result.cancelled:
            self.status_label.setText("Cancelled: nothing written.")
            return
        self.result = result
        layer = self.image_layer()
        names = dict(result.labels.metadata.get("class_names") or {})
        names = {int(k): str(v) for k, v in names.items() if int(k) != 0}
        for v in np.unique(result.labels.data):
            if v and int(v) not in names:
                names[int(v)] = f"structure_{int(v)}"
        ctx = C.find_case(self.viewer, layer)
        if ctx is None:
            ctx = C.ensure_case(self.viewer, layer, names, C.colours_for_names(names))
            self._model_labels = None
        else:
            self._model_labels = np.asarray(ctx.labels_layer.data).copy()
        self._ctx = ctx
        model_names = set()
        if self._model_labels is not None and ctx.model_key:
            present = {int(v) for v in np.unique(self._model_labels)}
            model_names = {n for v, n in ctx.class_names.items() if v in present and v != 0}
        while self.choice_form.rowCount():
            self.choice_form.removeRow(0)
        self.choices = {}
        for name in names.values():
            combo = QComboBox()
            combo.addItems(list(SOURCES))
            combo.setCurrentText(default_source(name, model_names))
            if name not in model_names:
                combo.setEnabled(False)  # nothing of the model's to choose
            self.choice_form.addRow(f"{name}:", combo)
            self.choices[name] = combo
        self._names = names
        zs = self.apply_choices()
        s = result.summary()
        self.status_label.setText(
            f"Brought {len(names)} structures onto {len(zs)} slices ({'+'.join(s['stages']) or 'no registration'}, "
            f"{s['seconds']:.0f} s, folded {100 * s['folded_fraction']:.2f} %). Slices are predicted, not reviewed."
        )
        self.finished.emit(result)

    def apply_choices(self) -> list[int]:
        """Write the chosen source per structure into the case's labels through the
        case controller (one undo step); edited and reviewed slices are kept. Returns the
        slices marked PREDICTED."""
        from .controller import controller_of

        ctx, result = self._ctx, self.result
        if ctx is None or result is None or ctx.labels_layer is None:
            return []
        case_value = {n: v for v, n in ctx.class_names.items()}
        for _, n in sorted(self._names.items()):
            if n not in case_value:
                case_value[n] = max(ctx.class_names) + 1
                ctx.class_names[case_value[n]] = n
                ctx.colours.update(C.colours_for_names({case_value[n]: n}))
        C.style_labels_layer(ctx.labels_layer, ctx.class_names, ctx.colours)
        base = self._model_labels if self._model_labels is not None else np.asarray(ctx.labels_layer.data)
        new = base.copy()
        prop = result.labels.data
        for v, n in self._names.items():
            if self.choices[n].currentText() != "propagated":
                continue
            cv = case_value[n]
            new[new == cv] = 0
            new[prop == v] = cv
        # the slices the contours reach, and those where a choice takes something away
        changed = (new != np.asarray(ctx.labels_layer.data)).any(axis=(1, 2))
        zs = sorted({int(z) for z in np.nonzero(prop.any(axis=(1, 2)) | changed)[0]})
        written = controller_of(self.viewer, ctx).write_model_output(zs, new[zs], prediction=False)
        self.apply_button.setEnabled(bool(self.choices))
        return written
