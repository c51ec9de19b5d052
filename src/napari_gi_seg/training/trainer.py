"""Training loop shared by ``napari-gi-seg train`` and ``finetune``.

Recipe (defaults): 2.5D input (slice offsets -1, 0, +1), slices resized to
``size`` x ``size``, Dice + cross-entropy (softmax) or Dice + BCE (multi-label) with
the ignore label excluded from both terms, AdamW with a one-cycle schedule (warm-up,
then cosine decay; Smith & Topin 2019), MONAI augmentation (affine, intensity,
noise; left-right flips only when no class is lateralised), AMP on CUDA,
validation Dice on held-out patients every epoch, early stopping, best checkpoint,
``--resume`` from the last checkpoint. Runs unchanged under
``torchrun --nproc_per_node N`` (DDP; gloo on CPU, NCCL on GPU): rank 0 validates,
writes and registers.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._atomic import atomic_path, write_json, write_text
from ..datasets import IGNORE_INDEX, Case, SegDataset, fingerprint, open_dataset, split_groups
from ..engine.inference import resolve_device, segment_volume
from ..engine.preprocess import context_indices, normalise_intensity, resize_images, resize_labels
from ..evaluation.metrics import dice_per_class
from ..models.network import build_network, load_checkpoint, save_weights
from ..models.spec import ClassInfo, ModelSpec
from ..paths import public_path
from .runs import public_config, work_dir_for


def mirror_pairs(names: list[str]) -> dict[str, str]:
    """``{"left_kidney": "right_kidney", ...}`` for class names that differ only by
    left/right (``left``/``right``, ``l``/``r`` tokens, any case)."""
    import re

    def key(n):
        return re.sub(r"(?i)(^|[_\- ])(left|right|l|r)($|[_\- ])", r"\1@\3", n)

    out = {}
    for a in names:
        for b in names:
            if a != b and key(a) == key(b) and "@" in key(a):
                out[a] = b
    return out


@dataclass
class TrainConfig:
    """Everything that decides a training run (stored in the model spec)."""

    dataset: str
    name: str
    class_names: list[str] | None = None
    arch: str = "Unet"
    encoder: str = "mobilenet_v2"
    context: tuple[int, ...] = (-1, 0, 1)
    size: int = 160
    epochs: int = 100
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.25
    fold: int = 0
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    patience: int = 30
    max_minutes: float | None = None
    max_steps_per_epoch: int | None = None
    val_every: int = 1
    normalisation: str = "percentile"
    augment: bool = True
    work_dir: str | None = None
    num_workers: int = 0
    half_weights: bool = True
    version: int | None = None
    description: str = ""
    # fine-tuning
    base_model: str | None = None
    freeze_encoder: bool = False
    exclude: list[str] = field(default_factory=list)
    register: bool = True
    # classes that are one connected organ (post-processing keeps the largest 3D component)
    single_component: list[str] = field(default_factory=list)
    # left-right flip augmentation (with left/right class swap); None: only when no class is lateralised.
    # Flip test-time augmentation is only valid for models trained with it.
    flip_augment: bool | None = None


@dataclass
class TrainResult:
    """What a run produced: the registered spec (or unregistered when
    ``register=False``), the best network, history rows, the run folder."""

    spec: ModelSpec
    model: torch.nn.Module
    history: list[dict]
    work_dir: Path
    best_metrics: dict
    entry: object | None = None


# ----------------------------------------------------------------- data
class SliceDataset(torch.utils.data.Dataset):
    """All labelled slices of a list of cases as 2.5D training samples (slices that
    are entirely the ignore label are left out; they still serve as 2.5D context).

    Volumes are normalised per volume and resized in-plane to ``(size, size)`` once at
    construction (float16 in memory). ``__getitem__`` returns ``(x, y)``:
    ``x`` ``(C, size, size)`` float32, ``y`` ``(size, size)`` int64 (softmax, with
    :data:`IGNORE_INDEX`) or ``(K, size, size)`` float32 (multi-label, 255 = ignore).
    """

    def __init__(self, cases: list[Case], spec: ModelSpec, augment: bool, allow_flip: bool):
        self.spec = spec
        # Left-right flips (p = 0.5) when allowed; for lateralised classes the flip also
        # swaps each class with its mirror (left kidney <-> right kidney), so the label
        # stays anatomically true for the flipped image.
        self.flip = bool(augment and allow_flip)
        perm = spec.mirror_permutation()
        if spec.activation == "softmax":
            lut = torch.arange(256, dtype=torch.long)
            lut[: len(perm)] = torch.tensor(perm)
            self.flip_lut, self.flip_channels = lut, None
        else:
            self.flip_lut, self.flip_channels = None, torch.tensor(perm)
        self.images, self.targets, self.index = [], [], []
        size = spec.input_size
        for ci, c in enumerate(cases):
            norm = normalise_intensity(c.image.data, spec.normalisation, spec.percentiles)
            im = resize_images(torch.from_numpy(norm)[:, None], size)[:, 0].half()
            t = torch.from_numpy(np.ascontiguousarray(c.target))
            if t.ndim == 3:
                t = resize_labels(t, size)
            else:
                t = torch.stack([resize_labels(tk, size) for tk in t])
            self.images.append(im)
            self.targets.append(t)
            # slices whose every voxel is the ignore label (not reviewed) teach nothing: skip them
            flat = t.reshape(t.shape[0], -1) if t.ndim == 3 else t.transpose(0, 1).reshape(t.shape[1], -1)
            labelled = (flat != IGNORE_INDEX).any(1)
            self.index.extend((ci, z) for z in range(im.shape[0]) if bool(labelled[z]))
        self.transform = self._make_transform() if augment else None

    @staticmethod
    def _make_transform():
        """MONAI augmentation of one 2.5D sample: geometry (affine) on image and label,
        then MR intensity variation on the image: bias field, non-linear histogram
        shift (tissue contrast differs between scanners and patients: on CHAOS the
        kidney/liver intensity ratio ranges from 1.5 to 2.4), gamma, scale, shift,
        blur and noise. No left-right flip here (see ``flip``)."""
        from monai.transforms import (
            Compose,
            RandAdjustContrastd,
            RandAffined,
            RandBiasFieldd,
            RandGaussianNoised,
            RandGaussianSmoothd,
            RandHistogramShiftd,
            RandScaleIntensityd,
            RandShiftIntensityd,
        )

        t = [
            RandAffined(
                keys=("image", "label"),
                prob=0.8,
                rotate_range=(math.radians(15),),
                scale_range=(0.15, 0.15),
                translate_range=(12, 12),
                shear_range=(0.05, 0.05),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandBiasFieldd(keys="image", coeff_range=(0.0, 0.3), prob=0.3),
            RandHistogramShiftd(keys="image", num_control_points=(5, 10), prob=0.4),
            RandAdjustContrastd(keys="image", gamma=(0.5, 2.0), prob=0.4),
            RandScaleIntensityd(keys="image", factors=0.3, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.3),
            RandGaussianSmoothd(keys="image", sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0), prob=0.1),
            RandGaussianNoised(keys="image", std=0.03, prob=0.15),
        ]
        return Compose(t)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        ci, z = self.index[i]
        im = self.images[ci]
        idx = context_indices([z], self.spec.context_offsets, im.shape[0])[0]
        x = im[idx].float()
        t = self.targets[ci]
        y = t[z] if t.ndim == 3 else t[:, z]
        if self.transform is not None:
            lab = y[None].float() if y.ndim == 2 else y.float()
            d = self.transform({"image": x, "label": lab})
            x = torch.as_tensor(d["image"]).float()
            lab = torch.as_tensor(d["label"])
            y = lab[0].round().long() if y.ndim == 2 else lab.round().float()
        else:
            y = y.long() if y.ndim == 2 else y.float()
        if self.flip and torch.rand(()) < 0.5:
            x, y = torch.flip(x, (-1,)), torch.flip(y, (-1,))
            y = self.flip_lut[y] if y.ndim == 2 else y[self.flip_channels]
        return x.contiguous(), y.contiguous()


def _seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy, ``random`` and the worker's copy of
    the MONAI transforms from the worker's torch seed (set by the loader's generator)."""
    import random

    from monai.data.utils import worker_init_fn

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002
    random.seed(seed)
    worker_init_fn(worker_id)


