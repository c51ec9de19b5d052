"""Fine-tune a registered model on new labelled data (e.g. exported corrections) and
register the result as a new model whose ``parent`` is the base, only when it is not
worse than the base on the same held-back data (or on an explicit choice).

What :func:`finetune` does
--------------------------
1. Loads the base model through the registry: ``spec.json`` + ``model.safetensors``
   (never pickle). The base's folder is only read, never written.
2. Opens the dataset (any layout of :func:`~napari_gi_seg.datasets.open_dataset`)
   and maps its classes to the base's **by name** (the label values are re-ordered to
   the base's order when they differ). **New structures**: the dataset's classes the
   base lacks are appended after the base's (:mod:`napari_gi_seg.models.grow`: known
   indices unchanged, so old label files stay valid; new outputs initialised fresh,
   every other weight copied; colours and TG-263 names from
   :mod:`napari_gi_seg.curation.structures`). Base classes the dataset lacks, and
   classes a case does not annotate (``dataset.json`` ``annotated_classes``), are
   partial labels: never read as background (marginal loss for softmax models,
   per-channel ignore for sigmoid ones: :mod:`napari_gi_seg.training.losses`).
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

4. Measures the held-back Dice of the base model (``dice_before``), trains with the
   :class:`~napari_gi_seg.training.trainer.Trainer` from the base weights, validating
   on the held-back part each epoch (the best epoch is kept): ``dice_after`` is the
   best epoch's held-back Dice. Because the held-back part also picks the best epoch,
   ``dice_after`` is slightly optimistic; ``epochs_run`` and the per-epoch curve are
   recorded.
5. Registers ``name`` (next free version) with ``parent = base key``, the training
   data fingerprint and ``metrics.finetune = {dice_before, dice_after, held_back,
   split, per_class_before, per_class_after, worse}`` **unless** the new model is
   worse than its parent on the held-back data (``dice_after < dice_before``) and
   ``register_if_worse`` is false, or the run was stopped (``cancel``). A model grown
   by new structures is worse when any **old** class's held-back Dice fell by more
   than :data:`OLD_CLASS_TOLERANCE` (its mean includes the new classes, which the
   parent lacks), or when an old class cannot be checked (no held-back case annotates
   it); ``metrics.finetune`` then also lists ``new_classes``, ``old_class_change``,
   ``old_classes_not_measured``, ``n_cases`` (held-back cases each class was scored
   on) and ``annotated_cases`` (cases that annotate each new class). The candidate
   (``candidate.json`` + ``best.safetensors``) then stays in the run folder, and
   :func:`register_run` registers it on an explicit choice.

Voxels with the ignore label (unreviewed slices of exported corrections) are left
out of the loss and of every Dice.

An interrupted run continues with ``resume=True`` (``napari-gi-seg finetune --resume``)
from its ``checkpoint_last.pt``, with the same held-back data (checked against the
run's ``run.json``).

For a widget: call :func:`finetune` in a worker with the progress/cancel protocol
(:mod:`napari_gi_seg.progress`), or run ``napari-gi-seg finetune ... --jsonl`` as a
subprocess and read one :class:`~napari_gi_seg.progress.ProgressEvent` per line
(``{"event": "baseline" | "step" | "validate" | "epoch" | "done", ...}``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._atomic import write_json
from .._logging import run_log_file
from .._privacy import public_dataset_name, public_ids, redactions
from ..datasets import DatasetFormatError, as_multilabel
from ..progress import CancelCallback, ProgressCallback, emit
from .holdback import open_for_base, slice_split, split_for_finetune, widen_dataset
from .manifest import LOG_FILE, read_manifest, write_manifest
from .runs import CANDIDATE_FILE, register_run, resumable_run, run_folder
from .stopping import DEFAULT_GRACE_S

__all__ = ["FinetuneResult", "finetune", "register_run", "resumable_run", "slice_split", "CANDIDATE_FILE"]

log = logging.getLogger(__name__)

#: Largest fall of an old class's held-back Dice a model grown by new structures may
#: show and still be registered without an explicit choice.
OLD_CLASS_TOLERANCE = 0.02


def held_back_comparison(per_class_before: dict, per_class_after: dict) -> dict:
    """Like-for-like held-back figures of a fine-tune.

    A grown model's mean Dice averages over its new structures too, so it cannot be
    set against the base's mean (a model that keeps every old class but scores 0.4 on
    a new one would read 0.996 -> 0.794). This compares the classes the base was
    scored on only, and lists the others on their own.

    Parameters
    ----------
    per_class_before, per_class_after : dict of str to float
        Held-back Dice per class of the base and of the new model (NaN: not scored).

    Returns
    -------
    dict
        ``{"classes": [old classes scored on the base], "before": mean over them,
        "after": the new model's mean over the same classes (NaN where it has none),
        "new": {class: Dice} for the new model's other classes}``.
    """
    old = [k for k, v in per_class_before.items() if v == v]
    after = [per_class_after.get(k, float("nan")) for k in old]
    return {
        "classes": old,
        "before": sum(per_class_before[k] for k in old) / len(old) if old else float("nan"),
        "after": sum(after) / len(after) if old else float("nan"),
        "new": {k: float(v) for k, v in per_class_after.items() if k not in per_class_before},
    }


@dataclass
class FinetuneResult:
    """What :func:`finetune` produced.

    Attributes
    ----------
    entry : ModelEntry or None
        The registered model, ``None`` when it was not registered (see ``reason``).
    spec : ModelSpec
        The new model's spec (``metrics["finetune"]`` filled).
    dice_before, dice_after : float
        Held-back mean Dice of the base and of the new model (same held-back data).
    held_back : list or dict
        Held-back patients (patient split) or ``{case_id: [slice indices]}`` (slice split),
        by keyed pseudonyms (:func:`napari_gi_seg._privacy.public_case_id`), as written
        into the spec and ``run.json``.
    split : str
        ``"patient"`` or ``"slice"``.
    history : list of dict
        Per-epoch rows.
    work_dir : Path
        The run folder (candidate, log, checkpoint, manifest).
    reason : str
        Why it was not registered (``""`` when it was).
    stopped : str or None
        ``"cancelled"`` etc. when the run ended early (see :class:`~napari_gi_seg.training.trainer.TrainResult`).
    new_classes : list of str
        Structures appended to the base's classes (empty when it was not grown).
    worse_decided : bool or None
        The decision for a grown model (an old class down by more than
        :data:`OLD_CLASS_TOLERANCE`, or not checked); ``None`` otherwise.
    """

    entry: object | None
    spec: object
    dice_before: float
    dice_after: float
    held_back: object
    split: str
    history: list[dict] = field(default_factory=list)
    work_dir: Path | None = None
    reason: str = ""
    stopped: str | None = None
    new_classes: list[str] = field(default_factory=list)
    worse_decided: bool | None = None

    @property
    def registered(self) -> bool:
        """True when the new model was registered."""
        return self.entry is not None

    @property
    def worse(self) -> bool:
        """True when the new model's held-back Dice is below its parent's (a grown
        model: when an old class fell by more than :data:`OLD_CLASS_TOLERANCE` or could
        not be checked)."""
        if self.worse_decided is not None:
            return self.worse_decided
        return bool(self.dice_after < self.dice_before)


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
    register_if_worse: bool = False,
    resume: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
    stop_grace_s: float = DEFAULT_GRACE_S,
    sequences: Sequence[str] | None = None,
) -> FinetuneResult:
    """Fine-tune registered model ``base`` on ``dataset`` and register it as ``name``
    when it is not worse than ``base`` on the held-back data.

    Parameters
    ----------
    dataset : str or Path
        Dataset folder (nnU-Net v2 export, UW-Madison, NIfTI pairs, CHAOS MR).
    base : str
        Registry key of the base model (``"name"`` or ``"name:version"``).
    name : str
        Registry name of the new model (its version is the next free one).
    epochs, lr, batch_size, device, seed, patience, augment, max_steps_per_epoch
        Training (``lr``: peak of the one-cycle schedule).
    freeze_encoder : bool
        Train only the decoder and head.
    val_fraction : float
        Share of patients (or of labelled slices, single patient) held back.
    max_minutes : float, optional
        Time budget; the best epoch so far is kept.
    class_names : sequence of str, optional
        The dataset's class names in label order (NIfTI pairs without
        ``classes.json``; default: the base's).
    work_dir : str or Path, optional
        Run folder (default ``<user folder>/runs/NAME-vN``; with ``resume``: the newest
        interrupted run of ``name``).
    description : str
        The new model's description.
    register_if_worse : bool
        Register even when the held-back Dice fell (an explicit choice; recorded as
        ``metrics.finetune.worse``).
    resume : bool
        Continue an interrupted run from its ``checkpoint_last.pt``.
    progress, cancel : callable, optional
        The progress/cancel protocol (:mod:`napari_gi_seg.progress`): events
        ``"baseline"`` (``dice_before``, ``per_class_before``, ``split``, ``held_back``),
        ``"step"``, ``"validate"``, ``"epoch"`` (the epoch's row: ``epoch``,
        ``train_loss``, ``lr``, ``seconds``, ``val_mean_dice`` = held-back Dice,
        ``val_dice_<class>``) and ``"done"`` (``model``, ``registered``, ``reason``,
        ``dice_before``, ``dice_after``, ``worse``, ``run_dir``, ...). ``cancel()``
        stops after the current epoch (finished within ``stop_grace_s`` seconds, else
        checkpointed as a partial epoch that ``resume`` completes: :mod:`.stopping`); the
        model is then not registered and the best epoch so far stays in the run folder
        for :func:`register_run`.
    stop_grace_s : float
        See ``cancel``.

    Returns
    -------
    FinetuneResult

    Raises
    ------
    ModelNotFoundError
        Unknown base model.
    DatasetFormatError
        Bad dataset, or classes that share nothing with the base's and add none.
    ValueError
        Too little labelled data to hold some back; ``resume`` with nothing to resume or
        with other held-back data than the interrupted run.
    CheckpointError
        ``resume`` with an unusable checkpoint.
    """
    from ..models import registry
    from ..models.network import load_weights, verify_weights

    t0 = time.time()
    registry.validate_name(name)
    if work_dir:
        registry.check_work_dir(work_dir)  # before any work: never inside the registry
    entry = registry.get_entry(base)
    base_spec = entry.spec()
    base_names = [c.name for c in base_spec.classes]
    ds = open_for_base(dataset, class_names, base_names, sequences)
    base_spec, new_names, ds = _grown(base_spec, ds)
    base_names = [c.name for c in base_spec.classes]
    if ds.multilabel and base_spec.activation != "sigmoid":
        raise DatasetFormatError(
            f"{ds.root}: a multi-label dataset cannot fine-tune the {base_spec.activation} model {entry.key}"
        )
    if base_spec.activation == "sigmoid":
        ds = as_multilabel(ds)  # a single-label export: one channel per class, ignore in every channel
    train_ds, held_cases, held_back, split = split_for_finetune(ds, base_names, val_fraction, seed)
    # {case: [z]} as JSON writes it (str keys), by keyed pseudonyms: case ids come from file names
    raw_held = json.loads(json.dumps(held_back))
    held_json = public_ids(raw_held)
    version = registry.next_version(name)
    work = run_folder(name, version, work_dir, resume)
    prior = read_manifest(work) if resume else None
    if prior is not None:
        if prior.get("held_back") not in (held_json, raw_held) or prior.get("base") != entry.key:
            from ..errors import InputError

            raise InputError(
                f"{work.name}: cannot resume: the run fine-tuned {prior.get('base')} holding back "
                f"{prior.get('held_back')}, this call gives {entry.key} holding back {held_json} "
                "(use the same dataset, --model, --val-fraction and --seed)"
            )
        version = int(prior.get("version", version))
    work.mkdir(parents=True, exist_ok=True)
    private = redactions(dataset, [*ds.groups, *(c.case_id for c in ds.cases)])
    with run_log_file(work / LOG_FILE, redact=private):
        log.info("fine-tuning %s on %s as %s (run folder %s)", entry.key, public_dataset_name(ds.root), name, work.name)
        before = (prior or {}).get("baseline")
        if not before:
            before = _baseline(entry, base_spec, held_cases, device)
        write_manifest(work, kind="finetune", name=name, version=version, base=entry.key, split=split)
        write_manifest(work, held_back=held_json, baseline=before)
        emit(
            progress,
            "baseline",
            1,
            1,
            f"{entry.key}: held-back mean Dice {before['mean_dice']:.3f}",
            base=entry.key,
            split=split,
            held_back=held_json,
            dice_before=before["mean_dice"],
            per_class_before=before["per_class"],
        )
        args = dict(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            val_fraction=val_fraction,
            seed=seed,
            device=device,
            resume=resume,
            patience=patience,
            max_minutes=max_minutes,
            max_steps_per_epoch=max_steps_per_epoch,
            augment=augment,
            description=description,
            freeze_encoder=freeze_encoder,
            stop_grace_s=stop_grace_s,
        )
        verify_weights(base_spec, entry.weights_path)
        state_dict = load_weights(entry.weights_path)
        if new_names:
            from ..models.grow import grow_state_dict

            state_dict = grow_state_dict(state_dict, base_spec, seed=seed)
            log.info("new structure(s) %s appended to %s's outputs", new_names, entry.key)
        absent = absent_from_held_back(held_cases, base_names, new_names, base_spec.activation == "sigmoid")
        if absent:  # choosing the epoch on a structure's absence keeps the epoch that never paints it
            args["val_every"] = max(1, int(epochs))
            log.warning(
                "the held-back cases hold no %s: the epoch is not chosen on them, the last epoch is kept "
                "(export a case that shows it to have it checked)",
                ", ".join(absent),
            )
        res = _train(
            ds, train_ds, held_cases, entry, base_spec, name, version, work, args, state_dict, progress, cancel
        )
        out = _decide(res, entry, before, held_json, split, work, register_if_worse, ds, new_names, absent)
        emit(
            progress,
            "done",
            1,
            1,
            out.reason or f"registered {out.spec.key}",
            model=out.spec.key if out.registered else None,  # a candidate has no version until registered
            candidate=out.spec.name,
            parent=entry.key,
            registered=out.registered,
            reason=out.reason,
            stopped=out.stopped,
            worse=out.worse,
            dice_before=out.dice_before,
            dice_after=out.dice_after,
            per_class_before=out.spec.metrics["finetune"].get("per_class_before"),
            per_class_after=out.spec.metrics["finetune"].get("per_class_after"),
            new_classes=list(new_names),
            split=split,
            epochs_run=len(res.history),
            minutes=round((time.time() - t0) / 60, 2),
            run_dir=str(work),
            log_file=str(work / LOG_FILE),
        )
    return out


def _grown(base_spec, ds):
    """``(spec, new_names, dataset)``: the base's spec grown by the dataset's classes it
    lacks (:func:`~napari_gi_seg.models.grow.grow_spec`), and the dataset in that class
    order (:func:`~napari_gi_seg.training.holdback.widen_dataset`); unchanged when the
    dataset has exactly the base's classes.

    Raises :class:`DatasetFormatError` for a dataset that shares no class with the base
    and adds none (nothing to learn)."""
    from ..curation.structures import structure_for
    from ..models.grow import grow_spec, new_class_names

    base_names = [c.name for c in base_spec.classes]
    if sorted(ds.class_names) == sorted(base_names):
        return base_spec, [], ds
    new = new_class_names(base_spec, ds.class_names)
    if not new and not set(ds.class_names) & set(base_names):
        raise DatasetFormatError(f"{ds.root}: classes {ds.class_names} share nothing with {base_spec.key}'s")
    infos = [structure_for(n) for n in new]
    spec = grow_spec(
        base_spec, [{"name": s.name, "colour": s.colour, "single_component": s.single_component} for s in infos]
    )
    return spec, new, widen_dataset(ds, [c.name for c in spec.classes])


def _baseline(entry, base_spec, held_cases, device) -> dict:
    from ..engine.inference import resolve_device
    from ..models.network import load_network
    from .validation import validate

    dev = resolve_device(device)
    base_spec = entry.spec()  # the parent as registered (not grown): its classes only
    base_net = load_network(base_spec, entry.weights_path, dev)
    m = validate(base_net, base_spec, held_cases, dev)
    log.info("base %s: held-back mean Dice %.4f", entry.key, m["mean_dice"])
    return {
        "mean_dice": m["mean_dice"],
        "per_class": {k: v["dice"] for k, v in m["per_class"].items()},
        "n_cases": {k: v.get("n_cases") for k, v in m["per_class"].items()},
    }


def _train(ds, train_ds, held_cases, entry, base_spec, name, version, work, args: dict, state_dict, progress, cancel):
    """Run the :class:`~napari_gi_seg.training.trainer.Trainer` from the base weights
    (nothing registered)."""
    from .trainer import TrainConfig, Trainer

    cfg = TrainConfig(
        dataset=str(ds.root),
        name=name,
        class_names=[c.name for c in base_spec.classes],
        arch=base_spec.architecture,
        encoder=base_spec.encoder,
        context=tuple(base_spec.context_offsets),
        size=int(base_spec.input_size[0]),
        epochs=args["epochs"],
        batch_size=args["batch_size"],
        lr=args["lr"],
        val_fraction=args["val_fraction"],
        seed=args["seed"],
        device=args["device"],
        resume=args["resume"],
        patience=args["patience"],
        val_every=args.get("val_every", 1),
        max_minutes=args["max_minutes"],
        max_steps_per_epoch=args["max_steps_per_epoch"],
        normalisation=base_spec.normalisation,
        augment=args["augment"],
        work_dir=str(work),
        version=version,
        description=args["description"] or f"{entry.key} fine-tuned on {public_dataset_name(ds.root)}",
        base_model=entry.key,
        freeze_encoder=args["freeze_encoder"],
        register=False,
        stop_grace_s=args["stop_grace_s"],
    )
    t = Trainer(
        cfg,
        init=(base_spec, state_dict),
        dataset=train_ds,
        held_out=held_cases,
        progress=progress,
        cancel=cancel,
    )
    return t.fit()


def absent_from_held_back(held_cases, names, new_names, multilabel: bool = False) -> list[str]:
    """New structures without a single voxel in any held-back case.

    Held-back Dice of a structure that is absent is 1 for an empty prediction, so the
    best epoch would be the one that never paints it (measured on the UW-Madison
    rehearsal: 1.0 at epoch 1, 0.0 at epoch 200, epoch 1 kept). :func:`finetune`
    keeps the last epoch instead.

    Parameters
    ----------
    held_cases : list of Case
        Held-back cases, targets in the model's class order (``(z, y, x)`` labels, or
        ``(K, z, y, x)`` channels for sigmoid models; the ignore label left out).
    names : list of str
        The (grown) model's class names in index order.
    new_names : sequence of str
        The structures appended to the base.
    multilabel : bool
        Targets are channels.

    Returns
    -------
    list of str
        The new structures no held-back voxel shows.
    """
    from ..datasets import IGNORE_INDEX

    out = []
    for n in new_names:
        i = names.index(n) + 1
        if multilabel:
            seen = any(c.target.ndim == 4 and ((c.target[i - 1] > 0) & (c.target[i - 1] != IGNORE_INDEX)).any()
                       for c in held_cases)  # fmt: skip
        else:
            seen = any(c.target.ndim == 3 and (c.target == i).any() for c in held_cases)
        if not seen:
            out.append(n)
    return out


def _decide(
    res, entry, before, held_json, split, work, register_if_worse, ds, new_names=(), absent=()
) -> FinetuneResult:
    """Fill the spec's fine-tune metrics, keep the candidate in the run folder and
    register it unless it is worse than its parent (without ``register_if_worse``; a
    grown model: an old class down by more than :data:`OLD_CLASS_TOLERANCE`) or the
    run was stopped."""
    spec = res.spec
    bm = res.best_metrics or {}
    after = {
        "mean_dice": float(bm.get("mean_dice", float("nan"))),
        "per_class": {k: v["dice"] for k, v in bm.get("per_class", {}).items()},
    }
    change = {
        k: after["per_class"].get(k, float("nan")) - b
        for k, b in before["per_class"].items()
        if b == b  # an old class scored on the held-back data
    }
    unmeasured = [k for k, n in (before.get("n_cases") or {}).items() if not n]
    if new_names:
        worse = bool(unmeasured) or any(not (d >= -OLD_CLASS_TOLERANCE) for d in change.values())  # NaN: worse
    else:
        worse = not (after["mean_dice"] >= before["mean_dice"])  # NaN counts as worse
    spec.parent = entry.key
    spec.metrics["finetune"] = {
        "dice_before": before["mean_dice"],
        "dice_after": after["mean_dice"],
        "worse": worse,
        "held_back": held_json,
        "split": split,
        "dataset": public_dataset_name(ds.root),
        "per_class_before": before["per_class"],
        "per_class_after": after["per_class"],
        "base": entry.key,
    }
    if new_names:
        spec.metrics["finetune"].update(
            new_classes=list(new_names),
            old_class_change={k: round(v, 4) for k, v in change.items()},
            old_class_tolerance=OLD_CLASS_TOLERANCE,
            old_classes_not_measured=unmeasured,
            n_cases={k: v.get("n_cases") for k, v in bm.get("per_class", {}).items()},
            annotated_cases={n: sum(n in a for a in ds.annotated_classes().values()) for n in new_names},
            absent_from_held_back=list(absent),
            epoch_kept="last (a new structure is absent from the held-back cases)" if absent else "best held-back",
        )
        cmp = held_back_comparison(before["per_class"], after["per_class"])
        spec.metrics["finetune"].update(old_classes_before=cmp["before"], old_classes_after=cmp["after"])
    spec.training["split"] = split
    spec.training["held_back"] = held_json
    write_json(work / CANDIDATE_FILE, spec.to_dict())
    if new_names:
        log.info(
            "held-back (%s-level) mean Dice of the base's classes (%s): parent %s %.4f -> fine-tuned %.4f%s; "
            "new structure(s): %s",
            split,
            ", ".join(cmp["classes"]) or "none scored",
            entry.key,
            cmp["before"],
            cmp["after"],
            " (worse)" if worse else "",
            ", ".join(f"{k} {v:.4f}" for k, v in cmp["new"].items()),
        )
    else:
        log.info(
            "held-back (%s-level) mean Dice: parent %s %.4f -> fine-tuned %.4f%s",
            split,
            entry.key,
            before["mean_dice"],
            after["mean_dice"],
            " (worse)" if worse else "",
        )
    reason = ""
    if res.stopped == "cancelled":
        reason = f"stopped after {len(res.history)} epoch(s): not registered; the best epoch so far is kept in the run folder"
    elif worse and not register_if_worse and new_names:
        fell = ", ".join(f"{k} {v:+.3f}" for k, v in change.items() if not v >= -OLD_CLASS_TOLERANCE)
        why = f"old class(es) fell by more than {OLD_CLASS_TOLERANCE} on the held-back data ({fell})" if fell else ""
        if unmeasured:
            why += ("; " if why else "") + (
                f"old class(es) {', '.join(unmeasured)} not checked: no held-back case annotates them "
                "(export some cases with them annotated)"
            )
        reason = f"{why}: not registered (register it anyway with --register-if-worse)"
    elif worse and not register_if_worse:
        reason = (
            f"held-back Dice fell from {before['mean_dice']:.3f} ({entry.key}) to {after['mean_dice']:.3f}: "
            "not registered (register it anyway with --register-if-worse)"
        )
    new_entry = None
    if reason:
        log.warning(reason)
        write_manifest(work, status="not-registered", reason=reason, dice_after=after["mean_dice"], worse=worse)
    else:
        new_entry = register_run(work, allow_worse=True)
        spec = new_entry.spec()
    return FinetuneResult(
        new_entry,
        spec,
        before["mean_dice"],
        after["mean_dice"],
        held_json,
        split,
        res.history,
        work,
        reason,
        res.stopped,
        list(new_names),
        worse if new_names else None,
    )
