"""*Adapt to this scan* panel (shown in the Correct and review dock).

Thin over :mod:`napari_gi_seg.training.adaptation` and
:mod:`napari_gi_seg.training.patient_models`:

1. **Adapt to this scan** fine-tunes a copy of the case's model on the slices the
   clinician has REVIEWED (:func:`~napari_gi_seg.training.adaptation.adapt_to_scan`), in
   a napari worker thread with a progress bar and *Cancel*;
2. then re-segments every slice that is neither edited nor reviewed
   (:func:`~napari_gi_seg.training.adaptation.resegment_except`) and writes the result
   into the Labels layer with ``data_setitem``, so one Ctrl-Z in napari undoes it; the
   re-segmented slices go back to PREDICTED. Slices edited or reviewed while the worker
   ran are left alone too.
3. **Keep for this patient** registers the adapted copy as ``patient-<key>``
   (:func:`~napari_gi_seg.training.patient_models.keep_for_patient`), the key being the
   HMAC of the optional patient code or, when empty, of this scan's image fingerprint;
   **Use kept model** finds it again on the next treatment day and selects it in the
   Segment widget.

Progress follows the one protocol (:mod:`napari_gi_seg.progress`): the events cross
from the worker thread to the GUI thread through Qt signals, to napari's activity dock
(:class:`~napari_gi_seg._qt._progress.NapariProgress`) and to the panel's status line.
``NAPARI_GI_SEG_SYNC=1`` runs the job in the calling thread (tests).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
)

from . import _context as C

SYNC_ENV = "NAPARI_GI_SEG_SYNC"


def _job(volume, labels, train_slices, keep, model_key, device, progress, cancel):
    """Worker body: load the model, adapt, re-segment. ``volume``: the scan as a
    :class:`~napari_gi_seg.io.volume.Volume` (its geometry brings it into the model's
    frame). Returns ``(AdaptationResult, ResegmentResult | None)`` (``None`` when
    cancelled during the fine-tune)."""
    from ..engine.inference import resolve_device
    from ..models.registry import load_model
    from ..training import adaptation as A

    dev = resolve_device(device)
    spec, net = load_model(model_key, device="cpu")
    res = A.adapt_to_scan(
        volume, labels, train_slices, spec, net, steps=A.DEFAULT_STEPS, device=dev, progress=progress, cancel=cancel
    )
    if res.cancelled:
        return res, None
    reseg = A.resegment_except(volume, labels, keep, res.spec, res.net, device=dev, progress=progress, cancel=cancel)
    return res, reseg


class AdaptPanel(QGroupBox):
    """Group box with *Adapt to this scan*, *Cancel*, a patient code, *Keep for this
    patient* and *Use kept model*.

    ``get_context()`` returns the current :class:`~napari_gi_seg._qt._context.CaseContext`
    (the Correct widget's). Signals: ``finished(dict)`` with ``{"cancelled": bool,
    "trained_on": [...], "resegmented": [...], "dice_before": float, "dice_after": float}``
    or ``{"error": str}``.
    """

    finished = Signal(object)
    _event = Signal(object)  # worker thread -> main thread

    def __init__(self, viewer, get_context: Callable[[], C.CaseContext | None], parent=None):
        super().__init__("Adapt to this scan", parent)
        self.viewer = viewer
        self._get_context = get_context
        self._worker = None
        self._cancel = False
        self._progress = None
        self._run_ctx = None
        self.result = None  # the last AdaptationResult
        self.kept_entry = None

        self.info_label = QLabel("")
        self.info_label.setWordWrap(True)
        self.adapt_button = QPushButton("Adapt to this scan")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.code_edit = QLineEdit()
        self.code_edit.setPlaceholderText("patient code (optional, never a name; empty: this scan)")
        self.keep_button = QPushButton("Keep for this patient")
        self.keep_button.setEnabled(False)
        self.find_button = QPushButton("Use kept model")
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.adapt_button)
        row.addWidget(self.cancel_button)
        row2 = QHBoxLayout()
        row2.addWidget(self.keep_button)
        row2.addWidget(self.find_button)
        lay = QVBoxLayout(self)
        lay.addWidget(self.info_label)
        lay.addLayout(row)
        lay.addWidget(self.code_edit)
        lay.addLayout(row2)
        lay.addWidget(self.status_label)

        self.adapt_button.clicked.connect(lambda: self.adapt())
        self.cancel_button.clicked.connect(lambda: self.cancel())
        self.keep_button.clicked.connect(lambda: self.keep())
        self.find_button.clicked.connect(lambda: self.use_kept_model())
        self._event.connect(self._on_event)
        self.refresh()

    # ------------------------------------------------------------------ state
    @property
    def is_running(self) -> bool:
        return self._worker is not None

    def _slices(self, ctx) -> tuple[list[int], list[int]]:
        """``(reviewed, edited or reviewed)`` slice indices of the case."""
        from ..curation.review import SliceState

        st = ctx.tracker.states
        reviewed = [int(z) for z in np.flatnonzero(st == SliceState.REVIEWED)]
        touched = [int(z) for z in np.flatnonzero((st == SliceState.REVIEWED) | (st == SliceState.EDITED))]
        return reviewed, touched

    def refresh(self) -> None:
        """Update the read-out (called when the case changes)."""
        ctx = self._get_context()
        if ctx is None or ctx.labels_layer is None:
            self.info_label.setText("Segment an image first.")
            self.adapt_button.setEnabled(False)
            return
        reviewed, touched = self._slices(ctx)
        self.info_label.setText(
            f"Fine-tunes a copy of {ctx.model_key or 'the default model'} on the {len(reviewed)} reviewed slices, "
            f"then re-segments the {ctx.tracker.n_slices - len(touched)} slices not edited or reviewed "
            "(Ctrl-Z undoes it)."
        )
        self.adapt_button.setEnabled(not self.is_running and bool(reviewed))

    # ------------------------------------------------------------------ adapt
    def adapt(self) -> bool:
        """Start the fine-tune (worker thread unless ``NAPARI_GI_SEG_SYNC=1``).
        Returns False (after a notification) when there is nothing to adapt on."""
        from napari.utils.notifications import show_error

        ctx = self._get_context()
        if self.is_running:
            show_error("An adaptation is already running; cancel it first.")
            return False
        if ctx is None or ctx.labels_layer is None or ctx.image_layer is None:
            show_error("Segment an image first: adaptation starts from the case's model.")
            return False
        reviewed, touched = self._slices(ctx)
        if not reviewed:
            show_error("Mark the slices you corrected as reviewed (Shift-R) first; adaptation learns from those.")
            return False
        from ..models.registry import DEFAULT_MODEL

        self._run_ctx = ctx
        self._cancel = False
        self.result = None
        self.keep_button.setEnabled(False)
        from ..io.volume import volume_from_layer_metadata

        layer = ctx.image_layer
        args = (
            volume_from_layer_metadata(np.asarray(layer.data), dict(layer.metadata), layer.scale),
            np.array(ctx.labels_layer.data, copy=True),
            reviewed,
            touched,
            ctx.model_key or DEFAULT_MODEL,
            "auto",
        )
        from ._progress import NapariProgress

        self._progress = NapariProgress("Adapt to this scan:", parent=self)
        self._set_running(True)
        self.status_label.setText(f"Fine-tuning on slices {', '.join(map(str, reviewed))}...")
        if os.environ.get(SYNC_ENV, "") not in ("", "0"):
            self._worker = "sync"
            try:
                out = _job(*args, progress=self._report, cancel=lambda: self._cancel)
            except Exception as e:  # noqa: BLE001 - reported, never a crash
                self._on_error(e)
            else:
                self._on_returned(out)
            return True
        from napari.qt.threading import create_worker

        worker = create_worker(_job, *args, progress=self._report, cancel=lambda: self._cancel, _start_thread=False)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        self._worker = worker
        worker.start()
        return True

    def cancel(self) -> None:
        """Stop after the step (or batch) in progress; nothing is written."""
        self._cancel = True
        self.status_label.setText("Cancelling...")

    def _set_running(self, running: bool) -> None:
        self.adapt_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _report(self, event) -> None:
        """The ``progress`` callback handed to the core (any thread): napari's bars and
        the status line, both updated on the GUI thread through Qt signals."""
        if self._progress is not None:
            self._progress(event)
        self._event.emit(event)

    def _on_event(self, ev) -> None:
        """Status line for a :class:`~napari_gi_seg.progress.ProgressEvent` (GUI thread)."""
        if ev.stage == "step":
            self.status_label.setText(f"Fine-tuning: step {ev.done}/{ev.total}, loss {ev.metrics['loss']:.3f}")
        elif ev.stage == "segment":
            self.status_label.setText(f"Re-segmenting: {ev.done}/{ev.total} slices")

    def _close_progress(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._worker = None
        self._set_running(False)

    def _on_error(self, exc) -> None:
        from napari.utils.notifications import show_error

        self._close_progress()
        show_error(f"Adaptation failed: {exc}")
        self.status_label.setText(f"Failed: {exc}")
        self.finished.emit({"error": str(exc)})

    def _on_returned(self, out) -> None:
        """Write the re-segmented slices through the undo history (main thread)."""
        from ..curation.review import SliceState

        res, reseg = out
        self._close_progress()
        ctx = self._run_ctx
        written: list[int] = []
        if reseg is not None and ctx is not None and ctx.labels_layer is not None:
            st = ctx.tracker.states
            # slices edited or reviewed while the worker ran are the clinician's now
            zs = [z for z in reseg.slices if st[z] not in (SliceState.EDITED, SliceState.REVIEWED)]
            layer = ctx.labels_layer
            cur = np.asarray(layer.data)
            mask = np.zeros(cur.shape, bool)
            mask[zs] = reseg.labels[zs] != cur[zs]
            coords = np.nonzero(mask)
            if coords[0].size:
                layer.data_setitem(coords, reseg.labels[coords])  # one undo step
            ctx.tracker.mark_predicted(zs)  # after the paint event marked them edited
            pred = ctx.prediction_layer
            if pred is not None:
                pred.data[zs] = reseg.labels[zs]
            written = zs
            ctx.changed.emit()
        cancelled = res.cancelled or reseg is None or reseg.cancelled
        if not res.cancelled:
            self.result = res
            self.keep_button.setEnabled(True)
        if cancelled:
            self.status_label.setText("Cancelled: the labels were not changed." if not written else "Cancelled.")
        else:
            self.status_label.setText(
                f"Adapted in {res.seconds:.0f} s on {len(res.slices)} slices (Dice there {res.dice_before:.3f} -> "
                f"{res.dice_after:.3f}); {len(written)} slices re-segmented. Ctrl-Z undoes it."
            )
        self.refresh()
        self.finished.emit(
            {
                "cancelled": cancelled,
                "trained_on": res.slices,
                "resegmented": written,
                "dice_before": res.dice_before,
                "dice_after": res.dice_after,
            }
        )

    # ------------------------------------------------------------------ keep / find
    def _key(self) -> str:
        from ..training.patient_models import patient_key, scan_key

        code = self.code_edit.text().strip()
        if code:
            return patient_key(code)
        ctx = self._run_ctx or self._get_context()
        return scan_key(np.asarray(ctx.image_layer.data))

    def keep(self):
        """Register the last adapted model for this patient; returns its registry entry."""
        from napari.utils.notifications import show_error

        from ..training.patient_models import keep_for_patient

        if self.result is None:
            show_error("Adapt to this scan first.")
            return None
        try:
            entry = keep_for_patient(self.result, self._key())
        except (OSError, ValueError) as e:
            show_error(f"Could not keep the model: {e}")
            return None
        self.kept_entry = entry
        self.status_label.setText(
            f"Kept as {entry.key}. Next treatment day: enter the same patient code and press 'Use kept model', "
            "or pick it in the Segment widget's model list."
        )
        self._refresh_segment_widget()
        return entry

    def use_kept_model(self) -> str | None:
        """Select the newest model kept for this patient (code, or this scan) in the
        Segment widget; returns its key, or ``None`` when there is none."""
        from napari.utils.notifications import show_info

        from ..training.patient_models import find_patient_model

        ctx = self._get_context()
        if not self.code_edit.text().strip() and (ctx is None or ctx.image_layer is None):
            show_info("Enter the patient code (or open this patient's scan) first.")
            return None
        entry = find_patient_model(self._key())
        if entry is None:
            show_info("No model kept for this patient yet.")
            self.status_label.setText("No model kept for this patient yet.")
            return None
        seg = self._refresh_segment_widget()
        if seg is not None:
            seg.select_model(entry.key)
        self.status_label.setText(f"Using {entry.key} (kept for this patient). Run Segment to use it.")
        return entry.key

    def _refresh_segment_widget(self):
        from .segment_widget import SegmentWidget

        seg = C.find_widget(self.viewer, SegmentWidget)
        if seg is not None:
            seg.refresh_models()
        return seg
