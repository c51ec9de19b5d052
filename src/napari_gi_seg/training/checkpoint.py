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

__all__ = ["CHECKPOINT_FILE", "CheckpointError", "save_checkpoint", "load_checkpoint", "write_history_csv"]

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
        ``bad_epochs``, ``best_metrics`` (dict) and ``history`` (list of dict).

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
    return st


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
