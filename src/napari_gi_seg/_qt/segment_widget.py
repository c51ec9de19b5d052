"""Segment dock widget: run a registered model on an image layer.

Layout and wiring over :func:`napari_gi_seg.engine.inference.iter_segment` and the
case controller (:mod:`._qt.controller <napari_gi_seg._qt.controller>`): the generator
runs as the controller's job (a napari ``thread_worker``); every yielded batch is
written into the case on the main thread with
:meth:`~napari_gi_seg._qt.controller.CaseController.write_model_output`, so slices
appear as they finish and the viewer stays responsive. Cancel stops the run between
batches; finished slices stay.

Set ``NAPARI_GI_SEG_SYNC=1`` to run in the calling thread (tests, scripts); the
same batch handler is used either way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..constants import DEVICES, SYNC_ENV  # noqa: F401 - SYNC_ENV re-exported for callers
from ..errors import NotFoundError
from . import _context as C
from .controller import CaseController, case_for_image, register_tool

SCOPES = ("current slice", "range", "whole stack")


@dataclass
class SliceBatch:
    """What the worker hands the GUI thread for one batch of slices.

    ``z``: ``(n,)`` slice indices; ``labels``: ``(n, y, x)`` uint8 model output;
    ``uncertainty``: ``(n,)`` float32 per-slice uncertainty
    (:func:`napari_gi_seg.curation.review.slice_uncertainty` with the model's
    activation); ``done``/``total``: slices finished / requested.
    """

    z: np.ndarray
    labels: np.ndarray
    uncertainty: np.ndarray
    done: int
    total: int


@dataclass
class PostProcessed:
    """The post-processing of a finished whole-stack run
    (:func:`napari_gi_seg.engine.postprocess.postprocess_labels`): the voxels it
    changes, as a ``(z, y, x)`` index tuple, and their new labels (uint8, one per
    voxel: background for a removed island, an organ for a reassigned fragment)."""

    changed: tuple
    values: np.ndarray


def _run_model(
    data, model_key: str, slices: Sequence[int], device: str, tta: bool, batch_size: int, progress=None, cancel=None
) -> Iterator:
    """Load the model and yield a :class:`SliceBatch` per batch, then, when every
    slice of the stack was segmented, one :class:`PostProcessed` (runs in the worker
    thread: the uncertainty and the connected components are computed here, the
    GUI thread only writes the results)."""
    from ..curation.review import slice_uncertainty
    from ..engine.inference import iter_segment, resolve_device
    from ..engine.postprocess import postprocess_labels
    from ..models.registry import load_model
    from ..progress import emit

    dev = resolve_device(device)
    spec, net = load_model(model_key, device=dev)
    whole = sorted(set(int(z) for z in slices)) == list(range(data.shape[0]))
    full = np.zeros(data.shape, dtype=np.uint8) if whole else None
    done = 0
    for b in iter_segment(
        data,
        spec,
        net,
        slices=slices,
        batch_size=batch_size,
        device=dev,
        tta=tta,
        return_probs=True,
        cancel=cancel,
    ):
        unc = slice_uncertainty(np.moveaxis(b.probs, 1, 0), spec.activation)
        if full is not None:
            full[b.z] = b.labels
        done = b.done
        emit(progress, "segment", b.done, b.total)
        yield SliceBatch(z=np.asarray(b.z), labels=b.labels, uncertainty=unc, done=b.done, total=b.total)
    if full is not None and done == data.shape[0] and not (cancel is not None and cancel()):
        kept = postprocess_labels(full, spec)
        idx = np.nonzero(kept != full)
        yield PostProcessed(changed=idx, values=kept[idx])


class SegmentWidget(QWidget):
    """Dock widget: image layer, model (with its classes), device, scope, TTA, Run/Cancel.

    Results go to ``"<image> segmentation"`` (editable, the model's class names and
    colours, the image's scale; written through napari's undo history) and to the
    hidden ``"<image> prediction"`` layer; the worker computes the per-slice
    uncertainty ``(z,)`` (kept in the case context for the Correct widget's
    least-confident jump) and, after a whole-stack run, the same post-processing as
    the CLI (:func:`napari_gi_seg.engine.postprocess.postprocess_labels`). Slices the
    clinician has already edited or reviewed are not overwritten unless *overwrite
    edited/reviewed slices* is ticked.

    Signals: ``run_finished(dict)`` with ``{"model": key, "slices": [...],
    "cancelled": bool}``.
    """

    run_finished = Signal(object)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = C.unwrap(napari_viewer)  # the real viewer, also when napari hands a proxy
        self._job = None
        self._ctl: CaseController | None = None
        self._pending: list[int] = []
        self._done: list[int] = []
        self._overwrite = False
        self._run_key: str | None = None

        self.image_combo = QComboBox()
        self.model_combo = QComboBox()
        for c in (self.image_combo, self.model_combo):  # long layer names must not widen the dock
            c.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            c.setMinimumContentsLength(10)
        self.classes_label = QLabel()
        self.classes_label.setWordWrap(True)
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.scope_combo = QComboBox()
        self.scope_combo.addItems(SCOPES)
        self.scope_combo.setCurrentText("whole stack")
        self.z_from = QSpinBox()
        self.z_to = QSpinBox()
        rng = QHBoxLayout()
        rng.addWidget(QLabel("from"))
        rng.addWidget(self.z_from)
        rng.addWidget(QLabel("to"))
        rng.addWidget(self.z_to)
        self.range_row = QWidget()
        self.range_row.setLayout(rng)
        self.tta_check = QCheckBox("left-right flip TTA")
        self.overwrite_check = QCheckBox("overwrite edited/reviewed slices")
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 128)
        self.batch_spin.setValue(8)
        self.run_button = QPushButton("Segment")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)

        form = self._form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("model", self.model_combo)
        form.addRow("classes", self.classes_label)
        form.addRow("device", self.device_combo)
        form.addRow("scope", self.scope_combo)
        form.addRow("slices", self.range_row)
        form.addRow("batch", self.batch_spin)
        form.addRow(self.tta_check)
        form.addRow(self.overwrite_check)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.status_label)
        lay.addStretch(1)

        self.model_combo.currentIndexChanged.connect(self._show_classes)
        self.scope_combo.currentTextChanged.connect(self._scope_changed)
        self.image_combo.currentIndexChanged.connect(self._image_changed)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self.viewer.layers.events.changed.connect(self._refresh_images)

        # napari imports pandas lazily for a Labels layer's `features`; importing it
        # here (when the widget is docked) keeps that second out of the Segment click.
        # segmentation-models-pytorch is imported here too, after the guard against
        # triton's LLVM clashing with Mesa's (see _compat), so that the first model
        # load in the worker thread imports nothing heavy.
        import pandas  # noqa: F401

        from ._compat import guard_triton_llvm_clash

        guard_triton_llvm_clash()
        import segmentation_models_pytorch  # noqa: F401

        self._refresh_images()
        self.refresh_models()
        self._scope_changed(self.scope_combo.currentText())
        register_tool(self.viewer, self)

    # ------------------------------------------------------------------ choices
    def _refresh_images(self, event=None) -> None:
        current = self.image_combo.currentText()
        names = [lyr.name for lyr in C.image_layers(self.viewer)]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        self._image_changed()

    def _image_changed(self, *args) -> None:
        layer = self.image_layer()
        n = int(layer.data.shape[0]) if layer is not None else 1
        for sb in (self.z_from, self.z_to):
            sb.setRange(0, max(0, n - 1))
        if self.z_to.value() == 0:
            self.z_to.setValue(max(0, n - 1))

    def image_layer(self):
        """The selected image layer, or ``None``."""
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def refresh_models(self) -> list[str]:
        """Re-read the model registry (bundled + user models); keeps the selection
        when it still exists, else selects the default model. Returns the keys."""
        from ..models.registry import DEFAULT_MODEL, list_models

        current = self.model_key()
        entries = list_models()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for e in entries:
            try:
                spec = e.spec()
            except ValueError:
                continue
            tip = ", ".join(c.name for c in spec.classes)
            self.model_combo.addItem(e.key + ("" if e.bundled else "  (user)"), e.key)
            self.model_combo.setItemData(self.model_combo.count() - 1, tip, Qt.ToolTipRole)
        keys = [self.model_combo.itemData(i) for i in range(self.model_combo.count())]
        self.model_combo.blockSignals(False)
        if current in keys:
            self.select_model(current)
        else:
            defaults = [k for k in keys if k.split(":")[0] == DEFAULT_MODEL]
            if defaults:
                self.select_model(defaults[-1])
        self._show_classes()
        self.run_button.setEnabled(bool(keys))
        if not keys:
            self.status_label.setText(
                "No model registered: train one (napari-gi-seg train) or install the bundled model."
            )
        return keys

    def select_model(self, key: str) -> None:
        """Select the model ``"name:version"`` (``"name"``: its newest version).

        Raises ``LookupError`` when it is not in the list (call
        :meth:`refresh_models` after registering a new model)."""
        keys = [self.model_combo.itemData(i) for i in range(self.model_combo.count())]
        if key not in keys:
            same = sorted((k for k in keys if k.split(":")[0] == key), key=lambda k: int(k.split(":")[1]))
            if not same:
                raise NotFoundError(f"model {key!r} is not registered; known: {', '.join(keys) or 'none'}")
            key = same[-1]
        self.model_combo.setCurrentIndex(keys.index(key))
        self._show_classes()

    def model_key(self) -> str | None:
        """``"name:version"`` of the selected model, or ``None``."""
        return self.model_combo.currentData()

    def _spec(self):
        from ..models.registry import get_entry

        key = self.model_key()
        return None if key is None else get_entry(key).spec()

    def _show_classes(self, *args) -> None:
        try:
            spec = self._spec()
        except (LookupError, ValueError) as e:
            self.classes_label.setText(str(e))
            return
        if spec is None:
            self.classes_label.setText("")
            return
        self._update_tta(spec)
        html = " ".join(f'<span style="color:{c.colour}">&#9632;</span>&nbsp;{c.name}' for c in spec.classes)
        self.classes_label.setText(
            html
            + f"<br><small>{spec.architecture}/{spec.encoder}, {spec.input_size[0]} px, 2.5D {list(spec.context_offsets)}</small>"
        )

    def _update_tta(self, spec) -> None:
        """Offer flip TTA only for a model trained with left-right flips."""
        ok = bool(spec.flip_augmented)
        if not ok:
            self.tta_check.setChecked(False)
        self.tta_check.setEnabled(ok)
        self.tta_check.setToolTip(
            "Average the prediction with that of the left-right mirrored slice (about 2x slower)."
            if ok
            else f"Unavailable: {spec.key} was trained without left-right flips, so a mirrored "
            "abdomen is new to it and flip TTA would lower its accuracy (pick a model trained with flips)."
        )

    def _scope_changed(self, text: str) -> None:
        show = text == "range"
        self.range_row.setVisible(show)
        label = self._form.labelForField(self.range_row)
        if label is not None:
            label.setVisible(show)

    def target_slices(self) -> list[int]:
        """Slice indices (z) of the chosen scope for the selected image."""
        layer = self.image_layer()
        if layer is None:
            return []
        n = int(layer.data.shape[0])
        scope = self.scope_combo.currentText()
        if scope == "current slice":
            return [C.current_slice(self.viewer, layer)]
        if scope == "range":
            a, b = sorted((self.z_from.value(), self.z_to.value()))
            return list(range(a, min(b, n - 1) + 1))
        return list(range(n))

    # ------------------------------------------------------------------ running
    @property
    def is_running(self) -> bool:
        return self._job is not None and self._job.is_running

    @property
    def context(self) -> C.CaseContext | None:
        """The case of the last run."""
        return self._ctl.case if self._ctl is not None else None

    @property
    def controller(self) -> CaseController | None:
        """The :class:`~napari_gi_seg._qt.controller.CaseController` of the last run."""
        return self._ctl

    def _prepare(self):
        """Validate the choices and create the case layers; returns the generator
        arguments or ``None`` (after a notification) when something is missing."""
        from napari.utils.notifications import show_error, show_warning

        from ..engine.domain import input_warnings

        if self.is_running:
            show_error("A segmentation is already running; cancel it first.")
            return None
        layer = self.image_layer()
        if layer is None:
            show_error("Open an image first (File > Open, or the CHAOS sample).")
            return None
        if layer.data.ndim != 3:
            show_error(f"{layer.name}: expected a 3D (z, y, x) stack, got shape {tuple(layer.data.shape)}")
            return None
        key = self.model_key()
        if key is None:
            show_error("No model selected.")
            return None
        try:
            from ..engine.inference import resolve_device

            resolve_device(self.device_combo.currentText())
            spec = self._spec()
        except (LookupError, ValueError) as e:
            show_error(str(e))
            return None
        slices = self.target_slices()
        ctl = case_for_image(self.viewer, layer, spec.class_names, {c.index: c.colour for c in spec.classes}, key)
        ctx = ctl.case
        C.ensure_prediction_layer(self.viewer, ctx)
        if ctx.activation != spec.activation:
            ctx.slice_uncertainty = None  # another kind of model: old figures do not compare
        ctx.activation = spec.activation
        ctl.show_case()
        self._ctl = ctl
        self._run_key = key
        self._pending = list(slices)
        self._done = []
        self._overwrite = self.overwrite_check.isChecked()
        # the layer's geometry (affine, axis order, world frame) travels with the data:
        # the engine segments in the model's frame and warns about unusual inputs
        data = ctl.image_volume()
        for w in input_warnings(data, spec):
            show_warning(f"{layer.name}: {w}")
        return data, key, slices, self.device_combo.currentText(), self.tta_check.isChecked(), self.batch_spin.value()

    def run(self, sync: bool | None = None) -> None:
        """Start segmenting: the controller's job (a worker thread unless ``sync`` or
        ``NAPARI_GI_SEG_SYNC=1``)."""
        args = self._prepare()
        if args is None:
            return
        from napari.utils.notifications import show_error

        from ..errors import ConflictError

        self._set_running(True)
        try:
            self._job = self._ctl.run(
                _run_model,
                *args,
                title=f"Segmenting {self._ctl.image_layer.name}",
                on_yielded=self._on_batch,
                on_errored=self._on_error,
                on_finished=self._on_finished,
                sync=sync,
                parent=self,
            )
        except ConflictError as e:
            self._set_running(False)
            show_error(str(e))

    def run_sync(self) -> None:
        """Segment in the calling thread (same batch handler as the worker path)."""
        self.run(sync=True)

    def cancel(self) -> None:
        """Stop after the batch in progress; finished slices stay."""
        if self._job is not None:
            self._job.cancel()
        self.status_label.setText("Cancelling after the current batch...")

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        for w in (self.image_combo, self.model_combo, self.device_combo, self.scope_combo):
            w.setEnabled(not running)

    def _on_batch(self, batch) -> None:
        """Write one worker result into the case (main thread) with
        :meth:`~napari_gi_seg._qt.controller.CaseController.write_model_output`:
        only where the output differs, one undo step (Ctrl-Z takes a batch back),
        not counted as an edit; edited and reviewed slices are skipped unless
        *overwrite* was ticked when the run started."""
        ctl = self._ctl
        if ctl is None or ctl.labels_layer is None:
            return
        if isinstance(batch, PostProcessed):
            ctl.write_model_voxels(batch.changed, batch.values, overwrite=self._overwrite)
            return
        z = [int(v) for v in batch.z]
        ctl.case.set_uncertainty(z, batch.uncertainty)
        ctl.write_model_output(z, batch.labels, overwrite=self._overwrite)
        self._done.extend(z)
        if self.is_running:  # a late batch never overwrites the final status
            self.status_label.setText(f"{batch.done}/{batch.total} slices segmented")

    def _on_error(self, exc) -> None:
        from napari.utils.notifications import show_error

        from .controller import error_text

        what = error_text(exc)
        show_error(f"Segmentation failed: {what}")
        self.status_label.setText(f"Failed: {what}")

    def _on_finished(self) -> None:
        cancelled = len(set(self._done)) < len(set(self._pending))
        self._set_running(False)
        if cancelled:
            self.status_label.setText(f"Cancelled: {len(self._done)}/{len(self._pending)} slices segmented (kept).")
        elif self._done:
            self.status_label.setText(f"Done: {len(set(self._done))} slices with {self._run_key}.")
        ctx = self.context
        if ctx is not None and ctx.labels_layer is not None:
            ctx.labels_layer.refresh()
            ctx.changed.emit()
        self.run_finished.emit({"model": self._run_key, "slices": sorted(self._done), "cancelled": cancelled})
