"""*Adapt to this scan* panel (shown in the Correct and review dock).

Layout and wiring over :mod:`napari_gi_seg.training.adaptation`,
:mod:`napari_gi_seg.training.patient_models` and the case controller
(:mod:`napari_gi_seg._qt.controller`):

1. **Adapt to this scan** fine-tunes a copy of the case's model on the slices the
   clinician has REVIEWED (:func:`~napari_gi_seg.training.adaptation.adapt_to_scan`), as
   the controller's job (a napari worker thread, a progress bar, *Cancel*);
2. when the copy scores at least as well as the original on those reviewed slices, it
   re-segments every slice that is neither edited nor reviewed
   (:func:`~napari_gi_seg.training.adaptation.resegment_except`) and the result goes into
   the case with :meth:`~napari_gi_seg._qt.controller.CaseController.write_model_output`
   (one Ctrl-Z undoes it; slices edited or reviewed while the worker ran are left
   alone). When the copy scores **worse**, nothing is applied: the panel says so, the
   original labels stay (the default), and *Apply anyway* re-segments with the copy
   only when the user asks.
3. **Keep for this patient** registers the applied copy as ``patient-<key>``
   (:func:`~napari_gi_seg.training.patient_models.keep_for_patient`), the key being the
   HMAC of the optional patient code or, when empty, of this scan's image fingerprint;
   **Use kept model** finds it again on the next treatment day and selects it in the
   Segment widget.

``NAPARI_GI_SEG_SYNC=1`` runs the jobs in the calling thread (tests).
"""

from __future__ import annotations

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

from ..constants import SYNC_ENV  # noqa: F401 - re-exported for callers
from . import _context as C
from .controller import controller_of


def _adapt_job(volume, labels, train_slices, keep, model_key, device, progress=None, cancel=None):
    """Job body: load the model, adapt, and re-segment when the copy is not worse on
    the reviewed slices. ``volume``: the scan as a :class:`~napari_gi_seg.io.volume.Volume`
    (its geometry brings it into the model's frame). Returns ``(AdaptationResult,
    ResegmentResult | None)`` (``None``: cancelled during the fine-tune, or the copy
    scored worse)."""
    from ..engine.inference import resolve_device
    from ..models.registry import load_model
    from ..training import adaptation as A

    dev = resolve_device(device)
    spec, net = load_model(model_key, device="cpu")
    res = A.adapt_to_scan(
        volume, labels, train_slices, spec, net, steps=A.DEFAULT_STEPS, device=dev, progress=progress, cancel=cancel
    )
    if res.cancelled or _worse(res):
        return res, None
    return _reseg_job(volume, labels, keep, res, device, progress=progress, cancel=cancel)


def _reseg_job(volume, labels, keep, res, device, progress=None, cancel=None):
    """Job body: re-segment every slice but ``keep`` with the adapted copy ``res``."""
    from ..engine.inference import resolve_device
    from ..training import adaptation as A

    dev = resolve_device(device)
    return res, A.resegment_except(
        volume, labels, keep, res.spec, res.net, device=dev, progress=progress, cancel=cancel
    )


def _worse(res) -> bool:
    """The adapted copy scored lower than the original on the reviewed slices."""
    return bool(np.isfinite(res.dice_before) and np.isfinite(res.dice_after) and res.dice_after < res.dice_before)


