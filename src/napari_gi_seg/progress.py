"""One progress / cancel protocol for every long call.

Every long core call (:func:`~napari_gi_seg.engine.inference.segment_volume`, the
:class:`~napari_gi_seg.training.trainer.Trainer`, :func:`~napari_gi_seg.training.finetune.finetune`,
:func:`~napari_gi_seg.curation.export.export_case`) takes the same two optional
callbacks, in the spirit of micro-sam's ``pbar_init`` / ``pbar_update``:

``progress(event: ProgressEvent) -> None``
    called as work advances (``event.done`` of ``event.total`` units of
    ``event.stage``), from the thread that does the work;
``cancel() -> bool``
    polled between units of work; ``True`` stops the call at the next safe point (what
    is finished so far is kept, and the call says so in its result).

The protocol is bridged once to a terminal (:class:`TqdmProgress`, used by the CLI)
and once to napari's activity dock (:class:`napari_gi_seg._qt._progress.NapariProgress`).
Nothing here imports Qt or torch.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ProgressEvent", "ProgressCallback", "CancelCallback", "emit", "TqdmProgress", "log_progress"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a long call.

    Attributes
    ----------
    stage : str
        What is advancing: ``"segment"`` (slices), ``"step"`` (optimiser steps of one
        epoch), ``"epoch"`` (training epochs; ``metrics`` holds the epoch's row),
        ``"validate"``, ``"baseline"`` (held-back Dice of a fine-tune's base model),
        ``"export"`` (files), ``"done"`` (a call finished; ``metrics`` holds its summary).
    done : int
        Units finished so far in this stage (``0 <= done <= total`` when ``total`` is known).
    total : int or None
        Units in this stage, ``None`` when unknown.
    message : str
        One human-readable line (``""`` when the numbers say it all).
    metrics : Mapping[str, Any]
        Numbers (and small JSON-ready values) that go with the event, e.g.
        ``{"train_loss": 0.41, "val_mean_dice": 0.83}`` for an epoch.
    """

    stage: str
    done: int
    total: int | None = None
    message: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict ``{"event": stage, "done", "total", "message", **metrics}``
        (the ``--jsonl`` line of ``napari-gi-seg finetune``)."""
        return {"event": self.stage, "done": self.done, "total": self.total, "message": self.message, **self.metrics}


#: ``progress(event)``: receives :class:`ProgressEvent` s.
ProgressCallback = Callable[[ProgressEvent], None]
#: ``cancel()``: ``True`` asks the call to stop at its next safe point.
CancelCallback = Callable[[], bool]


def emit(
    progress: ProgressCallback | None,
    stage: str,
    done: int,
    total: int | None = None,
    message: str = "",
    **metrics: Any,
) -> None:
    """Send one :class:`ProgressEvent` to ``progress`` (nothing when it is ``None``).

    Parameters
    ----------
    progress : callable or None
        The caller's callback.
    stage, done, total, message
        The event's fields (see :class:`ProgressEvent`).
    **metrics
        The event's ``metrics``.
    """
    if progress is not None:
        progress(ProgressEvent(stage, int(done), None if total is None else int(total), message, metrics))


def is_cancelled(cancel: CancelCallback | None) -> bool:
    """``cancel()`` when given, else ``False``."""
    return bool(cancel is not None and cancel())


class TqdmProgress:
    """The protocol on a terminal: one tqdm bar per stage, on stderr.

    ``"epoch"`` and ``"done"`` events are logged (one line each, through
    :mod:`logging`) rather than drawn; every other stage gets a bar that is replaced
    when the stage restarts (``done`` goes back to 0 or ``total`` changes).

    Parameters
    ----------
    disable : bool
        No bars at all (``--quiet``); events are still logged.
    unit : dict, optional
        Unit per stage for the bar label (default ``{"segment": "slice", "step": "step"}``).
    """

    LOGGED = ("epoch", "done", "baseline")

    def __init__(self, disable: bool = False, unit: Mapping[str, str] | None = None):
        self.disable = disable
        self.unit = {"segment": "slice", "step": "step", "export": "file", **(unit or {})}
        self._bars: dict[str, Any] = {}

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage in self.LOGGED:
            log_progress(event)
            return
        if self.disable:
            return
        from tqdm.auto import tqdm

        bar = self._bars.get(event.stage)
        if bar is not None and (event.done < bar.n or bar.total != event.total):
            bar.close()
            bar = None
        if bar is None:
            bar = tqdm(
                total=event.total,
                desc=event.message or event.stage,
                unit=self.unit.get(event.stage, "it"),
                leave=False,
                file=sys.stderr,
            )
            self._bars[event.stage] = bar
        bar.update(event.done - bar.n)
        loss = event.metrics.get("loss")
        if isinstance(loss, float):
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if event.total is not None and event.done >= event.total:
            bar.close()
            del self._bars[event.stage]

    def close(self) -> None:
        """Close every open bar."""
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

    def __enter__(self) -> TqdmProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def log_progress(event: ProgressEvent, logger: logging.Logger | None = None) -> None:
    """Log one event as a line (``epoch 3/20: train_loss=0.4123 val_mean_dice=0.8312``).

    Parameters
    ----------
    event : ProgressEvent
        The event.
    logger : logging.Logger, optional
        Default: this module's logger.
    """
    nums = " ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in event.metrics.items()
        if isinstance(v, (int, float, str)) and k not in ("epoch",)
    )
    head = event.message or (f"{event.stage} {event.done}/{event.total}" if event.total else event.stage)
    (logger or log).info("%s%s", head, f": {nums}" if nums else "")
