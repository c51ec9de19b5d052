"""The run folder's training state: ``checkpoint_last.pt`` (to resume) and
``metrics.csv`` (one row per epoch).

Checkpoints hold only tensors, numbers and JSON strings, and are read with
``torch.load(weights_only=True)``: no Python object is ever unpickled. A file that
holds anything else (a tampered or foreign checkpoint) is refused with
:class:`CheckpointError`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from ..errors import GiSegError

__all__ = ["CHECKPOINT_FILE", "CheckpointError", "save_checkpoint", "load_checkpoint", "restore", "write_history_csv"]

CHECKPOINT_FILE = "checkpoint_last.pt"
_KEYS = ("model", "optimizer", "scheduler", "epoch", "best", "bad_epochs", "best_metrics_json", "history_json")


class CheckpointError(GiSegError, ValueError):
    """A checkpoint that cannot be used (unreadable, not ours, or holding Python objects)."""


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    epoch: int,
    best: float,
    bad_epochs: int,
    best_metrics: dict,
    history: list[dict],
    global_step: int | None = None,
    epoch_steps: int | None = None,
) -> Path:
    """Write the state needed to resume (temp file, then rename: a killed run keeps
    the previous checkpoint).

    Parameters
    ----------
    path : str or Path
        ``<run folder>/checkpoint_last.pt``.
    model, optimizer, scheduler
        Their ``state_dict()`` is saved.
    epoch : int
        The 0-based epoch just finished.
    best : float
        Best validation mean Dice so far (-1 when none).
    bad_epochs : int
        Validated epochs since the last improvement (early stopping).
    best_metrics : dict
        The best epoch's validation metrics (stored as JSON text).
    history : list of dict
        Epoch rows so far (stored as JSON text).
    global_step : int, optional
        Optimiser steps taken since the run began (the scheduler's step count).
    epoch_steps : int, optional
        Steps of ``epoch`` that ran; fewer than the epoch's steps for a partial epoch
        (stopped with its grace spent, :mod:`.stopping`), which ``--resume`` completes.

    Returns
    -------
    Path
        ``path``.
    """
    from .._atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": int(epoch),
                "best": float(best),
                "bad_epochs": int(bad_epochs),
                "best_metrics_json": json.dumps(best_metrics),
                "history_json": json.dumps(history),
                **({} if global_step is None else {"global_step": int(global_step)}),
                **({} if epoch_steps is None else {"epoch_steps": int(epoch_steps)}),
            },
            tmp,
        )
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, safely.

    Parameters
    ----------
    path : str or Path
        The ``.pt`` file.

    Returns
    -------
    dict
        ``model``/``optimizer``/``scheduler`` state dicts, ``epoch``, ``best``,
        ``bad_epochs``, ``best_metrics`` (dict), ``history`` (list of dict) and, from
        checkpoints that have them, ``global_step`` and ``epoch_steps`` (ints).

    Raises
    ------
    CheckpointError
        A ``ValueError`` naming the file: unreadable, holding Python objects other than
        tensors and plain containers (refused, never unpickled; see
        :func:`napari_gi_seg.models.network.load_checkpoint`), or lacking a key.
    """
    from ..models.network import load_checkpoint as _safe_load

    path = Path(path)
    try:
        st = _safe_load(path)  # torch.load(weights_only=True): never runs pickled code
    except (ValueError, FileNotFoundError) as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(st, dict) or any(k not in st for k in _KEYS):
        missing = [k for k in _KEYS if not isinstance(st, dict) or k not in st]
        raise CheckpointError(f"{path}: not a napari-gi-seg checkpoint (missing {missing})")
    try:
        st["best_metrics"] = json.loads(st.pop("best_metrics_json"))
        st["history"] = json.loads(st.pop("history_json"))
    except (TypeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: not a napari-gi-seg checkpoint (metrics are not JSON)") from None
    for k in ("global_step", "epoch_steps"):
        if k in st:
            st[k] = int(st[k])
    return st


def restore(trainer) -> None:
    """``--resume``: load ``checkpoint_last.pt`` into a set-up
    :class:`~.trainer.Trainer`: network, optimiser, scheduler (its step count, so the
    one-cycle learning rate continues where it was), the epoch and step counters, the
    best epoch, early stopping and the history. A partial epoch (:mod:`.stopping`) is
    resumed at its next step.

    Raises
    ------
    CheckpointError
        An unusable checkpoint.
    """
    t = trainer
    st = load_checkpoint(t.checkpoint_path)
    t.net.load_state_dict(st["model"])
    t.opt.load_state_dict(st["optimizer"])
    sched = t.sched
    sst = st["scheduler"]
    if int(sst.get("total_steps", -1)) == getattr(sched, "total_steps", None):
        sched.load_state_dict(sst)
    else:
        # --epochs (or steps per epoch) changed: keep the new one-cycle schedule and
        # continue it from the number of steps already taken (loading the old state
        # would end its cosine decay early and then raise past total_steps).
        sched.last_epoch = min(int(sst.get("last_epoch", 0)), sched.total_steps - 1)
        t._log(f"--resume: schedule changed to {sched.total_steps} steps; continuing at step {sched.last_epoch}")
    epoch = int(st["epoch"])
    done = int(st.get("epoch_steps", t.steps_per_epoch))
    t.global_step = int(st.get("global_step", sst.get("last_epoch", 0)))
    t.best, t.bad_epochs = float(st["best"]), int(st["bad_epochs"])
    t.best_metrics, t.history = st["best_metrics"], st["history"]
    if done < t.steps_per_epoch:
        t.start_epoch, t.resume_skip = epoch, done
        t._log(
            f"resumed from {CHECKPOINT_FILE} in epoch {epoch + 1} at step {done + 1}/{t.steps_per_epoch} "
            f"(optimiser step {t.global_step + 1}; the epoch was stopped part-way)"
        )
    else:
        t.start_epoch, t.resume_skip = epoch + 1, 0
        t._log(f"resumed from {CHECKPOINT_FILE} at epoch {epoch + 2} (optimiser step {t.global_step + 1})")
    t.last_epoch = t.start_epoch - 1


def write_history_csv(path: str | Path, rows: list[dict]) -> Path:
    """``metrics.csv``: one row per epoch, the union of the rows' keys as columns
    (temp file, then rename).

    Parameters
    ----------
    path : str or Path
        The CSV file.
    rows : list of dict
        Epoch rows.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    from .._atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return path
