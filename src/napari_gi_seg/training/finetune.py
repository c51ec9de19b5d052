"""Fine-tune a registered model on new labelled data (e.g. exported corrections) and
register the result as a new model whose ``parent`` is the base.

What :func:`finetune` does
--------------------------
1. Loads the base model through the registry: ``spec.json`` + ``model.safetensors``
   (never pickle). The base's folder is only read, never written.
2. Opens the dataset (any layout of :func:`~napari_gi_seg.datasets.open_dataset`)
   and maps its classes to the base's **by name** (same set of names required; the
   label values are re-ordered to the base's order when they differ).
3. Holds back part of the data, never trained on:

   * **patient level** when the dataset has >= 2 patients (groups):
     :func:`~napari_gi_seg.datasets.split_groups` with ``val_fraction``
     and ``seed`` (all days/cases of a patient stay together);
   * **slice level** when it has a single patient: every ``k``-th labelled slice
     (``k = round(1 / val_fraction)``, starting at ``k // 2``) of each case is held
     back. Those slices are set to the ignore label in the training copy, and every
     other slice is set to the ignore label in the held-back copy. Neighbouring
     slices still feed the 2.5D input, and adjacent slices look alike, so this
     estimate is optimistic compared with a patient-level one.

4. Measures the held-back Dice of the base model (``dice_before``), trains with
   :func:`~napari_gi_seg.training.trainer.train` from the base weights
   (``init=(base_spec, state_dict)``), validating on the held-back part each epoch
   (the best epoch is kept), then measures ``dice_after`` with the kept weights.
   Because the held-back part also picks the best epoch, ``dice_after`` is slightly
   optimistic; ``epochs_run`` and the per-epoch curve are recorded.
5. Registers ``name`` (next free version) with ``parent = base key``, the training
   data fingerprint and ``metrics.finetune = {dice_before, dice_after, held_back,
   split, per_class_before, per_class_after}``.

Voxels with the ignore label (unreviewed slices of exported corrections) are left
out of the loss and of every Dice.

For a widget: call :func:`finetune` in a worker thread with ``on_epoch`` (gets each
epoch's metrics row) and ``should_stop`` (polled between steps), or run
``napari-gi-seg finetune ... --jsonl`` as a subprocess and read one JSON object per
line from stdout (``{"event": "start" | "epoch" | "done", ...}``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..datasets import (
    IGNORE_INDEX,
    Case,
    CaseRef,
    DatasetFormatError,
    SegDataset,
    detect_layout,
    open_dataset,
    split_groups,
)


@dataclass
class FinetuneResult:
    """``entry``: the registered :class:`~napari_gi_seg.models.registry.ModelEntry`;
    ``spec``: its spec; ``dice_before``/``dice_after``: held-back mean Dice of the base
    and of the new model; ``held_back``: held-back patients (patient split) or
    ``{case_id: [slice indices]}`` (slice split); ``history``: per-epoch rows."""

    entry: object
    spec: object
    dice_before: float
    dice_after: float
    held_back: object
    split: str
    history: list[dict] = field(default_factory=list)
    work_dir: Path | None = None


def _remap(target: np.ndarray, order: list[int]) -> np.ndarray:
    """Re-order classes: ``order[k]`` = dataset label value (or channel + 1) of the base's
    class ``k + 1``."""
    if order == list(range(1, len(order) + 1)):
        return target
    if target.ndim == 4:
        return np.ascontiguousarray(target[[v - 1 for v in order]])
    out = np.zeros_like(target)
    for k, v in enumerate(order):
        out[target == v] = k + 1
    out[target == IGNORE_INDEX] = IGNORE_INDEX
    return out


def _labelled_slices(target: np.ndarray) -> list[int]:
    valid = np.asarray(target) != IGNORE_INDEX
    if valid.ndim == 4:  # (K, z, y, x): a slice is labelled when any channel is
        valid = valid.any(0)
    reviewed = valid.reshape(valid.shape[0], -1).any(1)
    return [int(z) for z in np.nonzero(reviewed)[0]]


def slice_split(case: Case, val_fraction: float) -> tuple[Case, Case, list[int]]:
    """Slice-level hold-back within one case (see module docstring).

    Returns ``(train_case, held_back_case, held_back_slices)``; both cases share the
    image, their targets have the other part set to :data:`IGNORE_INDEX`.
    Raises ``ValueError`` when the case has fewer than 2 labelled slices.
    """
    lab = _labelled_slices(case.target)
    if len(lab) < 2:
        raise ValueError(f"case {case.case_id}: need at least 2 labelled slices to hold some back, found {len(lab)}")
    k = max(2, int(round(1.0 / max(val_fraction, 1e-6))))
    held = lab[k // 2 :: k] or [lab[len(lab) // 2]]
    t_train, t_val = case.target.copy(), np.full_like(case.target, IGNORE_INDEX)
    if case.target.ndim == 3:
        t_train[held] = IGNORE_INDEX
        t_val[held] = case.target[held]
    else:
        t_train[:, held] = IGNORE_INDEX
        t_val[:, held] = case.target[:, held]
    return (
        Case(case.case_id, case.group, case.image, t_train),
        Case(case.case_id, case.group, case.image, t_val),
        held,
    )


def _open_for(dataset, class_names, base_names) -> SegDataset:
    root = Path(dataset)
    if class_names is None and detect_layout(root) == "nifti-pairs" and not (root / "classes.json").exists():
        class_names = base_names  # unnamed label values: assume the base's order
    return open_dataset(root, class_names)


def finetune(
    dataset: str | Path,
    base: str,
    name: str,
    epochs: int = 20,
    lr: float = 5e-4,
    freeze_encoder: bool = False,
    val_fraction: float = 0.25,
    batch_size: int = 8,
    device: str = "auto",
    max_minutes: float | None = None,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    max_steps_per_epoch: int | None = None,
    patience: int = 1000,
    augment: bool = True,
    work_dir: str | Path | None = None,
    description: str = "",
    on_epoch: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_event: Callable[[dict], None] | None = None,
) -> FinetuneResult:
    """Fine-tune registered model ``base`` on ``dataset`` and register it as ``name``.

    Parameters
    ----------
    dataset: dataset folder (nnU-Net v2 export, UW-Madison, NIfTI pairs).
    base: registry key of the base model (``"name"`` or ``"name:version"``).
    name: registry name of the new model (its version is the next free one).
    epochs, lr (peak of the one-cycle schedule), batch_size, device, seed: training.
    freeze_encoder: train only the decoder and head.
    val_fraction: share of patients (or of labelled slices, single patient) held back.
    max_minutes: time budget; the best weights so far are registered.
    class_names: the dataset's class names in label order (NIfTI pairs without
        ``classes.json``; default: the base's).
    on_epoch(row): each epoch's row (``epoch``, ``train_loss``, ``lr``, ``seconds``,
        ``val_mean_dice`` = held-back Dice, ``val_dice_<class>``).
    should_stop(): polled between steps; True ends the run early (still registered).
    on_event(obj): ``{"event": "start", "dice_before": ..., ...}`` and
        ``{"event": "done", ...}`` (used by ``--jsonl``).

    Returns a :class:`FinetuneResult`.

    Raises
    ------
    ModelNotFoundError
        Unknown base model.
    DatasetFormatError
        Bad dataset, or class names that differ from the base's (lists both).
    ValueError
        Too little labelled data to hold some back.
    """
    import torch

    from .._atomic import write_text
    from ..engine.inference import resolve_device
    from ..models import registry
    from ..models.network import load_network, load_weights
    from .trainer import TrainConfig, model_card, train, validate

    t0 = time.time()
    registry.validate_name(name)
    if work_dir:
        registry.check_work_dir(work_dir)  # before any work: never inside the registry
    entry = registry.get_entry(base)
    base_spec = entry.spec()
    state_dict = load_weights(entry.weights_path)
    base_names = [c.name for c in base_spec.classes]

    ds = _open_for(dataset, class_names, base_names)
    if sorted(ds.class_names) != sorted(base_names):
        raise DatasetFormatError(
            f"{ds.root}: classes {ds.class_names} differ from the base model {entry.key}'s "
            f"{base_names}; fine-tuning needs the same class names"
        )
    if ds.multilabel != (base_spec.activation == "sigmoid"):
        raise DatasetFormatError(
            f"{ds.root}: a {'multi-label' if ds.multilabel else 'single-label'} dataset cannot fine-tune "
            f"the {base_spec.activation} model {entry.key}"
        )
    order = [ds.class_names.index(n) + 1 for n in base_names]

    def remapped(ref: CaseRef) -> CaseRef:
        def load() -> Case:
            c = ref.load()
            return Case(c.case_id, c.group, c.image, _remap(c.target, order))

        return CaseRef(ref.case_id, ref.group, load)

    groups = ds.groups
    if len(groups) >= 2:
        split = "patient"
        train_groups, held_groups = split_groups(groups, val_fraction, 0, seed)
        train_refs = [remapped(c) for c in ds.subset(train_groups).cases]
        held_cases = [remapped(c).load() for c in ds.subset(held_groups).cases]
        held_back: object = held_groups
    else:
        split = "slice"
        train_refs, held_cases, held_back = [], [], {}
        for ref in ds.cases:
            c = remapped(ref).load()
            tr, va, held = slice_split(c, val_fraction)
            train_refs.append(CaseRef(tr.case_id, tr.group, (lambda tr=tr: tr)))
            held_cases.append(va)
            held_back[c.case_id] = held
    train_ds = SegDataset(ds.root, ds.layout, list(base_names), train_refs, ds.multilabel, ds.extra)

    dev = resolve_device(device)
    base_net = load_network(base_spec, entry.weights_path, dev)
    before = validate(base_net, base_spec, held_cases, dev)
    del base_net
    if on_event is not None:
        on_event(
            {
                "event": "start",
                "base": entry.key,
                "split": split,
                "held_back": held_back,
                "dice_before": before["mean_dice"],
                "per_class_before": {k: v["dice"] for k, v in before["per_class"].items()},
            }
        )

    version = registry.next_version(name)  # tentative: registration takes the next free one
    work = registry.check_work_dir(work_dir) if work_dir else registry.new_run_dir(name, version)
    cfg = TrainConfig(
        dataset=str(ds.root),
        name=name,
        class_names=list(base_names),
        arch=base_spec.architecture,
        encoder=base_spec.encoder,
        context=tuple(base_spec.context_offsets),
        size=int(base_spec.input_size[0]),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        val_fraction=val_fraction,
        seed=seed,
        device=str(dev),
        patience=patience,
        max_minutes=max_minutes,
        max_steps_per_epoch=max_steps_per_epoch,
        normalisation=base_spec.normalisation,
        augment=augment,
        work_dir=str(work),
        version=version,
        description=description or f"{entry.key} fine-tuned on {ds.root.name}",
        base_model=entry.key,
        freeze_encoder=freeze_encoder,
        register=False,
    )
    res = train(
        cfg,
        on_epoch=on_epoch,
        should_stop=should_stop,
        init=(base_spec, state_dict),
        dataset=train_ds,
        held_out=held_cases,
    )
    spec = res.spec
    after = validate(res.model.to(dev), spec, held_cases, dev)
    spec.parent = entry.key
    spec.metrics["finetune"] = {
        "dice_before": before["mean_dice"],
        "dice_after": after["mean_dice"],
        "held_back": held_back,
        "split": split,
        "per_class_before": {k: v["dice"] for k, v in before["per_class"].items()},
        "per_class_after": {k: v["dice"] for k, v in after["per_class"].items()},
        "base": entry.key,
    }
    spec.training["split"] = split
    spec.training["held_back"] = held_back

    def card(s) -> str:
        return (
            model_card(s) + f"\n## Fine-tuning\n\nFrom `{entry.key}`; held-back ({split}-level) mean Dice "
            f"{before['mean_dice']:.3f} before -> {after['mean_dice']:.3f} after.\n"
        )

    new_entry = registry.register_model(
        spec,
        model=res.model.cpu(),
        half=True,
        extra_files={
            "MODEL_CARD.md": card,
            "metrics.csv": work / "metrics.csv",
            "training_curve.png": work / "training_curve.png",
        },
        next_free=True,  # a concurrent fine-tune with the same name takes the next version
    )
    write_text(work / "MODEL_CARD.md", card(spec))
    registry.mark_run_registered(work, new_entry)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    out = FinetuneResult(new_entry, spec, before["mean_dice"], after["mean_dice"], held_back, split, res.history, work)
    if on_event is not None:
        on_event(
            {
                "event": "done",
                "model": spec.key,
                "parent": entry.key,
                "folder": str(new_entry.folder),
                "dice_before": before["mean_dice"],
                "dice_after": after["mean_dice"],
                "epochs_run": len(res.history),
                "minutes": round((time.time() - t0) / 60, 2),
            }
        )
    return out
