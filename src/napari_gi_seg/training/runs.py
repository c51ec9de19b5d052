"""Fine-tuning run folders: find an interrupted run to resume, choose a new run
folder, and register the candidate a run left behind (an explicit choice)."""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path

from .manifest import read_manifest, write_manifest

__all__ = ["CANDIDATE_FILE", "resumable_run", "run_folder", "register_run"]

log = logging.getLogger(__name__)

#: The unregistered candidate's spec in the run folder (its weights: ``best.safetensors``).
CANDIDATE_FILE = "candidate.json"


def _runs_root() -> Path:
    from ..paths import runs_dir

    return runs_dir()


def resumable_run(name: str) -> Path | None:
    """The newest fine-tuning run folder of ``name`` that can be resumed.

    Parameters
    ----------
    name : str
        The new model's registry name.

    Returns
    -------
    Path or None
        A run folder under ``<user folder>/runs`` whose ``run.json`` is a fine-tune of
        ``name`` that was not registered and that has a ``checkpoint_last.pt``.
    """
    root = _runs_root()
    if not root.is_dir():
        return None
    cands = []
    for d in root.iterdir():
        m = read_manifest(d) if d.is_dir() else None
        if (
            m
            and m.get("kind") == "finetune"
            and m.get("name") == name
            and m.get("status") != "registered"
            and (d / "checkpoint_last.pt").exists()
        ):
            cands.append((str(m.get("updated", "")), d))
    return max(cands)[1] if cands else None


def run_folder(name: str, version: int, work_dir, resume: bool) -> Path:
    """The run folder of a fine-tune: ``work_dir`` when given; with ``resume`` the
    newest interrupted run of ``name``; else a new ``<user folder>/runs/NAME-vN``
    (with a time suffix when that folder exists from an unregistered run).

    Raises
    ------
    ValueError
        ``resume`` and no interrupted run of ``name``.
    """
    if work_dir is not None:
        return Path(work_dir)
    if resume:
        found = resumable_run(name)
        if found is None:
            raise ValueError(f"no interrupted fine-tune of {name!r} to resume in {_runs_root()}")
        return found
    work = _runs_root() / f"{name}-v{version}"
    if work.exists():  # an earlier run of the same version that was not registered: keep it
        work = work.with_name(f"{work.name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S-%f')}")
    return work


def register_run(work_dir: str | Path, allow_worse: bool = False):
    """Register the candidate a fine-tuning run left in its folder (the best epoch).

    Used for an explicit choice after :func:`finetune` did not register: a model worse
    than its parent (``allow_worse=True``) or the best epoch of a stopped run.

    Parameters
    ----------
    work_dir : str or Path
        The run folder (``candidate.json`` + ``best.safetensors``).
    allow_worse : bool
        Register a candidate whose held-back Dice is below its parent's.

    Returns
    -------
    ModelEntry
        The registered model (its version is the next free one if the planned one
        was taken meanwhile).

    Raises
    ------
    FileNotFoundError
        The folder holds no candidate.
    ValueError
        The candidate is worse than its parent and ``allow_worse`` is false.
    """
    from ..models import registry
    from ..models.spec import ModelSpec

    work = Path(work_dir)
    cand, weights = work / CANDIDATE_FILE, work / "best.safetensors"
    if not cand.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{work}: no fine-tuned candidate to register ({CANDIDATE_FILE}, best.safetensors)")
    spec = ModelSpec.load(cand)
    ft = spec.metrics.get("finetune", {})
    if ft.get("worse") and not allow_worse:
        raise ValueError(
            f"{spec.key}: held-back Dice {ft.get('dice_after'):.3f} is below its parent's "
            f"{ft.get('dice_before'):.3f}; registering it needs an explicit choice"
        )
    if any(e.name == spec.name and e.version == spec.version for e in registry.list_models()):
        spec.version = registry.next_version(spec.name)
    from ..evaluation.plots import plot_history
    from ..models.card import model_card

    card = work / "MODEL_CARD.md"
    card.write_text(model_card(spec))
    curve = work / "training_curve.png"
    hist = work / "metrics.csv"
    if hist.exists() and not curve.exists():
        import csv

        with open(hist, newline="") as f:
            rows = [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(f)]
        if rows:
            plot_history(rows, curve)
    from ..models.network import build_network, load_weights

    net = build_network(spec)
    net.load_state_dict(load_weights(weights))
    entry = registry.register_model(
        spec,
        model=net,
        half=True,
        extra_files={"MODEL_CARD.md": card, "metrics.csv": hist, "training_curve.png": curve},
    )
    write_manifest(work, status="registered", model=entry.key, reason="")
    log.info("registered %s", entry.key)
    return entry


def _num(v):
    try:
        return float(v) if v not in ("", None) else None
    except ValueError:
        return v
