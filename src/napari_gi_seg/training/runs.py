"""Run folders of training runs: where a run writes (unique per run, never inside the
model registry), what of its configuration may be written down (no local paths), which
interrupted run a ``--resume`` continues, and the registration of the candidate a
fine-tune left behind (an explicit choice). See docs/robustness.md and docs/training.md."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

from ..paths import public_path
from .manifest import write_manifest

__all__ = [
    "CANDIDATE_FILE",
    "dist_info",
    "public_config",
    "work_dir_for",
    "resumable_run",
    "run_folder",
    "register_run",
]

log = logging.getLogger(__name__)

#: The unregistered candidate's spec in the run folder (its weights: ``best.safetensors``).
CANDIDATE_FILE = "candidate.json"


def dist_info() -> tuple[int, int, int]:
    """``(WORLD_SIZE, RANK, LOCAL_RANK)`` of this process as torchrun sets them
    (``(1, 0, 0)`` outside torchrun)."""
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    return ws, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def public_config(cfg) -> dict:
    """A :class:`~.config.TrainConfig` as a dict fit for a run's ``config.json``,
    ``run.json`` or a spec: no local absolute path, and the dataset folder and the
    excluded case ids as keyed pseudonyms (:mod:`napari_gi_seg._privacy`).

    Parameters
    ----------
    cfg : TrainConfig
        The run's configuration (a dataclass).

    Returns
    -------
    dict
        ``dataclasses.asdict(cfg)`` with ``dataset`` ->
        :func:`~napari_gi_seg._privacy.public_dataset_name`, ``exclude`` ->
        :func:`~napari_gi_seg._privacy.public_ids` and ``work_dir`` ->
        :func:`napari_gi_seg.paths.public_path` (the run folder's name).
    """
    from .._privacy import public_dataset_name, public_ids

    d = asdict(cfg)
    if d.get("dataset"):
        d["dataset"] = public_dataset_name(d["dataset"])
    if d.get("work_dir"):
        d["work_dir"] = public_path(d["work_dir"])
    d["exclude"] = public_ids(d.get("exclude") or [])
    return d


def work_dir_for(cfg, spec, rank: int, distributed: bool) -> Path:
    """The run folder of a training run.

    ``cfg.work_dir`` when given (refused inside the registry); otherwise rank 0 picks
    a fresh unique folder, or with ``cfg.resume`` the newest unfinished run of
    ``spec.name`` (:func:`napari_gi_seg.models.registry.run_dir`), and under DDP
    broadcasts it to the other ranks.

    Raises
    ------
    ValueError
        ``cfg.work_dir`` is inside the model registry.
    """
    from ..models import registry

    if cfg.work_dir:
        return registry.check_work_dir(cfg.work_dir)
    work = registry.run_dir(spec.name, spec.version, resume=cfg.resume) if rank == 0 else None
    if distributed:
        import torch.distributed as dist

        box = [str(work) if work is not None else None]
        dist.broadcast_object_list(box, 0)
        work = Path(box[0])
    return work


def resumable_run(name: str) -> Path | None:
    """The newest run folder of ``name`` that can be resumed: it has a
    ``checkpoint_last.pt`` and was not registered
    (:func:`napari_gi_seg.models.registry.find_resumable_run`).

    Parameters
    ----------
    name : str
        The model's registry name.

    Returns
    -------
    Path or None
    """
    from ..models import registry

    return registry.find_resumable_run(name)


def run_folder(name: str, version: int, work_dir, resume: bool) -> Path:
    """The run folder of a fine-tune: ``work_dir`` when given (refused inside the
    registry); with ``resume`` the newest interrupted run of ``name``; else a new,
    unique one (:func:`napari_gi_seg.models.registry.new_run_dir`).

    Raises
    ------
    ValueError
        ``work_dir`` inside the registry; ``resume`` and no interrupted run of ``name``.
    """
    from ..models import registry

    if work_dir is not None:
        return registry.check_work_dir(work_dir)
    if resume:
        found = resumable_run(name)
        if found is None:
            raise ValueError(f"no interrupted fine-tune of {name!r} to resume in {registry.runs_root()}")
        return found
    return registry.new_run_dir(name, version)


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
    from .._atomic import write_text
    from ..evaluation.plots import plot_history
    from ..models.card import model_card

    curve = work / "training_curve.png"
    hist = work / "metrics.csv"
    if hist.exists() and not curve.exists():
        import csv

        with open(hist, newline="") as f:
            rows = [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(f)]
        if rows:
            plot_history(rows, curve)
    from ..models.network import build_network, load_state, load_weights

    net = build_network(spec)
    load_state(net, load_weights(weights))
    entry = registry.register_model(
        spec,
        model=net,
        half=True,
        extra_files={"MODEL_CARD.md": model_card, "metrics.csv": hist, "training_curve.png": curve},
        next_free=True,  # a concurrent run with the same name takes the next version
    )
    write_text(work / "MODEL_CARD.md", model_card(spec))
    registry.mark_run_registered(work, entry)
    write_manifest(work, status="registered", model=entry.key, reason="")
    log.info("registered %s", entry.key)
    return entry


def _num(v):
    try:
        return float(v) if v not in ("", None) else None
    except ValueError:
        return v