class AdaptPanel(QGroupBox):
    """Group box with *Adapt to this scan*, *Cancel*, *Apply anyway* (after a worse
    copy), a patient code, *Keep for this patient* and *Use kept model*.

    ``get_context()`` returns the current :class:`~napari_gi_seg._qt._context.CaseContext`
    (the Correct widget's). Signals: ``finished(dict)`` with ``{"cancelled": bool,
    "trained_on": [...], "resegmented": [...], "dice_before": float, "dice_after": float,
    "worse": bool}`` or ``{"error": str}``.
    """

    finished = Signal(object)

    def __init__(self, viewer, get_context: Callable[[], C.CaseContext | None], parent=None):
        super().__init__("Adapt to this scan", parent)
        self.viewer = viewer
        self._get_context = get_context
        self._job = None
        self._run_ctl = None
        self.result = None  # the last AdaptationResult
        self.applied = False  # the last result was written into the labels
        self.kept_entry = None

        self.info_label = QLabel("")
        self.info_label.setWordWrap(True)
        self.adapt_button = QPushButton("Adapt to this scan")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.apply_button = QPushButton("Apply anyway")
        self.apply_button.setToolTip("Re-segment the other slices with the adapted copy although it scored worse")
        self.apply_button.setVisible(False)
        self.code_edit = QLineEdit()
        self.code_edit.setPlaceholderText("patient code (optional, no name)")
        self.code_edit.setToolTip("Optional patient code (never a name); empty: this scan")
        self.keep_button = QPushButton("Keep for this patient")
        self.keep_button.setToolTip("Register the adapted copy for this patient (next treatment day)")
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
        lay.addWidget(self.apply_button)
        lay.addWidget(self.code_edit)
        lay.addLayout(row2)
        lay.addWidget(self.status_label)

        self.adapt_button.clicked.connect(lambda: self.adapt())
        self.cancel_button.clicked.connect(lambda: self.cancel())
        self.apply_button.clicked.connect(lambda: self.apply_anyway())
        self.keep_button.clicked.connect(lambda: self.keep())
        self.find_button.clicked.connect(lambda: self.use_kept_model())
        self.refresh()

    # ------------------------------------------------------------------ state
    @property
    def is_running(self) -> bool:
        return self._job is not None and self._job.is_running

    def _controller(self):
        ctx = self._get_context()
        return None if ctx is None or ctx.labels_layer is None else controller_of(self.viewer, ctx)

    @staticmethod
    def _slices(ctl) -> tuple[list[int], list[int]]:
        """``(reviewed, protected = edited or reviewed)`` slice indices of the case."""
        return ctl.tracker.reviewed_slices(), sorted(ctl.protected_slices())

    def refresh(self) -> None:
        """Update the read-out (called when the case changes)."""
        ctl = self._controller()
        if ctl is None:
            self.info_label.setText("Segment an image first.")
            self.adapt_button.setEnabled(False)
            return
        reviewed, touched = self._slices(ctl)
        self.info_label.setText(
            f"Fine-tunes a copy of {ctl.case.model_key or 'the default model'} on the {len(reviewed)} reviewed "
            f"slices, then re-segments the {ctl.n_slices - len(touched)} slices not edited or reviewed "
            "(Ctrl-Z undoes it)."
        )
        self.adapt_button.setEnabled(not self.is_running and bool(reviewed))

    # ------------------------------------------------------------------ adapt
    def adapt(self) -> bool:
        """Start the fine-tune (the controller's job: a worker thread unless
        ``NAPARI_GI_SEG_SYNC=1``). Returns False (after a notification) when there is
        nothing to adapt on."""
        from napari.utils.notifications import show_error

        from ..models.registry import DEFAULT_MODEL

        ctl = self._controller()
        if self.is_running:
            show_error("An adaptation is already running; cancel it first.")
            return False
        if ctl is None or ctl.image_layer is None:
            show_error("Segment an image first: adaptation starts from the case's model.")
            return False
        reviewed, touched = self._slices(ctl)
        if not reviewed:
            show_error("Mark the slices you corrected as reviewed (Shift-R) first; adaptation learns from those.")
            return False
        self.result = None
        self.applied = False
        self.keep_button.setEnabled(False)
        self.apply_button.setVisible(False)
        args = (ctl.image_volume(), np.array(ctl.labels(), copy=True), reviewed, touched)
        self.status_label.setText(f"Fine-tuning on slices {', '.join(map(str, reviewed))}...")
        return self._start(ctl, _adapt_job, *args, ctl.case.model_key or DEFAULT_MODEL, "auto")

    def apply_anyway(self) -> bool:
        """Re-segment the slices not edited or reviewed with the last adapted copy,
        although it scored worse on the reviewed slices (the user's choice)."""
        ctl = self._run_ctl
        if self.result is None or ctl is None or self.is_running or ctl.labels_layer is None:
            return False
        self.apply_button.setVisible(False)
        args = (ctl.image_volume(), np.array(ctl.labels(), copy=True), sorted(ctl.protected_slices()), self.result)
        self.status_label.setText("Re-segmenting with the adapted copy...")
        return self._start(ctl, _reseg_job, *args, "auto")

    def _start(self, ctl, fn, *args) -> bool:
        from napari.utils.notifications import show_error

        from ..errors import ConflictError

        self._run_ctl = ctl
        self._set_running(True)
        try:
            self._job = ctl.run(
                fn,
                *args,
                title="Adapt to this scan:",
                on_progress=self._on_event,
                on_returned=self._on_returned,
                on_errored=self._on_error,
                on_finished=self._on_finished,
                parent=self,
            )
        except ConflictError as e:
            self._set_running(False)
            show_error(str(e))
            return False
        return True

    def cancel(self) -> None:
        """Stop after the step (or batch) in progress; nothing is written."""
        if self._job is not None:
            self._job.cancel()
        self.status_label.setText("Cancelling...")

    def _set_running(self, running: bool) -> None:
        self.adapt_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if not running:
            self.refresh()

    def _on_event(self, ev) -> None:
        """Status line for a :class:`~napari_gi_seg.progress.ProgressEvent` (GUI thread)."""
        if ev.stage == "step":
            self.status_label.setText(f"Fine-tuning: step {ev.done}/{ev.total}, loss {ev.metrics['loss']:.3f}")
        elif ev.stage == "segment":
            self.status_label.setText(f"Re-segmenting: {ev.done}/{ev.total} slices")

    def _on_finished(self) -> None:
        """The job ended: buttons back, then ``finished`` (so ``is_running`` is False)."""
        self._job = None
        self._set_running(False)
        outcome, self._outcome = getattr(self, "_outcome", None), None
        if outcome is not None:
            self.finished.emit(outcome)

    def _on_error(self, exc) -> None:
        from napari.utils.notifications import show_error

        from .controller import error_text

        show_error(f"Adaptation failed: {error_text(exc)}")
        self.status_label.setText(f"Failed: {error_text(exc)}")
        self._outcome = {"error": str(exc)}

    def _on_returned(self, out) -> None:
        """Write the re-segmented slices into the case (main thread), or say why not."""
        res, reseg = out
        ctl = self._run_ctl
        written: list[int] = []
        worse = _worse(res) and not res.cancelled
        if reseg is not None and ctl is not None and ctl.labels_layer is not None and not reseg.cancelled:
            zs = list(reseg.slices)
            written = ctl.write_model_output(zs, reseg.labels[zs]) if zs else []
            self.applied = True
        cancelled = res.cancelled or (reseg is not None and reseg.cancelled) or (reseg is None and not worse)
        if not res.cancelled:
            self.result = res
        self.keep_button.setEnabled(self.applied)
        dice = f"Dice on the {len(res.slices)} reviewed slices {res.dice_before:.3f} -> {res.dice_after:.3f}"
        if cancelled:
            self.status_label.setText("Cancelled: the labels were not changed." if not written else "Cancelled.")
        elif reseg is None:  # worse: keep the original (default), offer the choice
            self.apply_button.setVisible(True)
            self.status_label.setText(
                f"The adapted copy scored worse ({dice}): the labels were not changed. "
                "Press 'Apply anyway' to re-segment with it regardless."
            )
        else:
            self.status_label.setText(
                f"Adapted in {res.seconds:.0f} s ({dice}); {len(written)} slices re-segmented. Ctrl-Z undoes it."
            )
        self.refresh()
        self._outcome = (  # emitted by _on_finished, once the job is over
            {
                "cancelled": cancelled,
                "trained_on": res.slices,
                "resegmented": written,
                "dice_before": res.dice_before,
                "dice_after": res.dice_after,
                "worse": worse,
            }
        )

    # ------------------------------------------------------------------ keep / find
    def _key(self) -> str:
        from ..training.patient_models import patient_key, scan_key

        code = self.code_edit.text().strip()
        if code:
            return patient_key(code)
        ctl = self._run_ctl or self._controller()
        return scan_key(np.asarray(ctl.image_layer.data))

    def keep(self):
        """Register the last adapted model for this patient; returns its registry entry."""
        from napari.utils.notifications import show_error

        from ..training.patient_models import keep_for_patient

        if self.result is None or not self.applied:
            show_error("Adapt to this scan first (and apply the adapted copy).")
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
