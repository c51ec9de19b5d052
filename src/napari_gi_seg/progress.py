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

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ProgressEvent", "ProgressCallback", "CancelCallback", "emit", "TqdmProgress"]


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


class TqdmProgress:
    """The protocol on a terminal: one tqdm bar per stage, on stderr.

    ``"epoch"``, ``"baseline"`` and ``"done"`` events draw no bar (the calls that send
    them log one line each); every other stage gets a bar that is replaced when the
    stage restarts (``done`` goes back to 0 or ``total`` changes).

    Parameters
    ----------
    disable : bool
        No bars at all (``--quiet``, or stderr is not a terminal).
    desc : str, optional
        Label of the bars (default: the event's message, else its stage).
    unit : dict, optional
        Unit per stage for the bar label (default ``{"segment": "slice", "step": "step", "export": "file"}``).
    transient : tuple of str
        Stages whose finished bars are erased (per-epoch step bars); others stay on screen.
    """

    NO_BAR = ("epoch", "done", "baseline")

    def __init__(
        self,
        disable: bool = False,
        desc: str | None = None,
        unit: Mapping[str, str] | None = None,
        transient: tuple[str, ...] = ("step", "validate"),
    ):
        self.disable, self.desc, self.transient = disable, desc, transient
        self.unit = {"segment": "slice", "step": "step", "export": "file", **(unit or {})}
        self._bars: dict[str, Any] = {}

    def __call__(self, event: ProgressEvent) -> None:
        if self.disable or event.stage in self.NO_BAR:
            return
        from tqdm.auto import tqdm

        bar = self._bars.get(event.stage)
        if bar is not None and (event.done < bar.n or bar.total != event.total):
            bar.close()
            bar = None
        if bar is None:
            bar = tqdm(
                total=event.total,
                desc=self.desc or event.message or event.stage,
                unit=self.unit.get(event.stage, "it"),
                leave=event.stage not in self.transient,
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
