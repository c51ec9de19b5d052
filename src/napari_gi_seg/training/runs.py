"""Run folders of training runs: where a run writes (unique per run, never inside the
model registry) and what of its configuration may be written down (no local paths).
See docs/robustness.md."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..paths import public_path


def public_config(cfg) -> dict:
    """A :class:`~.trainer.TrainConfig` as a dict fit for a run's ``config.json`` or a
    spec: the dataset and work folders by name only (no local absolute paths).

    Parameters
    ----------
    cfg: the run's ``TrainConfig`` (a dataclass).

    Returns
    -------
    dict
        ``dataclasses.asdict(cfg)`` with ``dataset`` and ``work_dir`` passed through
        :func:`napari_gi_seg.paths.public_path`.
    """
    d = asdict(cfg)
    for k in ("dataset", "work_dir"):
        if d.get(k):
            d[k] = public_path(d[k])
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