# ----------------------------------------------------------------- loss
def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Dice + cross-entropy (softmax) or Dice + BCE (multi-label).

    ``logits`` ``(N, C, H, W)``; ``target`` ``(N, H, W)`` int64 with
    :data:`IGNORE_INDEX` or ``(N, K, H, W)`` float {0, 1, 255}. Ignored pixels
    contribute nothing to either term, hence nothing to the gradient (the soft Dice
    of smp masks them; CE uses ``ignore_index``; BCE is masked).
    """
    from segmentation_models_pytorch.losses import DiceLoss

    if not multilabel:
        ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
        if not torch.isfinite(ce):  # every pixel ignored
            ce = logits.sum() * 0.0
        dl = DiceLoss("multiclass", from_logits=True, ignore_index=IGNORE_INDEX)(logits, target)
        return ce + dl
    valid = target != IGNORE_INDEX
    tgt = torch.where(valid, target, torch.zeros_like(target))
    bce = F.binary_cross_entropy_with_logits(logits, tgt, reduction="none")
    bce = (bce * valid).sum() / valid.sum().clamp_min(1)
    dl = DiceLoss("multilabel", from_logits=True, ignore_index=IGNORE_INDEX)(logits, target)
    return bce + dl


# ----------------------------------------------------------------- validation
def validate(net: torch.nn.Module, spec: ModelSpec, cases: list[Case], device, batch_size: int = 16) -> dict:
    """3D Dice per class on whole validation volumes at their native grid; for
    multi-label (sigmoid) models also the UW-Madison Kaggle score per class
    (:func:`~napari_gi_seg.evaluation.metrics.kaggle_score`: 0.4 x mean 2D Dice +
    0.6 x (1 - normalised 3D Hausdorff distance), per channel at probability > 0.5).

    Returns ``{"mean_dice": float, "per_class": {name: {"dice": float[, "kaggle_score": float]}},
    "per_case": {id: {name: dice}}, "score": float}``; ``score`` (what picks the best
    epoch) is the mean Kaggle score for multi-label models, else the mean Dice.
    Multi-label Dice is scored on the flattened label volume.
    """
    from ..evaluation.metrics import kaggle_score

    was = net.training
    net.eval()
    per_case, kaggle = {}, {k.name: [] for k in spec.classes}
    multilabel = spec.activation == "sigmoid"
    for c in cases:
        res = segment_volume(c.image, spec, net, batch_size=batch_size, device=device, return_probs=multilabel)
        ref = c.target if c.target.ndim == 3 else _flatten_multilabel(c.target, spec)
        d = dice_per_class(res.labels, ref, [k.index for k in spec.classes])
        per_case[c.case_id] = {k.name: d[k.index] for k in spec.classes}
        if multilabel and c.target.ndim == 4:
            ignore = (c.target == IGNORE_INDEX).any(0)
            for k in spec.classes:
                pred = res.probs[k.index - 1] > 0.5
                kaggle[k.name].append(kaggle_score(pred, c.target[k.index - 1] == 1, ignore)["kaggle_score"])
    net.train(was)
    per_class = {k.name: {"dice": float(np.mean([pc[k.name] for pc in per_case.values()]))} for k in spec.classes}
    out = {"mean_dice": float(np.mean([v["dice"] for v in per_class.values()])), "per_class": per_class}
    out["per_case"] = per_case
    out["score"] = out["mean_dice"]
    if multilabel and any(kaggle.values()):
        for name, v in kaggle.items():
            per_class[name]["kaggle_score"] = float(np.nanmean(v))
        out["mean_kaggle_score"] = float(np.mean([per_class[n]["kaggle_score"] for n in kaggle]))
        out["score"] = out["mean_kaggle_score"]
    return out


def _flatten_multilabel(masks: np.ndarray, spec: ModelSpec) -> np.ndarray:
    out = np.zeros(masks.shape[1:], np.uint8)
    for c in spec.classes:
        out[masks[c.index - 1] == 1] = c.index
    out[(masks == IGNORE_INDEX).any(0)] = IGNORE_INDEX
    return out


# ----------------------------------------------------------------- DDP helpers
def _dist_info() -> tuple[int, int, int]:
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    return ws, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def _log(msg: str, rank: int = 0) -> None:
    if rank == 0:
        print(msg, file=sys.stderr, flush=True)


def make_spec(cfg: TrainConfig, ds: SegDataset) -> ModelSpec:
    """The spec of a new model trained with ``cfg`` on ``ds`` (version left to the registry)."""
    mirrors = mirror_pairs(ds.class_names)
    unknown = set(cfg.single_component) - set(ds.class_names)
    if unknown:
        raise ValueError(f"--single-component names {sorted(unknown)} are not classes of {ds.root} ({ds.class_names})")
    classes = [
        ClassInfo(i + 1, n, mirror=mirrors.get(n), single_component=n in cfg.single_component)
        for i, n in enumerate(ds.class_names)
    ]
    return ModelSpec(
        name=cfg.name,
        version=cfg.version or 1,
        architecture=cfg.arch,
        encoder=cfg.encoder,
        context_offsets=tuple(cfg.context),
        input_size=(cfg.size, cfg.size),
        normalisation=cfg.normalisation,
        classes=classes,
        activation="sigmoid" if ds.multilabel else "softmax",
        description=cfg.description,
    )


def train(
    cfg: TrainConfig,
    on_epoch: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    init: tuple[ModelSpec, dict] | None = None,
    dataset: SegDataset | None = None,
    held_out: list[Case] | None = None,
) -> TrainResult:
    """Train (or fine-tune, with ``init=(base_spec, state_dict)``) and register a model.

    ``on_epoch(row)`` gets each epoch's metrics row (also appended to
    ``metrics.csv`` in the run folder); ``should_stop()`` is polled between steps and
    ends the run early (the best checkpoint so far is kept and registered).

    ``dataset`` (optional) is an already opened :class:`SegDataset` used instead of
    opening ``cfg.dataset`` (which is then only recorded). ``held_out`` (optional) is a
    list of loaded validation cases given by the caller (e.g. the fine-tune hold-back,
    possibly slice-level with the ignore label): then every case of the dataset is
    trained on and ``cfg.val_fraction``/``cfg.fold`` are not used.

    Raises ``DatasetFormatError`` for a bad dataset, ``VersionExistsError`` when the
    requested version exists.
    """
    from torch.utils.data import DataLoader, DistributedSampler

    from ..models import registry

    world, rank, local_rank = _dist_info()
    distributed = world > 1
    from monai.utils import set_determinism

    set_determinism(seed=cfg.seed + rank)  # torch, numpy, random (and deterministic cuDNN)
    if distributed:
        import torch.distributed as dist

        if torch.cuda.is_available() and cfg.device in ("auto", "cuda"):
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
            backend = "nccl"
        else:
            device, backend = torch.device("cpu"), "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
    else:
        device = resolve_device(cfg.device)

    t_start = time.time()
    if cfg.work_dir:
        registry.check_work_dir(cfg.work_dir)  # before any work: never inside the registry
    ds = (
        dataset
        if dataset is not None
        else open_dataset(cfg.dataset, cfg.class_names, **({"exclude": cfg.exclude} if cfg.exclude else {}))
    )
    if init is not None:
        base_spec, base_sd = init
        if [c.name for c in base_spec.classes] != ds.class_names:
            from ..datasets import DatasetFormatError

            raise DatasetFormatError(
                f"{cfg.dataset}: classes {ds.class_names} differ from the base model's {[c.name for c in base_spec.classes]}"
            )
        spec = ModelSpec.from_dict(
            {
                **base_spec.to_dict(),
                "name": cfg.name,
                "version": cfg.version or 1,
                "parent": base_spec.key,
                "metrics": {},
                "created": "",
                "software_version": "",
                "training": {},
                "description": cfg.description,
            }
        )
    else:
        spec = make_spec(cfg, ds)
    if cfg.register and rank == 0 and cfg.version is None:
        spec.version = registry.next_version(spec.name)
    if distributed and cfg.version is None:
        # every rank must use rank 0's version (run folder, checkpoint for --resume)
        import torch.distributed as dist

        vt = torch.tensor([spec.version], dtype=torch.int64, device=device)
        dist.broadcast(vt, 0)
        spec.version = int(vt.item())

    if held_out is None:
        train_groups, val_groups = split_groups(ds.groups, cfg.val_fraction, cfg.fold, cfg.seed)
    else:
        train_groups, val_groups = list(ds.groups), sorted({c.group for c in held_out})
    _log(
        f"dataset {ds.root} ({ds.layout}): {len(ds.groups)} patients, classes {ds.class_names}; "
        f"train {len(train_groups)} / validate {len(val_groups)} patients",
        rank,
    )
    train_cases = [c.load() for c in ds.subset(train_groups).cases]
    val_cases = list(held_out) if held_out is not None else [c.load() for c in ds.subset(val_groups).cases]
    spec.data_fingerprint = fingerprint(train_cases)

    allow_flip = cfg.flip_augment if cfg.flip_augment is not None else not any(c.mirror for c in spec.classes)
    spec.flip_augmented = bool(allow_flip and cfg.augment) or (init is not None and spec.flip_augmented)
    tds = SliceDataset(train_cases, spec, augment=cfg.augment, allow_flip=allow_flip)
    if tds.transform is not None:
        # MONAI's random transforms draw from their own generators, which no global seed
        # reaches: seed them here, and per DataLoader worker (MONAI's worker_init_fn seeds
        # each worker's copy from torch.initial_seed(), itself derived from `g` below).
        tds.transform.set_random_state(seed=cfg.seed + rank)
    sampler = DistributedSampler(tds, world, rank, shuffle=True, seed=cfg.seed) if distributed else None
    g = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        tds,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=cfg.num_workers,
        drop_last=len(tds) > cfg.batch_size * world,
        generator=g,
        persistent_workers=cfg.num_workers > 0,
        worker_init_fn=_seed_worker if cfg.num_workers > 0 else None,
    )

    net = build_network(spec)
    if init is not None:
        ref = net.state_dict()
        net.load_state_dict({k: v.to(ref[k].dtype) for k, v in init[1].items()})
    if cfg.freeze_encoder:
        for p in net.encoder.parameters():
            p.requires_grad_(False)
    net.to(device)
    model = net
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[local_rank] if device.type == "cuda" else None
        )

    steps_per_epoch = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=cfg.lr,
        total_steps=max(1, cfg.epochs * steps_per_epoch),
        pct_start=0.1 if init is None else 0.02,
        anneal_strategy="cos",
        div_factor=10.0,
        final_div_factor=100.0,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")

    work = work_dir_for(cfg, spec, rank, distributed)
    work.mkdir(parents=True, exist_ok=True)
    ckpt_path, best_path, csv_path = work / "checkpoint_last.pt", work / "best.safetensors", work / "metrics.csv"
    start_epoch, best, best_metrics, history, bad_epochs = 0, -1.0, {}, [], 0
    if cfg.resume and ckpt_path.exists():
        st = load_checkpoint(ckpt_path)  # never unpickles objects; a clear error for a poisoned file
        net.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        if int(st["scheduler"].get("total_steps", -1)) == sched.total_steps:
            sched.load_state_dict(st["scheduler"])
        else:
            # --epochs (or steps per epoch) changed: keep the new one-cycle schedule and
            # continue it from the number of steps already taken (loading the old state
            # would end its cosine decay early and then raise past total_steps).
            sched.last_epoch = min(int(st["scheduler"].get("last_epoch", 0)), sched.total_steps - 1)
            _log(
                f"--resume: schedule changed to {sched.total_steps} steps; continuing at step {sched.last_epoch}", rank
            )
        start_epoch, best, bad_epochs = int(st["epoch"]) + 1, float(st["best"]), int(st["bad_epochs"])
        best_metrics = json.loads(st["best_metrics_json"])
        history = json.loads(st["history_json"])
        _log(f"resumed from {ckpt_path} at epoch {start_epoch}", rank)
    elif cfg.resume:
        _log(f"--resume: no checkpoint in {work}, starting fresh", rank)
    if rank == 0:
        write_json(work / "config.json", public_config(cfg), default=str)

    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    stop = False
    epoch = start_epoch - 1
    for epoch in range(start_epoch, cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        t0, losses = time.time(), []
        it = iter(loader)
        bar = (
            tqdm(
                total=steps_per_epoch,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                leave=False,
                disable=rank != 0 or not sys.stderr.isatty(),
            )
            if tqdm
            else None
        )
        for _ in range(steps_per_epoch):
            x, y = next(it)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, enabled=device.type == "cuda"):
                logits = model(x)
            loss = segmentation_loss(logits.float(), y, ds.multilabel)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(float(loss.detach()))
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if should_stop is not None and should_stop():
                stop = True
                break
        if bar:
            bar.close()
        row = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "lr": sched.get_last_lr()[0],
            "seconds": round(time.time() - t0, 2),
        }
        improved = False
        if rank == 0 and val_cases and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs or stop):
            m = validate(net, spec, val_cases, device)
            row["val_mean_dice"] = m["mean_dice"]
            row.update({f"val_dice_{k}": v["dice"] for k, v in m["per_class"].items()})
            if "mean_kaggle_score" in m:
                row["val_kaggle_score"] = m["mean_kaggle_score"]
            if m["score"] > best:
                best, best_metrics, improved, bad_epochs = m["score"], m, True, 0
            else:
                bad_epochs += 1
        elif rank == 0 and not val_cases:
            improved = True  # no validation: the last epoch is the best
        if rank == 0:
            if improved:
                save_weights(net, best_path)
            history.append(row)
            _write_csv(csv_path, history)
            with atomic_path(ckpt_path) as tmp:
                torch.save(
                    {
                        "model": net.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "epoch": epoch,
                        "best": best,
                        "bad_epochs": bad_epochs,
                        "best_metrics_json": json.dumps(best_metrics),
                        "history_json": json.dumps(history),
                    },
                    tmp,
                )
            msg = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
            _log(msg, rank)
            if on_epoch is not None:
                on_epoch(row)
        elapsed_min = (time.time() - t_start) / 60
        if cfg.max_minutes is not None and elapsed_min > cfg.max_minutes:
            _log(f"time budget of {cfg.max_minutes} min reached", rank)
            stop = True
        if val_cases and bad_epochs >= cfg.patience:
            _log(f"early stopping: no validation improvement for {cfg.patience} epochs", rank)
            stop = True
        if distributed:
            import torch.distributed as dist

            flag = torch.tensor([1.0 if stop else 0.0], device=device)
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
        if stop:
            break

    from ..models.network import load_weights

    entry = None
    if rank == 0:
        if best_path.exists():
            sd = load_weights(best_path)
            net.load_state_dict(sd)
        spec.metrics = (
            {
                "validation": {
                    "mean_dice": best_metrics.get("mean_dice"),
                    **(
                        {"mean_kaggle_score": best_metrics["mean_kaggle_score"]}
                        if "mean_kaggle_score" in best_metrics
                        else {}
                    ),
                    "per_class": best_metrics.get("per_class", {}),
                    "per_case": best_metrics.get("per_case", {}),
                    "patients": val_groups,
                }
            }
            if best_metrics
            else {}
        )
        spec.training = {
            "dataset": public_path(ds.root),
            "layout": ds.layout,
            "train_patients": train_groups,
            "val_patients": val_groups,
            "epochs_run": epoch + 1,
            "config": {k: v for k, v in public_config(cfg).items() if k not in ("dataset",)},
            "minutes": round((time.time() - t_start) / 60, 1),
            "device": str(device),
            "world_size": world,
            "host": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        png = work / "training_curve.png"
        plot_history(history, png)
        card = work / "MODEL_CARD.md"
        write_text(card, model_card(spec))
        if cfg.register:
            entry = registry.register_model(
                spec,
                model=net,
                half=cfg.half_weights,
                extra_files={"MODEL_CARD.md": model_card, "metrics.csv": csv_path, "training_curve.png": png},
                next_free=cfg.version is None,  # another run may have taken the version meanwhile
            )
            write_text(card, model_card(spec))
            registry.mark_run_registered(work, entry)
            _log(f"registered {spec.key} in {entry.folder}", rank)
    if distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(spec, net.cpu().eval(), history, work, best_metrics, entry)


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def plot_history(history: list[dict], path: Path) -> None:
    """Training curve PNG: train loss and validation mean Dice per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ep = [r["epoch"] for r in history]
    ax.plot(ep, [r["train_loss"] for r in history], label="train loss", color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    vd = [(r["epoch"], r["val_mean_dice"]) for r in history if "val_mean_dice" in r]
    if vd:
        ax2 = ax.twinx()
        ax2.plot(*zip(*vd), label="val mean Dice", color="tab:orange")
        ax2.set_ylabel("validation mean Dice")
        ax2.set_ylim(0, 1)
    ax.set_title("training curve")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def model_card(spec: ModelSpec) -> str:
    """A Markdown model card from the spec: :func:`napari_gi_seg.models.card.model_card`."""
    from ..models.card import model_card as card

    return card(spec)
