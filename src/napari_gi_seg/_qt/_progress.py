"""The progress protocol (:mod:`napari_gi_seg.progress`) bridged once to napari's
activity dock (``napari.utils.progress``).

:class:`NapariProgress` is a ``progress`` callback that may be called from any
thread (a ``thread_worker``, a callback of a core call): events travel to the GUI
thread through a Qt signal, as micro-sam does, and drive one napari progress bar per
stage there.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QObject, Signal

from ..progress import ProgressEvent

__all__ = ["NapariProgress"]


class NapariProgress(QObject):
    """A ``progress(event)`` callback that shows napari progress bars.

    Parameters
    ----------
    title : str
        Prefix of every bar's description (e.g. ``"Fine-tuning"``).
    stages : tuple of str, optional
        Stages that get a bar (default: every stage except ``"epoch"``, ``"baseline"``
        and ``"done"``, which carry results rather than progress).
    parent : QObject, optional
        Qt parent (the widget), so the bridge dies with it.

    Notes
    -----
    Call :meth:`close` when the work ends (the bars are closed, also when the last
    event did not reach ``total``).
    """

    _event = Signal(object)
    NO_BAR = ("epoch", "baseline", "done")

    def __init__(self, title: str = "", stages: tuple[str, ...] | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.title, self.stages = title, stages
        self._bars: dict[str, Any] = {}
        self._event.connect(self._handle)

    def __call__(self, event: ProgressEvent) -> None:
        self._event.emit(event)

    def _handle(self, event: ProgressEvent) -> None:
        if event.stage in self.NO_BAR or (self.stages is not None and event.stage not in self.stages):
            return
        from napari.utils import progress

        bar = self._bars.get(event.stage)
        if bar is not None and (event.done < bar.n or bar.total != event.total):
            self._bars.pop(event.stage, None)
            bar.close()
            bar = None
        desc = " ".join(p for p in (self.title, event.message or event.stage) if p)
        if bar is None:
            bar = progress(total=event.total, desc=desc)
            self._bars[event.stage] = bar
        else:
            bar.set_description(desc)
        bar.update(event.done - bar.n)
        if event.total is not None and event.done >= event.total:
            # napari may process events while a bar opens or closes (a nested call
            # for the same stage): take the bar out first, tolerate it being gone
            if self._bars.get(event.stage) is bar:
                del self._bars[event.stage]
            bar.close()

    @property
    def open_bars(self) -> dict[str, Any]:
        """The napari progress bars still open, by stage."""
        return dict(self._bars)

    def close(self) -> None:
        """Close every open bar."""
        bars = list(self._bars.values())
        self._bars.clear()
        for bar in bars:
            bar.close()
