"""The case controller: what every dock tool does to a case, written once.

A *case* is one image layer with the editable ``"<image> segmentation"`` Labels layer
made for it (and the hidden ``"<image> prediction"`` layer): its runtime state is a
:class:`~._context.CaseContext`. :class:`CaseController` is the one place where the
widgets change a case; the rules it applies are pure policy in :mod:`napari_gi_seg.curation`
(:meth:`~napari_gi_seg.curation.review.ReviewTracker.protected_slices`,
:func:`~napari_gi_seg.curation.session.state_from_case`,
:func:`~napari_gi_seg.curation.session.case_from_session`). A widget is layout and
wiring: it reads its fields, asks the controller, and shows the answer.

Public API (the surface new tools build on; see docs/development.md, "Writing a new
tool on the case controller")::

    ctl = active_case(viewer)                      # case of the active/selected layer, or None
    ctl = case_for_image(viewer, image, names, colours, model_key)   # create on demand
    ctl = case_for_labels(viewer, labels_layer)    # adopt labels opened from a file
    vol = ctl.image_volume()                       # io.volume.Volume with the scan's geometry
    zs = ctl.write_model_output(zs, labels)        # diff, one undo step, marks PREDICTED
    ctl.write_correction(coords, values)           # the clinician's edit, one undo step, EDITED
    ctl.mark_reviewed(zs)
    ctl.show_case()                                # segmentation active + visible, prediction hidden + locked
    job = ctl.run(fn, *args, title=..., on_yielded=..., on_returned=...)   # one job runner
    job.cancel()

:func:`run_job` is the job runner itself (also usable without a case): the job body
``fn(*args, progress=..., cancel=...)`` runs in a napari ``thread_worker`` (or, with
``NAPARI_GI_SEG_SYNC=1`` or ``sync=True``, in the calling thread, with the same
callbacks in the same order); its :class:`~napari_gi_seg.progress.ProgressEvent` s go to
napari's activity dock through :class:`~._progress.NapariProgress`; a generator body's
yields reach ``on_yielded`` on the GUI thread one by one.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, Signal

from ..constants import SYNC_ENV, env_flag
from ..errors import InputError
from . import _context as C
from ._display import install_viewer_hooks

__all__ = [
    "Job",
    "run_job",
    "CaseController",
    "active_case",
    "case_for_image",
    "case_for_labels",
    "controller_of",
    "register_tool",
]


# ---------------------------------------------------------------------- job runner
class Job(QObject):
    """One running job (a Segment run, an adaptation, an export, a new tool's work).

    Attributes
    ----------
    title : str
        Shown in napari's activity dock before each stage.
    cancelled : bool
        :meth:`cancel` was called; the body sees it through its ``cancel()`` callable
        and stops at its next check (between batches, steps, slices).
    error : BaseException or None
        What the body raised (already handed to ``on_errored``).
    result
        What the body returned (a generator body: its ``return`` value).

    Signals
    -------
    progress(ProgressEvent)
        On the GUI thread, for status lines (napari's bars are drawn already).
    done()
        On the GUI thread, after ``on_finished``.
    """

    progress = Signal(object)
    done = Signal()
    _event = Signal(object)  # any thread -> GUI thread

    def __init__(self, title: str = "", parent: QObject | None = None):
        super().__init__(parent)
        from ._progress import NapariProgress

        self.title = title
        self.cancelled = False
        self.running = False
        self.error: BaseException | None = None
        self.result: Any = None
        self.worker = None
        self._bars = NapariProgress(title, parent=self)
        self._event.connect(self.progress.emit)

    @property
    def is_running(self) -> bool:
        """True from the start until ``on_finished`` ran."""
        return self.running

    def cancel(self) -> None:
        """Ask the body to stop at its next check; what it finished stays."""
        self.cancelled = True

    def report(self, event) -> None:
        """The ``progress`` callback handed to the body (safe from any thread)."""
        self._bars(event)
        self._event.emit(event)

    def _finish(self) -> None:
        self._bars.close()
        self.running = False


def run_job(
    fn: Callable,
    *args,
    title: str = "",
    on_yielded: Callable[[Any], None] | None = None,
    on_returned: Callable[[Any], None] | None = None,
    on_errored: Callable[[BaseException], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    on_progress: Callable[[Any], None] | None = None,
    sync: bool | None = None,
    parent: QObject | None = None,
    **kwargs,
) -> Job:
    """Run ``fn(*args, progress=job.report, cancel=lambda: job.cancelled, **kwargs)``.

    Parameters
    ----------
    fn : callable
        The job body; it must not touch Qt or layers (it runs in a worker thread).
        A generator function streams results: each yielded value reaches
        ``on_yielded`` on the GUI thread (write it into the layers there).
    title : str
        Prefix of napari's progress bars (e.g. ``"Segmenting image_1"``).
    on_yielded, on_returned, on_errored, on_finished, on_progress : callable, optional
        GUI-thread callbacks: each yield; the return value (not called after an
        error); the exception (without ``on_errored`` a napari error notification
        says what failed, :func:`error_text`); always
        last; every :class:`~napari_gi_seg.progress.ProgressEvent`.
    sync : bool, optional
        Run in the calling thread (default: ``$NAPARI_GI_SEG_SYNC``); the callbacks
        come in the same order as from the worker.
    parent : QObject, optional
        Qt parent of the :class:`Job` (the widget).

    Returns
    -------
    Job
        Started (or, in sync mode, already finished).
    """
    job = Job(title, parent=parent)
    if on_progress is not None:
        job.progress.connect(on_progress)
    kwargs = {**kwargs, "progress": job.report, "cancel": lambda: job.cancelled}
    job.running = True

    def finished():
        job._finish()
        if on_finished is not None:
            on_finished()
        job.done.emit()

    def returned(value):
        if isinstance(value, _Failed):
            errored(value.exc)
            return
        job.result = value
        if on_returned is not None:
            on_returned(value)

    def errored(exc):
        job.error = exc
        if on_errored is not None:
            on_errored(exc)
        else:  # never silent, never a traceback into the event loop
            from napari.utils.notifications import show_error

            show_error(f"{title or 'The job'} failed: {error_text(exc)}")

    if sync if sync is not None else env_flag(SYNC_ENV):
        job.worker = "sync"
        try:
            if inspect.isgeneratorfunction(fn):
                gen = fn(*args, **kwargs)
                while True:
                    try:
                        item = next(gen)
                    except StopIteration as stop:
                        value = stop.value
                        break
                    if on_yielded is not None:
                        on_yielded(item)
            else:
                value = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - reported through on_errored, never a crash
            errored(e)
        else:
            returned(value)
        finished()
        return job

    from napari.qt.threading import create_worker

    # the body's exceptions come back as a returned _Failed: napari's task-status hook on
    # ``errored`` (napari 0.6) takes 2 arguments and is given 3, which raised a TypeError
    # into the event loop after every failed job
    worker = create_worker(_returning_errors(fn), *args, _start_thread=False, _ignore_errors=True, **kwargs)
    if on_yielded is not None and hasattr(worker, "yielded"):
        worker.yielded.connect(on_yielded)
    worker.returned.connect(returned)
    worker.errored.connect(errored)
    worker.finished.connect(finished)
    job.worker = worker
    worker.start()
    return job


class _Failed:
    """A job body's exception, carried back as its return value (see :func:`run_job`)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _returning_errors(fn: Callable) -> Callable:
    """``fn`` (a function or generator function) returning :class:`_Failed` instead of raising."""
    import functools

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                return (yield from fn(*args, **kwargs))
            except Exception as e:  # noqa: BLE001 - reported through on_errored
                return _Failed(e)

        return gen

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - reported through on_errored
            return _Failed(e)

    return call


def error_text(exc: BaseException) -> str:
    """What a user is told about a failed job: the message of an expected failure
    (:class:`~napari_gi_seg.errors.GiSegError`, ``OSError``, ``MemoryError``), else the
    exception's type too (a bug: "internal error")."""
    from ..errors import GiSegError

    if isinstance(exc, (GiSegError, OSError, MemoryError)):
        return str(exc)
    return f"internal error ({type(exc).__name__}: {exc})"


# ---------------------------------------------------------------------- the controller
class CaseController:
    """Everything a dock tool does to one case.

    Get one with :func:`active_case`, :func:`case_for_image`, :func:`case_for_labels`
    or :func:`controller_of` (one controller per case; the same object every time).

    Parameters
    ----------
    viewer
        The napari viewer (a proxy is unwrapped).
    case : CaseContext
        The case's runtime state.

    Attributes
    ----------
    viewer, case
        As given.
    job : Job or None
        The job started with :meth:`run` that is still running (one at a time).
    """

    def __init__(self, viewer, case: C.CaseContext):
        self.viewer = C.unwrap(viewer)
        self.case = case
        self.job: Job | None = None

    # ------------------------------------------------------------------ layers
    @property
    def image_layer(self):
        """The case's Image layer (``(z, y, x)``)."""
        return self.case.image_layer

    @property
    def labels_layer(self):
        """The editable ``"<image> segmentation"`` Labels layer (``(z, y, x)`` uint8)."""
        return self.case.labels_layer

    @property
    def prediction_layer(self):
        """The hidden ``"<image> prediction"`` layer, or ``None`` before the first write."""
        return self.case.prediction_layer

    @property
    def tracker(self):
        """The case's :class:`~napari_gi_seg.curation.review.ReviewTracker`."""
        return self.case.tracker

    @property
    def n_slices(self) -> int:
        return self.case.tracker.n_slices

    def image_volume(self):
        """The scan as a :class:`~napari_gi_seg.io.volume.Volume`: ``(z, y, x)`` data with
        the spacing (mm), affine and axis order the reader stored in the layer's
        metadata (the layer's scale when there is none), and the DICOM reference for
        RTSTRUCT/DICOM-SEG writers. The data is the layer's array, not a copy."""
        from ..io.volume import volume_from_layer_metadata

        img = self.image_layer
        return volume_from_layer_metadata(np.asarray(img.data), dict(img.metadata), scale=img.scale)

    def labels(self) -> np.ndarray:
        """``(z, y, x)`` uint8 view of the editable labels (copy it before handing it to a job)."""
        return np.asarray(self.labels_layer.data)

    def current_slice(self) -> int:
        """The slice ``z`` the viewer shows."""
        return C.current_slice(self.viewer, self.labels_layer)

    def show_case(self) -> None:
        """The layer rules: the segmentation layer is visible and active (the next
        brush stroke goes there); the prediction layer is hidden and locked (not
        editable), so no stroke ever lands in an invisible layer."""
        lab = self.labels_layer
        if lab is None:
            return
        lab.visible = True
        lab.editable = True
        if lab in self.viewer.layers:
            self.viewer.layers.selection.active = lab
        pred = self.prediction_layer
        if pred is not None:
            pred.visible = False
            lock_layer(pred)

    # ------------------------------------------------------------------ writes
    def protected_slices(self, overwrite: bool = False) -> set[int]:
        """Slices model output must not replace (edited or reviewed unless
        ``overwrite``): :meth:`ReviewTracker.protected_slices
        <napari_gi_seg.curation.review.ReviewTracker.protected_slices>`."""
        return self.tracker.protected_slices(overwrite)

    def write_model_output(
        self, zs: Iterable[int], labels: np.ndarray, *, overwrite: bool = False, prediction: bool = True
    ) -> list[int]:
        """Write model output for slices ``zs`` into the case.

        Only voxels that differ are written, through ``Labels.data_setitem`` (one
        napari undo step: one Ctrl-Z takes the whole write back), and the write does
        not count as the clinician's edit. The protected slices (edited or reviewed,
        :meth:`protected_slices`) are left alone unless ``overwrite``; the written
        slices become PREDICTED. The hidden prediction layer (created on demand) gets
        every slice of ``zs``: it is the model's own record.

        Parameters
        ----------
        zs : iterable of int
            ``(n,)`` slice indices.
        labels : ndarray
            ``(n, y, x)`` integer model output for those slices (same order), or a
            ``(z, y, x)`` volume from which the slices ``zs`` are taken.
        overwrite : bool
            Replace edited and reviewed slices too.
        prediction : bool
            Also record the output in the prediction layer.

        Returns
        -------
        list of int
            The slices written (and marked PREDICTED), ascending.

        Raises
        ------
        ValueError
            When ``labels`` has neither ``n`` nor ``z`` slices of the layer's size.
        """
        zs = [int(z) for z in zs]
        lab = np.asarray(labels)
        layer = self.labels_layer
        shape = tuple(layer.data.shape)
        if lab.shape == shape and len(zs) != shape[0]:
            lab = lab[zs]
        if lab.shape != (len(zs), *shape[1:]):
            raise InputError(f"model output of shape {lab.shape} for {len(zs)} slices of a {shape} case")
        if prediction:
            pred = self.prediction_layer
            if pred is None or pred not in self.viewer.layers:
                pred = C.ensure_prediction_layer(self.viewer, self.case)
            lock_layer(pred)
            pred.data[zs] = lab
            if pred.visible:
                pred.refresh()
        keep = self.protected_slices(overwrite)
        write = [k for k, z in enumerate(zs) if z not in keep]
        if write:
            zz = np.asarray([zs[k] for k in write])
            new = lab[write]
            kk, yy, xx = np.nonzero(np.asarray(layer.data)[zz] != new)
            if kk.size:
                with self.case.model_writing():
                    layer.data_setitem((zz[kk], yy, xx), new[kk, yy, xx])
        written = sorted({zs[k] for k in write})
        if written:
            self.tracker.mark_predicted(written)
        self.case.changed.emit()
        return written

    def write_model_voxels(self, index: tuple, value=0, *, overwrite: bool = False) -> int:
        """Set voxels ``index`` (a ``(z, y, x)`` tuple of index arrays) to ``value`` (one
        label, or one per voxel) as the model (e.g. the post-processing's removed islands
        and reassigned fragments): in the prediction layer, and in the labels outside the
        protected slices, as one undo step. Returns the number of label voxels changed."""
        idx = tuple(np.asarray(a) for a in index)
        if idx[0].size == 0:
            return 0
        val = np.asarray(value)
        pred = self.prediction_layer
        if pred is not None:
            pred.data[idx] = val
            if pred.visible:
                pred.refresh()
        keep = self.protected_slices(overwrite)
        if keep:
            m = ~np.isin(idx[0], sorted(keep))
            idx = tuple(a[m] for a in idx)
            if val.ndim:
                val = val[m]
        if idx[0].size:
            with self.case.model_writing():
                self.labels_layer.data_setitem(idx, val if val.ndim else int(val))
        self.case.changed.emit()
        return int(idx[0].size)

    def write_correction(self, coords: tuple, values) -> None:
        """Apply the clinician's change (a correction tool, a prompt's mask accepted by
        the user) through the undo history: one Ctrl-Z takes it back, and the touched
        slices become EDITED (the case's paint listener marks them).

        ``coords``: ``(z, y, x)`` tuple of index arrays; ``values``: one value or one
        per voxel."""
        if np.asarray(coords[0]).size:
            self.labels_layer.data_setitem(coords, values)

    def mark_reviewed(self, zs: int | Iterable[int]) -> None:
        """Mark slice(s) ``zs`` REVIEWED (exported for training) and tell the widgets."""
        self.tracker.mark_reviewed(zs)
        self.case.changed.emit()

    # ------------------------------------------------------------------ sessions
    def session_state(self) -> dict:
        """What the autosave stores (:func:`~napari_gi_seg.curation.session.state_from_case`)."""
        from ..curation.session import CaseState, state_from_case

        c = self.case
        return state_from_case(
            CaseState(
                labels=self.labels(),
                prediction=c.prediction,
                review=c.tracker,
                class_names=c.class_names,
                colours=c.colours,
                model_key=c.model_key,
                activation=c.activation,
                uncertainty=c.slice_uncertainty,
            )
        )

    def apply_session(self, state) -> None:
        """Put a restored :class:`~napari_gi_seg.curation.session.CaseState` into the
        layers (labels, prediction, review, uncertainty), then :meth:`show_case`."""
        c = self.case
        self.labels_layer.data = np.asarray(state.labels, dtype=np.uint8)
        if state.prediction is not None:
            pred = C.ensure_prediction_layer(self.viewer, c)
            pred.data = np.asarray(state.prediction, dtype=np.uint8)
        c.tracker = state.review
        c.activation = state.activation or c.activation
        c.slice_uncertainty = state.uncertainty
        self.show_case()
        c.changed.emit()

    # ------------------------------------------------------------------ jobs
    @property
    def is_running(self) -> bool:
        """A job of this case is running."""
        return self.job is not None and self.job.is_running

    def run(self, fn: Callable, *args, title: str = "", on_finished: Callable[[], None] | None = None, **kw) -> Job:
        """:func:`run_job` for this case (one job per case at a time).

        Raises
        ------
        napari_gi_seg.errors.ConflictError
            When a job of this case is still running (cancel it first).
        """
        from ..errors import ConflictError

        if self.is_running:
            raise ConflictError(f"{self.job.title or 'a job'} is still running on this case; cancel it first")

        def finished():
            self.job = None
            if on_finished is not None:
                on_finished()

        self.job = None
        job = run_job(fn, *args, title=title, on_finished=finished, **kw)
        if job.is_running:
            self.job = job
        return job

    def cancel(self) -> None:
        """Cancel the running job (if any)."""
        if self.job is not None:
            self.job.cancel()


def lock_layer(layer) -> None:
    """Make a Labels layer read-only in the viewer: not editable, so no brush, fill or
    eraser reaches it (napari re-enables ``editable`` on slicing, so a listener keeps it
    off). It can still be shown, hidden and deleted."""
    layer.editable = False
    if not getattr(layer, "_gi_seg_locked", False):
        ref = weakref.ref(layer)

        def relock(event=None, ref=ref):
            lyr = ref()
            if lyr is not None and lyr.editable:
                lyr.editable = False

        layer.events.editable.connect(relock)
        layer._gi_seg_locked = True


# ---------------------------------------------------------------------- finding cases
_CONTROLLERS: weakref.WeakKeyDictionary[C.CaseContext, CaseController] = weakref.WeakKeyDictionary()


def controller_of(viewer, case: C.CaseContext) -> CaseController:
    """The (one) controller of ``case``."""
    ctl = _CONTROLLERS.get(case)
    if ctl is None:
        ctl = _CONTROLLERS[case] = CaseController(viewer, case)
    return ctl


def case_for_labels(viewer, labels_layer) -> CaseController | None:
    """The controller of a Labels layer's case; a layer the widgets did not make (opened
    from a file) is adopted beside its image (:func:`._context.adopt_labels_layer`).
    ``None`` when no image of the viewer matches it."""
    if labels_layer is None:
        return None
    ctx = C.adopt_labels_layer(viewer, labels_layer)
    return None if ctx is None else controller_of(viewer, ctx)


def case_for_image(
    viewer,
    image_layer,
    class_names: dict[int, str] | None = None,
    colours: dict[int, str] | None = None,
    model_key: str | None = None,
) -> CaseController | None:
    """The controller of the case made for ``image_layer``. With ``class_names`` the
    case is created when missing (its ``"<image> segmentation"`` layer added) or
    takes the new classes; without, ``None`` when there is none yet."""
    if image_layer is None:
        return None
    if class_names is None:
        ctx = C.find_case(viewer, image_layer)
    else:
        ctx = C.ensure_case(viewer, image_layer, class_names, colours or C.colours_for_names(class_names), model_key)
    return None if ctx is None else controller_of(viewer, ctx)


def active_case(viewer) -> CaseController | None:
    """The case the user is working on: that of the active layer (its segmentation,
    its prediction or its image), else the newest case the widgets made, else
    ``None``."""
    from napari.layers import Image, Labels

    viewer = C.unwrap(viewer)
    layer = C.unwrap(viewer.layers.selection.active)
    ctx = None
    if isinstance(layer, Labels):
        ctx = C.get_context(layer)
        if ctx is None and layer.name.endswith(C.PREDICTION_SUFFIX):
            img = (layer.metadata or {}).get(C.IMAGE_KEY)
            if img in viewer.layers:
                ctx = C.find_case(viewer, viewer.layers[img])
    elif isinstance(layer, Image):
        ctx = C.find_case(viewer, layer)
    if ctx is None:
        made = [c for c in (C.get_context(lyr) for lyr in viewer.layers) if c is not None and c.made_here]
        ctx = made[-1] if made else None
    return None if ctx is None else controller_of(viewer, ctx)


def register_tool(viewer, widget) -> None:
    """Call at the end of a dock tool's ``__init__``: sibling tools can find it
    (:func:`._context.find_widget`) and the viewer gets the plugin's display rules
    (radiological camera, case colours for opened labels:
    :func:`._display.install_viewer_hooks`)."""
    C.register_widget(viewer, widget)
    install_viewer_hooks(C.unwrap(viewer))
