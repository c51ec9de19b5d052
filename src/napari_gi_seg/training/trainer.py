"""The training loop shared by ``napari-gi-seg train`` and ``finetune``.

Recipe (defaults): 2.5D input (slice offsets -1, 0, +1), cases brought into the
model's frame (reoriented, resampled in-plane, padded/cropped to ``size`` x ``size``:
:mod:`napari_gi_seg.engine.frame`), Dice + cross-entropy (softmax) or Dice + BCE (multi-label) with
the ignore label excluded from both terms, AdamW with a one-cycle schedule (warm-up,
then cosine decay; Smith & Topin 2019), MONAI augmentation (affine, intensity,
noise; left-right flips only when no class is lateralised), AMP on CUDA,
validation Dice on held-out patients every epoch, early stopping, best checkpoint,
``--resume`` from the last checkpoint. Runs unchanged under
``torchrun --nproc_per_node N`` (DDP; gloo on CPU, NCCL on GPU): rank 0 validates,
writes and registers.

:class:`Trainer` runs a training in named steps, which ``train`` and ``finetune``
share::

    t = Trainer(cfg, progress=..., cancel=...)
    t.setup()                       # device, data, split, network, optimiser, run folder, resume
    for epoch in t.epochs():
        row = t.run_epoch(epoch)    # optimiser steps
        t.validate_epoch(epoch, row)  # validation Dice, best epoch
        t.checkpoint(epoch, row)    # checkpoint_last.pt, best.safetensors, metrics.csv
    result = t.finish()             # best weights, spec, card, curve, manifest, registration

(:meth:`Trainer.fit` does exactly this.) The run folder holds ``run.json`` (the
manifest: config, split, versions, hardware, status), ``train.log``, ``metrics.csv``,
``checkpoint_last.pt``, ``best.safetensors``, ``training_curve.png`` and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .._atomic import write_json, write_text
from .._logging import run_log_file
from .._privacy import public_dataset_name, public_ids, redactions
from ..datasets import Case, DatasetFormatError, SegDataset, fingerprint, open_dataset, split_groups
from ..engine.domain import training_frame
from ..engine.inference import resolve_device
from ..errors import InputError
from ..evaluation.plots import plot_history
from ..models.card import model_card
from ..models.network import build_network, load_state, load_weights, save_weights
from ..models.spec import ModelSpec
from ..progress import CancelCallback, ProgressCallback, emit
from .checkpoint import CHECKPOINT_FILE, restore, save_checkpoint, write_history_csv
from .config import TrainConfig, TrainResult, finetune_spec, make_spec
from .data import SliceDataset, seed_worker
from .losses import segmentation_loss
from .manifest import LOG_FILE, environment, write_manifest
from .runs import dist_info as _dist_info
from .runs import public_config, work_dir_for
from .schedule import BudgetOneCycle, one_cycle
from .step import grad_scaler, optimisation_step
from .stopping import StopControl
from .validation import metrics_record, validate

__all__ = ["TrainConfig", "TrainResult", "Trainer", "train", "make_spec", "SliceDataset", "segmentation_loss", "validate"]  # fmt: skip

log = logging.getLogger(__name__)


class Trainer:
    """One training run in named steps (see the module docstring).

    Parameters
    ----------
    cfg : TrainConfig
        The run's configuration.
    init : (ModelSpec, dict), optional
        Fine-tuning: the base model's spec and state dict; the new spec copies the
        base's (architecture, classes, normalisation) with ``parent`` = the base.
    dataset : SegDataset, optional
        An already opened dataset used instead of opening ``cfg.dataset``.
    held_out : list of Case, optional
        Loaded validation cases given by the caller (e.g. the fine-tune hold-back,
        possibly slice-level with the ignore label); then every case of the dataset
        is trained on and ``cfg.val_fraction``/``cfg.fold`` are not used.
    progress : callable, optional
        Gets :class:`~napari_gi_seg.progress.ProgressEvent` s: ``"step"`` (optimiser
        steps of the epoch, ``metrics={"loss"}``), ``"validate"`` (cases) and ``"epoch"``
        (``metrics`` = the epoch's row, also appended to ``metrics.csv``).
    cancel : callable, optional
        Polled after every optimiser step; ``True`` ends the run after finishing,
        validating and checkpointing the current epoch (at most ``cfg.stop_grace_s``
        more seconds, then the epoch is checkpointed as a partial one; see
        :mod:`.stopping`). The best epoch so far is kept; ``TrainResult.stopped`` is
        ``"cancelled"``.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        init: tuple[ModelSpec, dict] | None = None,
        dataset: SegDataset | None = None,
        held_out: list[Case] | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
    ):
        self.cfg, self.init, self.dataset, self.held_out = cfg, init, dataset, held_out
        self.world, self.rank, self.local_rank = _dist_info()
        self.distributed = self.world > 1
        self.progress = progress if self.rank == 0 else None
        self.cancel = cancel
        self.history: list[dict] = []
        self.best, self.best_metrics, self.bad_epochs, self.start_epoch = -1.0, {}, 0, 0
        self.stopped: str | None = None
        self.last_epoch = -1
        self.global_step, self.resume_skip, self.epoch_steps = 0, 0, 0
        self.stop = StopControl(cancel, cfg.stop_grace_s)
        self._improved = False
        self._stack = contextlib.ExitStack()

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Device (and DDP process group), dataset, spec and version, run folder and
        its log file, split, samples, network, optimiser and schedule; resume from
        ``checkpoint_last.pt`` when ``cfg.resume``; write ``run.json``.

        Raises
        ------
        DatasetFormatError
            A bad dataset, or (fine-tuning) classes that differ from the base's.
        CheckpointError
            ``cfg.resume`` with an unusable checkpoint.
        """
        from ..models import registry

        cfg = self.cfg
        cfg.validate()  # numeric settings in range (UsageError) before any work
        self.t_start = time.time()
        if cfg.work_dir:
            registry.check_work_dir(cfg.work_dir)  # before any work: never inside the registry
        from monai.utils import set_determinism

        set_determinism(seed=cfg.seed + self.rank)  # torch, numpy, random (and deterministic cuDNN)
        self._setup_device()
        ds = self.dataset
        if ds is None:
            ds = open_dataset(cfg.dataset, cfg.class_names, exclude=cfg.exclude, sequences=cfg.sequences)
        self.ds = ds
        self.spec = self._make_spec()
        self.work = work_dir_for(cfg, self.spec, self.rank, self.distributed)
        self.work.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            # dataset folder and case names never reach the log file (pseudonyms: napari_gi_seg._privacy)
            private = redactions(cfg.dataset, [*ds.groups, *(c.case_id for c in ds.cases)])
            self._stack.enter_context(run_log_file(self.work / LOG_FILE, redact=private))
        self._setup_data()
        self._setup_model()
        self._resume()
        if self.rank == 0:
            write_json(self.work / "config.json", public_config(cfg), default=str)
            write_manifest(
                self.work,
                kind="finetune" if self.init is not None else "train",
                name=self.spec.name,
                version=self.spec.version,
                status="running",
                config=public_config(cfg),
                dataset={
                    "name": public_dataset_name(ds.root),
                    "layout": ds.layout,
                    "fingerprint": self.spec.data_fingerprint,
                },
                split={"train": public_ids(self.train_groups), "validation": public_ids(self.val_groups)},
                **environment(str(self.device)),
                world_size=self.world,
                start_epoch=self.start_epoch,
            )

    def _setup_device(self) -> None:
        cfg = self.cfg
        if self.distributed:
            import torch.distributed as dist

            if torch.cuda.is_available() and cfg.device in ("auto", "cuda"):
                torch.cuda.set_device(self.local_rank)
                self.device, backend = torch.device("cuda", self.local_rank), "nccl"
            else:
                self.device, backend = torch.device("cpu"), "gloo"
            if not dist.is_initialized():
                dist.init_process_group(backend=backend)
        else:
            self.device = resolve_device(cfg.device)

    def _make_spec(self) -> ModelSpec:
        cfg, ds = self.cfg, self.ds
        from ..models import registry

        if self.init is not None:
            base_spec = self.init[0]
            if [c.name for c in base_spec.classes] != ds.class_names:
                raise DatasetFormatError(
                    f"{cfg.dataset}: classes {ds.class_names} differ from the base model's "
                    f"{[c.name for c in base_spec.classes]}"
                )
            spec = finetune_spec(base_spec, cfg)
        else:
            spec = make_spec(cfg, ds)
        if cfg.register and self.rank == 0 and cfg.version is None:
            spec.version = registry.next_version(spec.name)
        if self.distributed and cfg.version is None:
            # every rank must use rank 0's version (run folder, checkpoint for --resume)
            import torch.distributed as dist

            vt = torch.tensor([spec.version], dtype=torch.int64, device=self.device)
            dist.broadcast(vt, 0)
            spec.version = int(vt.item())
        return spec

    def _setup_data(self) -> None:
        from torch.utils.data import DataLoader, DistributedSampler

        cfg, ds, spec = self.cfg, self.ds, self.spec
        if self.held_out is None:
            self.train_groups, self.val_groups = split_groups(ds.groups, cfg.val_fraction, cfg.fold, cfg.seed)
        else:
            self.train_groups, self.val_groups = list(ds.groups), sorted({c.group for c in self.held_out})
        self._log(
            f"dataset {public_dataset_name(ds.root)} ({ds.layout}): {len(ds.groups)} patients, classes {ds.class_names}; "
            f"train {len(self.train_groups)} / validate {len(self.val_groups)} patients"
        )
        train_cases = [c.load() for c in ds.subset(self.train_groups).cases]
        if self.held_out is not None:
            self.val_cases = list(self.held_out)
        else:
            self.val_cases = [c.load() for c in ds.subset(self.val_groups).cases]
        spec.data_fingerprint = fingerprint(train_cases)
        spec.frame = training_frame([c.image for c in train_cases], spec, keep_frame=self.init is not None)
        lateral = any(c.mirror for c in spec.classes)  # default: flips unless lateralised (a fine-tune: as its base)
        allow_flip = (
            cfg.flip_augment if cfg.flip_augment is not None else (spec.flip_augmented if self.init else not lateral)
        )
        spec.flip_augmented = bool(allow_flip and cfg.augment) or (self.init is not None and spec.flip_augmented)
        tds = SliceDataset(train_cases, spec, augment=cfg.augment, allow_flip=allow_flip, invert=cfg.invert_intensity)
        if tds.transform is not None:
            # MONAI's random transforms draw from their own generators, which no global seed
            # reaches: seed them here, and per DataLoader worker (seed_worker).
            tds.transform.set_random_state(seed=cfg.seed + self.rank)
        self.sampler = (
            DistributedSampler(tds, self.world, self.rank, shuffle=True, seed=cfg.seed) if self.distributed else None
        )
        self.loader = DataLoader(
            tds,
            batch_size=cfg.batch_size,
            shuffle=self.sampler is None,
            sampler=self.sampler,
            num_workers=cfg.num_workers,
            drop_last=len(tds) > cfg.batch_size * self.world,
            generator=torch.Generator().manual_seed(cfg.seed),
            persistent_workers=cfg.num_workers > 0,
            worker_init_fn=seed_worker if cfg.num_workers > 0 else None,
        )
        n = len(self.loader)
        self.steps_per_epoch = n if cfg.max_steps_per_epoch is None else min(n, cfg.max_steps_per_epoch)

    def _setup_model(self) -> None:
        cfg = self.cfg
        net = build_network(self.spec)
        if self.init is not None:
            load_state(net, self.init[1])
        if cfg.freeze_encoder:
            if not hasattr(net, "encoder"):
                raise InputError(
                    f"--freeze-encoder needs an encoder-decoder (smp) network, not {self.spec.architecture}"
                )
            for p in net.encoder.parameters():
                p.requires_grad_(False)
        net.to(self.device)
        self.net, self.model = net, net
        if self.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[self.local_rank] if self.device.type == "cuda" else None
            )
        params = [p for p in net.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        total, pct = max(1, cfg.epochs * self.steps_per_epoch), 0.1 if self.init is None else 0.02
        if cfg.budget_minutes:  # one whole cycle in the wall-clock budget (training.schedule)
            self.sched = BudgetOneCycle(self.opt, cfg.lr, cfg.budget_minutes * 60.0, total, pct_start=pct)
        else:
            self.sched = one_cycle(self.opt, cfg.lr, total, pct_start=pct)
        self.scaler = grad_scaler(self.device)

    @property
    def checkpoint_path(self) -> Path:
        """``<run folder>/checkpoint_last.pt``."""
        return self.work / CHECKPOINT_FILE

    @property
    def best_path(self) -> Path:
        """``<run folder>/best.safetensors`` (full-precision weights of the best epoch)."""
        return self.work / "best.safetensors"

    def _resume(self) -> None:
        if not self.cfg.resume:
            return
        if not self.checkpoint_path.exists():
            self._log(f"--resume: no checkpoint in {self.work.name}, starting fresh")
            return
        restore(self)  # training.checkpoint: model, optimiser, schedule, step and epoch counters

    # ------------------------------------------------------------------ steps
    def epochs(self) -> Iterator[int]:
        """0-based epoch numbers still to run; ends early when a stop was decided
        (cancel, time budget, early stopping)."""
        for epoch in range(self.start_epoch, self.cfg.epochs):
            if self.stopped:
                return
            yield epoch

    def run_epoch(self, epoch: int) -> dict:
        """Train one epoch (at most ``steps_per_epoch`` optimiser steps).

        Parameters
        ----------
        epoch : int
            0-based epoch number.

        Returns
        -------
        dict
            The epoch's row: ``epoch`` (1-based), ``train_loss`` (mean), ``lr``, ``seconds``.
        """
        cfg = self.cfg
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        self.model.train()
        t0, losses = time.time(), []
        budget = isinstance(self.sched, BudgetOneCycle)
        if budget:
            self.sched.restart_clock()
        it = iter(self.loader)
        first = self.resume_skip if epoch == self.start_epoch else 0  # a partial epoch resumed at its next step
        done = first
        for step in range(first, self.steps_per_epoch):
            x, y, *u = next(it)  # u: the classes a sample does not annotate (partial labels; training.data)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            loss, lr = optimisation_step(
                self.model,
                x,
                y,
                self.opt,
                self.sched,
                self.scaler,
                multilabel=self.ds.multilabel,
                not_annotated=u[0] if u else None,
                gated=bool(self.spec.gate),
            )
            self.global_step += 1
            done = step + 1
            losses.append(loss)
            emit(
                self.progress,
                "step",
                step + 1,
                self.steps_per_epoch,
                f"epoch {epoch + 1}/{cfg.epochs}",
                loss=losses[-1],
                lr=lr,
                global_step=self.global_step,
            )
            if self.stop.after_step(epoch, cfg.epochs, step + 1, self.steps_per_epoch):
                break
            if budget and self.sched.spent:
                self.stopped = "time budget"
                self._log(f"training budget of {cfg.budget_minutes} min spent in epoch {epoch + 1}")
                break
        self.last_epoch, self.epoch_steps = epoch, done
        if self.stop.requested and not self.stopped:
            self.stopped = "cancelled"
            self._log(self.stop.report(epoch, done, self.steps_per_epoch))
        row = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "lr": self.sched.get_last_lr()[0],
            "seconds": round(time.time() - t0, 2),
            "steps": done,
        }
        if done < self.steps_per_epoch:
            row["partial"] = True
        return row

    def validate(self) -> dict:
        """Validation Dice of the current network on the validation cases (rank 0).

        Returns
        -------
        dict
            See :func:`~napari_gi_seg.training.validation.validate`.
        """
        return validate(self.net, self.spec, self.val_cases, self.device, progress=self.progress)

    def validate_epoch(self, epoch: int, row: dict) -> None:
        """Validate when due (every ``val_every`` epochs, the last one, and a stopped
        one), add the Dice to ``row`` and track the best epoch and early stopping."""
        cfg = self.cfg
        self._improved = False
        if self.rank != 0:
            return
        if not self.val_cases:
            self._improved = True  # no validation: the last epoch is the best
            return
        if (epoch + 1) % cfg.val_every and epoch + 1 != cfg.epochs and not self.stopped:
            return
        m = self.validate()
        row["val_mean_dice"] = m["mean_dice"]
        row.update({f"val_dice_{k}": v["dice"] for k, v in m["per_class"].items()})
        if "mean_kaggle_score" in m:
            row["val_kaggle_score"] = m["mean_kaggle_score"]
        score = m.get("score", m["mean_dice"])  # the Kaggle score for multi-label models
        if score > self.best:
            self.best, self.best_metrics, self._improved, self.bad_epochs = score, m, True, 0
        elif not row.get("partial"):  # a partial epoch is validated again once --resume completes it
            self.bad_epochs += 1

    def checkpoint(self, epoch: int, row: dict) -> None:
        """Rank 0 writes ``best.safetensors`` (when the epoch improved),
        ``metrics.csv`` and ``checkpoint_last.pt``, logs the row and reports it;
        then the stop decisions (time budget, early stopping) are made and shared
        with every rank."""
        cfg = self.cfg
        if self.rank == 0:
            if self._improved:
                save_weights(self.net, self.best_path)
            if self.history and self.history[-1].get("epoch") == row["epoch"]:
                self.history[-1] = row  # the completed epoch replaces its partial row
            else:
                self.history.append(row)
            write_history_csv(self.work / "metrics.csv", self.history)
            save_checkpoint(
                self.checkpoint_path,
                self.net,
                self.opt,
                self.sched,
                epoch,
                self.best,
                self.bad_epochs,
                self.best_metrics,
                self.history,
                global_step=self.global_step,
                epoch_steps=self.epoch_steps,
            )
            self._log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            emit(self.progress, "epoch", epoch + 1, cfg.epochs, f"epoch {epoch + 1}/{cfg.epochs}", **row)
        elapsed_min = (time.time() - self.t_start) / 60
        if not self.stopped and cfg.max_minutes is not None and elapsed_min > cfg.max_minutes:
            self._log(f"time budget of {cfg.max_minutes} min reached")
            self.stopped = "time budget"
        if not self.stopped and self.val_cases and self.bad_epochs >= cfg.patience:
            self._log(f"early stopping: no validation improvement for {cfg.patience} epochs")
            self.stopped = "early stopping"
        if self.distributed:
            import torch.distributed as dist

            flag = torch.tensor([1.0 if self.stopped else 0.0], device=self.device)
            dist.broadcast(flag, 0)
            if flag.item() and not self.stopped:
                self.stopped = "stopped by rank 0"

    def finish(self) -> TrainResult:
        """Load the best weights, fill the spec (validation metrics with where they
        were measured, training record), write the curve, the model card and the
        manifest, and register the model when ``cfg.register`` (rank 0).

        Returns
        -------
        TrainResult
        """
        from ..models import registry

        cfg, spec, ds = self.cfg, self.spec, self.ds
        entry = None
        if self.rank == 0:
            if self.best_path.exists():
                load_state(self.net, load_weights(self.best_path))
            bm = self.best_metrics
            spec.metrics = metrics_record(bm, self.val_groups, ds.root)
            spec.training = {
                "dataset": public_dataset_name(ds.root),
                "layout": ds.layout,
                "train_patients": public_ids(self.train_groups),
                "val_patients": public_ids(self.val_groups),
                "epochs_run": self.last_epoch + 1,
                "optimiser_steps": self.global_step,
                "stopped": self.stopped,
                "config": {k: v for k, v in public_config(cfg).items() if k != "dataset"},
                "minutes": round((time.time() - self.t_start) / 60, 1),
                "device": str(self.device),
                "world_size": self.world,
                "host": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
                "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
            png = plot_history(self.history, self.work / "training_curve.png") if self.history else None
            card = write_text(self.work / "MODEL_CARD.md", model_card(spec))
            status = "stopped" if self.stopped == "cancelled" else "finished"
            if self.global_step == 0:
                self._log("no optimiser step was taken: nothing is registered")
                status = "not-registered"
            if cfg.register and self.global_step > 0:
                entry = registry.register_model(
                    spec,
                    model=self.net,
                    half=cfg.half_weights,
                    extra_files={
                        "MODEL_CARD.md": model_card,  # called with the final spec (version)
                        "metrics.csv": self.work / "metrics.csv",
                        **({"training_curve.png": png} if png else {}),
                    },
                    next_free=cfg.version is None,  # another run may have taken the version meanwhile
                )
                write_text(card, model_card(spec))
                registry.mark_run_registered(self.work, entry)
                self._log(f"registered {spec.key}")
                status = "registered"
            write_manifest(
                self.work,
                status=status,
                stopped=self.stopped,
                epochs_run=self.last_epoch + 1,
                optimiser_steps=self.global_step,
                best_val_mean_dice=bm.get("mean_dice") if bm else None,
                model=spec.key if entry is not None else None,
            )
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
        self._stack.close()
        return TrainResult(spec, self.net.cpu().eval(), self.history, self.work, self.best_metrics, entry, self.stopped)

    def fit(self) -> TrainResult:
        """:meth:`setup`, then per epoch :meth:`run_epoch`, :meth:`validate_epoch`,
        :meth:`checkpoint`, then :meth:`finish`. A failure is logged to the run's log
        file and marks the manifest ``failed`` before it propagates."""
        try:
            self.setup()
            for epoch in self.epochs():
                row = self.run_epoch(epoch)
                self.validate_epoch(epoch, row)
                self.checkpoint(epoch, row)
            return self.finish()
        except BaseException as e:
            if self.rank == 0 and getattr(self, "work", None) is not None and self.work.is_dir():
                write_manifest(self.work, status="failed", error=str(e)[:500])
            raise
        finally:
            self._stack.close()

    def _log(self, msg: str) -> None:
        if self.rank == 0:
            log.info(msg)


def train(
    cfg: TrainConfig,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
    init: tuple[ModelSpec, dict] | None = None,
    dataset: SegDataset | None = None,
    held_out: list[Case] | None = None,
) -> TrainResult:
    """Train (or fine-tune, with ``init=(base_spec, state_dict)``) and register a model.

    ``Trainer(cfg, ...).fit()``; see :class:`Trainer` for the parameters.

    Parameters
    ----------
    cfg : TrainConfig
        The run's configuration (``cfg.register=False``: nothing is registered).
    progress, cancel : callable, optional
        The progress/cancel protocol (:mod:`napari_gi_seg.progress`).
    init, dataset, held_out
        See :class:`Trainer`.

    Returns
    -------
    TrainResult

    Raises
    ------
    DatasetFormatError
        A bad dataset.
    VersionExistsError
        The requested version exists.
    CheckpointError
        ``cfg.resume`` with an unusable checkpoint.
    """
    return Trainer(cfg, init=init, dataset=dataset, held_out=held_out, progress=progress, cancel=cancel).fit()
