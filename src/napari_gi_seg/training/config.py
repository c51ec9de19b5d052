"""What decides a training run (:class:`TrainConfig`), what it produced
(:class:`TrainResult`), and the spec of a model trained from scratch (:func:`make_spec`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..datasets import SegDataset
from ..errors import InputError
from ..models.spec import DEFAULT_ARCH, MONAI_ARCHITECTURES, ZOO_ARCHITECTURES, ClassInfo, ModelSpec, mirror_pairs

__all__ = ["TrainConfig", "TrainResult", "make_spec", "finetune_spec", "default_encoder"]


def default_encoder(arch: str) -> str:
    """The encoder (smp) or preset (MONAI) used for ``arch`` when none is given:
    ``mobilenet_v2`` for smp architectures, the first preset of a MONAI network or
    the first encoder of a zoo network (:data:`~napari_gi_seg.models.spec.ZOO_ARCHITECTURES`)."""
    presets = MONAI_ARCHITECTURES.get(arch) or ZOO_ARCHITECTURES.get(arch)
    return presets[0] if presets else "mobilenet_v2"


@dataclass
class TrainConfig:
    """Everything that decides a training run (stored in the model spec and ``run.json``)."""

    dataset: str
    name: str
    class_names: list[str] | None = None
    arch: str = DEFAULT_ARCH
    encoder: str | None = None  # None: default_encoder(arch)
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
    # wall-clock training budget: the one-cycle schedule spans it (training.schedule.BudgetOneCycle)
    budget_minutes: float | None = None
    max_steps_per_epoch: int | None = None
    val_every: int = 1
    normalisation: str = "percentile"
    augment: bool = True
    # probability of an inverted-intensity training sample (training.data.invert_intensity); 0: never
    invert_intensity: float = 0.0
    work_dir: str | None = None
    num_workers: int = 0
    half_weights: bool = True
    version: int | None = None
    description: str = ""
    # fine-tuning
    base_model: str | None = None
    freeze_encoder: bool = False
    # two-stage empty-slice gating: the gate's threshold (ModelSpec.gate); None: no gate
    gate_threshold: float | None = None
    exclude: list[str] = field(default_factory=list)
    # CHAOS layout: the contrasts to use ("t2spir,t1in,t1out"); None: all (datasets.chaos)
    sequences: list[str] | None = None
    register: bool = True
    # classes that are one connected organ (post-processing keeps the largest 3D component)
    single_component: list[str] = field(default_factory=list)
    # left-right flip augmentation; None: on unless a class is lateralised (a fine-tune: as its base model).
    # Flip test-time augmentation is only valid for models trained with it.
    flip_augment: bool | None = None
    # what a flip does to lateralised classes: "keep" (contextual, the default: chosen by the peer table in
    # docs/benchmarks.md) or "swap" (anatomical); see ModelSpec.flip_labels
    flip_labels: str = "keep"
    #: after a stop request the current epoch may run this many more seconds (training.stopping)
    stop_grace_s: float = 120.0

    def validate(self) -> None:
        """Check the numeric settings before any work.

        Raises
        ------
        UsageError
            Naming the setting and its range (``epochs``, ``batch_size``,
            ``max_steps_per_epoch`` >= 1; ``lr`` > 0; ``val_fraction`` in [0, 1);
            ``max_minutes``/``budget_minutes`` > 0; ``patience`` >= 1; ``stop_grace_s`` >= 0).
        """
        import math

        from ..errors import UsageError

        def bad(name, rule):
            raise UsageError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        for name in ("epochs", "batch_size", "patience", "val_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, "an integer >= 1")
        if self.max_steps_per_epoch is not None and (
            not isinstance(self.max_steps_per_epoch, int) or self.max_steps_per_epoch < 1
        ):
            bad("max_steps_per_epoch", "an integer >= 1 or None")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            bad("lr", "a number > 0")
        if not (isinstance(self.val_fraction, (int, float)) and 0 <= self.val_fraction < 1):
            bad("val_fraction", "in [0, 1)")
        for name in ("max_minutes", "budget_minutes"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                bad(name, "a number > 0 or None")
        v = self.invert_intensity
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and 0 <= v <= 1):
            bad("invert_intensity", "a probability in [0, 1]")
        if not (isinstance(self.stop_grace_s, (int, float)) and self.stop_grace_s >= 0):
            bad("stop_grace_s", "a number >= 0")


@dataclass
class TrainResult:
    """What a run produced.

    Attributes
    ----------
    spec : ModelSpec
        The model's spec (registered when ``entry`` is not ``None``).
    model : torch.nn.Module
        The best network, on the CPU, in eval mode.
    history : list of dict
        Epoch rows (``epoch``, ``train_loss``, ``lr``, ``seconds``, ``val_mean_dice``, ``val_dice_<class>``).
    work_dir : Path
        The run folder.
    best_metrics : dict
        The best epoch's validation metrics (see :func:`~napari_gi_seg.training.validation.validate`).
    entry : ModelEntry or None
        The registry entry when ``cfg.register``.
    stopped : str or None
        Why the run ended before ``cfg.epochs``: ``"cancelled"``, ``"time budget"``,
        ``"early stopping"``; ``None`` when every epoch ran.
    """

    spec: ModelSpec
    model: torch.nn.Module
    history: list[dict]
    work_dir: Path
    best_metrics: dict
    entry: object | None = None
    stopped: str | None = None


def make_spec(cfg: TrainConfig, ds: SegDataset) -> ModelSpec:
    """The spec of a new model trained with ``cfg`` on ``ds`` (version left to the registry).

    Parameters
    ----------
    cfg : TrainConfig
        Architecture, encoder, context, size, normalisation, single-component classes.
    ds : SegDataset
        Its class names (mirrored left/right pairs are found by name) and label kind.

    Returns
    -------
    ModelSpec

    Raises
    ------
    ValueError
        ``cfg.single_component`` names a class the dataset does not have.
    """
    mirrors = mirror_pairs(ds.class_names)
    unknown = set(cfg.single_component) - set(ds.class_names)
    if unknown:
        raise InputError(f"--single-component names {sorted(unknown)} are not classes of {ds.root} ({ds.class_names})")
    classes = [
        ClassInfo(i + 1, n, mirror=mirrors.get(n), single_component=n in cfg.single_component)
        for i, n in enumerate(ds.class_names)
    ]
    return ModelSpec(
        name=cfg.name,
        version=cfg.version or 1,
        architecture=cfg.arch,
        encoder=cfg.encoder or default_encoder(cfg.arch),
        context_offsets=tuple(cfg.context),
        input_size=(cfg.size, cfg.size),
        normalisation=cfg.normalisation,
        classes=classes,
        activation="sigmoid" if ds.multilabel else "softmax",
        flip_labels=cfg.flip_labels,
        description=cfg.description,
        gate={"threshold": float(cfg.gate_threshold)} if cfg.gate_threshold is not None else {},
    )


def finetune_spec(base_spec: ModelSpec, cfg: TrainConfig) -> ModelSpec:
    """The spec of a model fine-tuned from ``base_spec``: the base's architecture,
    classes, normalisation and frame, with ``cfg``'s name, version and description,
    ``parent`` = the base's key, and no metrics, training record or weights sha256 yet
    (registration records the new weights' sha256)."""
    return ModelSpec.from_dict(
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
            "weights_sha256": "",
        }
    )
