"""Patient adaptation: fine-tune a copy of a model on a few corrected slices of one scan.

On an MR-Linac the same patient is scanned every treatment day. Once a clinician has
corrected (and reviewed) a handful of slices of today's scan, :func:`adapt_to_scan`
fine-tunes a **copy** of the model on exactly those slices (every other slice of the
scan is the ignore label: it still feeds the 2.5D context of its neighbours but gives
no loss), and :func:`resegment_except` re-segments the slices nobody has touched with
the adapted copy. The base model is never changed; :func:`keep_for_patient`
(:mod:`napari_gi_seg.training.patient_models`) registers the adapted copy under a
pseudonymous patient key so the next treatment day starts from it.

Recipe (measured in ``benchmarks/patient_adaptation.py``, docs/benchmarks.md): the
trainer's 2.5D sample pipeline (:class:`~napari_gi_seg.training.trainer.SliceDataset`:
the spec's normalisation, context offsets and input size) and loss
(:func:`~napari_gi_seg.training.trainer.segmentation_loss`: Dice + cross-entropy or
Dice + BCE, ignore label excluded) and optimisation step
(:func:`~napari_gi_seg.training.step.optimisation_step`: AMP on CUDA), AdamW on the
trainer's one-cycle schedule (:func:`~napari_gi_seg.training.schedule.one_cycle`:
warm-up over the first 10 % of the steps, then cosine decay to 1 % of the peak), and an
augmentation for few slices (:class:`FewSliceAugment`): every step draws a batch of
random augmented copies of the corrected slices (with replacement), so 5 slices make
a batch of 8 distinct samples. BatchNorm statistics are updated, which also adapts
them to this scan's intensities.

Everything here is GUI-free; the widget (:mod:`napari_gi_seg._qt.adapt_panel`) runs
:func:`adapt_to_scan` in a napari ``thread_worker`` and the CLI calls
:func:`adapt_from_files` (``napari-gi-seg segment SCAN -o OUT --adapt LABELS
--adapt-slices 12,17,22``).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..datasets import IGNORE_INDEX, Case
from ..engine.inference import resolve_device, segment_volume
from ..engine.postprocess import postprocess_labels
from ..errors import InputError
from ..evaluation.metrics import dice_per_class
from ..io.volume import Volume
from ..models.spec import ModelSpec
from ..progress import CancelCallback, ProgressCallback, emit
from .augment import FewSliceAugment
from .data import SliceDataset
from .schedule import one_cycle
from .step import grad_scaler, optimisation_step

log = logging.getLogger(__name__)

#: Default number of optimiser steps (batch 8): ~25-35 s on 2 CPU threads for a 160 px model.
DEFAULT_STEPS = 40
#: Peak learning rate: one tenth of the training recipe's, a gentle nudge of a trained model.
DEFAULT_LR = 3e-4


@dataclass
class AdaptationResult:
    """What :func:`adapt_to_scan` produced.

    Attributes
    ----------
    net
        The adapted copy (CPU, eval mode, float32).
    spec
        Its spec: a copy of the base's with ``name = "<base>-adapted"``, ``parent`` = the
        base key, ``metrics["adaptation"]`` (slices, Dice before/after, steps, seconds)
        and ``training["adaptation"]`` (the recipe). Not registered.
    slices
        The corrected slice indices (``z`` of the ``(z, y, x)`` scan) it was tuned on.
    dice_before, dice_after:
        Mean over classes of the 3D Dice on the corrected slices only, of the base and
        of the adapted model (these slices were trained on: a sanity figure, not an
        estimate of accuracy elsewhere; ``benchmarks/patient_adaptation.py`` measures
        the other slices).
    per_class_before, per_class_after:
        ``{class name: Dice}`` on the corrected slices.
    steps
        Optimiser steps run (fewer than asked when cancelled or out of time).
    seconds
        Wall time of the whole call (fine-tune and both Dice measurements).
    cancelled
        ``cancel()`` returned True; the weights after the last finished step are kept.
    losses
        Training loss per step.
    """

    net: torch.nn.Module
    spec: ModelSpec
    slices: list[int]
    dice_before: float
    dice_after: float
    per_class_before: dict[str, float]
    per_class_after: dict[str, float]
    steps: int
    seconds: float
    cancelled: bool = False
    losses: list[float] = field(default_factory=list)


# ----------------------------------------------------------------- targets
def parse_slices(text: str | Sequence[int], depth: int | None = None) -> list[int]:
    """``"12,17,22"`` (or a sequence of ints) -> sorted unique slice indices.

    Parameters
    ----------
    text
        Comma-separated 0-based slice indices (``z`` of the ``(z, y, x)`` volume, i.e.
        the third voxel axis of a NIfTI file as the plugin's reader numbers them), or
        an already parsed sequence.
    depth
        Number of slices of the scan; when given, indices must lie in ``0..depth-1``.

    Returns
    -------
    list of int

    Raises
    ------
    ValueError
        Empty list, a non-integer entry or an index outside the scan.
    """
    if isinstance(text, str):
        try:
            out = sorted({int(v) for v in text.split(",") if v.strip()})
        except ValueError:
            raise InputError(f"slices must be comma-separated integers such as 12,17,22, got {text!r}") from None
    else:
        out = sorted({int(v) for v in text})
    if not out:
        raise InputError("no slices given: list the corrected slices, e.g. 12,17,22")
    if depth is not None:
        bad = [z for z in out if z < 0 or z >= depth]
        if bad:
            raise InputError(f"slice indices {bad} are outside 0..{depth - 1} (the scan has {depth} slices)")
    return out


def corrected_target(labels: np.ndarray, slices: Sequence[int], spec: ModelSpec) -> np.ndarray:
    """The training target of :func:`adapt_to_scan`: the corrected slices, ignore elsewhere.

    Parameters
    ----------
    labels
        ``(z, y, x)`` integer label volume (0 background, 1..K the spec's classes), or
        ``(K, z, y, x)`` {0, 1} masks for a sigmoid (multi-label) spec.
    slices
        The corrected slice indices.
    spec
        The model's spec (classes, activation).

    Returns
    -------
    numpy.ndarray
        uint8; softmax: ``(z, y, x)`` labels, :data:`IGNORE_INDEX` on the other slices;
        sigmoid: ``(K, z, y, x)`` masks, a ``(z, y, x)`` label volume is split into one
        mask per class (``labels == index``), :data:`IGNORE_INDEX` on the other slices.
        Voxels already :data:`IGNORE_INDEX` on a corrected slice stay ignored.

    Raises
    ------
    ValueError
        Wrong number of dimensions or channels, or label values above K on a
        corrected slice.
    """
    lab = np.asarray(labels)
    k = len(spec.classes)
    zs = list(slices)
    if lab.ndim == 3:
        used = lab[zs]
        bad = np.unique(used[(used > k) & (used != IGNORE_INDEX)])
        if bad.size:
            raise InputError(
                f"label value {int(bad[0])} on the corrected slices; the model {spec.key} has classes 1..{k} "
                f"(and {IGNORE_INDEX} = ignore)"
            )
        if spec.activation == "softmax":
            out = np.full(lab.shape, IGNORE_INDEX, np.uint8)
            out[zs] = used
            return out
        out = np.full((k, *lab.shape), IGNORE_INDEX, np.uint8)
        for c in spec.classes:
            out[c.index - 1][zs] = np.where(used == IGNORE_INDEX, IGNORE_INDEX, used == c.index)
        return out
    if lab.ndim == 4 and spec.activation == "sigmoid" and lab.shape[0] == k:
        out = np.full(lab.shape, IGNORE_INDEX, np.uint8)
        used = lab[:, zs]
        out[:, zs] = np.where(used == IGNORE_INDEX, IGNORE_INDEX, used > 0)
        return out
    raise InputError(
        f"labels of shape {lab.shape} do not fit the {spec.activation} model {spec.key} "
        f"(expected (z, y, x) labels{' or (K, z, y, x) masks' if spec.activation == 'sigmoid' else ''})"
    )


def _dice_on(labels: np.ndarray, target: np.ndarray, spec: ModelSpec) -> dict[str, float]:
    """``{class name: 3D Dice}`` of a ``(z, y, x)`` prediction against a ``corrected_target``."""
    if target.ndim == 4:  # sigmoid masks: score per channel (ignore where any channel is ignore)
        out = {}
        ign = (target == IGNORE_INDEX).any(0)
        for c in spec.classes:
            ref = np.where(ign, IGNORE_INDEX, target[c.index - 1] * c.index).astype(np.uint8)
            pred = np.where(labels == c.index, c.index, 0).astype(np.uint8)
            out[c.name] = dice_per_class(pred, ref, [c.index], ignore_index=IGNORE_INDEX)[c.index]
        return out
    d = dice_per_class(labels, target, [c.index for c in spec.classes], ignore_index=IGNORE_INDEX)
    return {c.name: float(d[c.index]) for c in spec.classes}


# ----------------------------------------------------------------- adapt
def adapt_to_scan(
    volume: Volume | np.ndarray,
    labels: np.ndarray,
    slices: Sequence[int],
    spec: ModelSpec,
    net: torch.nn.Module,
    *,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 8,
    lr: float = DEFAULT_LR,
    weight_decay: float = 1e-4,
    augment: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    max_seconds: float | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> AdaptationResult:
    """Fine-tune a copy of ``net`` on the corrected slices of one scan.

    Parameters
    ----------
    volume
        The scan: a :class:`~napari_gi_seg.io.volume.Volume` or a ``(z, y, x)`` array of
        raw intensities (the spec's normalisation is applied here, as in inference).
    labels
        The corrected labels on the scan's grid: ``(z, y, x)`` integers 0..K (or
        ``(K, z, y, x)`` masks for a sigmoid spec). Only ``slices`` are read.
    slices
        Indices ``z`` of the corrected slices (at least 1). Every other slice is the
        ignore label: it feeds the 2.5D context only.
    spec, net:
        The base model; ``net`` is deep-copied and never modified.
    steps
        Optimiser steps (AdamW on :func:`~napari_gi_seg.training.schedule.one_cycle`:
        warm-up from ``lr / 10`` over the first 10 %, then cosine decay to ``lr / 100``).
    batch_size
        Samples per step, drawn with replacement from the corrected slices (each
        augmented independently).
    lr, weight_decay:
        Peak learning rate and AdamW weight decay.
    augment
        Use :class:`FewSliceAugment` (and the trainer's left-right flip for
        flip-trained models).
    seed
        Seeds the batch draws, the augmentation and the flips (torch's global
        generator): the same seed gives the same run on the CPU.
    device
        ``"cpu"`` (default), ``"cuda"``, ``"mps"`` or ``"auto"``.
    max_seconds
        Stop after this many seconds of fine-tuning (the weights of the last step are
        kept).
    progress
        ``progress(event)`` (:mod:`napari_gi_seg.progress`): a ``"step"`` event after each
        optimiser step (``metrics={"loss": float, "lr": the rate the step used}``) and a ``"done"`` event at the end
        (``metrics``: Dice before/after on the corrected slices, steps, seconds).
    cancel
        Polled before each step; True stops (``cancelled=True``, weights kept).

    Returns
    -------
    AdaptationResult

    Raises
    ------
    ValueError
        Labels whose shape differs from the scan, no or out-of-range slices, label
        values the model does not have, or a corrected slice that is entirely ignore.
    """
    t0 = time.perf_counter()
    image = volume if isinstance(volume, Volume) else Volume(np.asarray(volume, np.float32), (1.0, 1.0, 1.0))
    lab = np.asarray(labels)
    grid = lab.shape[-3:]
    if tuple(grid) != image.shape:
        raise InputError(f"labels of shape (z, y, x) {tuple(grid)} are not on the scan's grid {image.shape}")
    zs = parse_slices(slices, image.shape[0])
    if steps < 1 or batch_size < 1:
        raise InputError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    target = corrected_target(lab, zs, spec)
    dev = resolve_device(device)

    before_lab = segment_volume(image, spec, net, slices=zs, device=dev, postprocess=False, precision="fp32").labels
    before = _dice_on(before_lab, target, spec)

    torch.manual_seed(seed)  # the trainer's left-right flip draws from torch's global generator
    gen = torch.Generator().manual_seed(seed)  # which slices make each batch
    ds = SliceDataset([Case("scan", "patient", image, target)], spec, augment=False, allow_flip=spec.flip_augmented)
    if len(ds) == 0:
        raise InputError("the corrected slices hold only the ignore label; nothing to learn from")
    if augment:
        ds.flip = bool(spec.flip_augmented)
        ds.transform = FewSliceAugment(seed)
    model = copy.deepcopy(net).float().to(dev)
    model = model.to(memory_format=torch.contiguous_format)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = one_cycle(opt, lr, steps, pct_start=0.1, final_div_factor=10.0)  # lr/10 -> lr -> lr/100
    scaler = grad_scaler(dev)
    multilabel = spec.activation == "sigmoid"
    losses: list[float] = []
    cancelled = False
    t_train = time.perf_counter()
    for step in range(steps):
        if cancel is not None and cancel():
            cancelled = True
            break
        if max_seconds is not None and time.perf_counter() - t_train > max_seconds:
            log.info("adaptation: time budget of %.0f s reached after %d steps", max_seconds, step)
            break
        idx = torch.randint(len(ds), (batch_size,), generator=gen).tolist()
        xs, ys = zip(*(ds[i] for i in idx))
        x, y = torch.stack(xs).to(dev), torch.stack(ys).to(dev)
        loss, step_lr = optimisation_step(model, x, y, opt, sched, scaler, multilabel=multilabel)
        losses.append(loss)
        emit(progress, "step", step + 1, steps, "adapting to this scan", loss=loss, lr=step_lr)
    model.eval()

    after_lab = segment_volume(image, spec, model, slices=zs, device=dev, postprocess=False, precision="fp32").labels
    after = _dice_on(after_lab, target, spec)
    model = model.cpu().eval()
    seconds = time.perf_counter() - t0
    new_spec = adapted_spec(spec, zs, before, after, len(losses), seconds, lr=lr, batch_size=batch_size)
    emit(
        progress,
        "done",
        len(losses),
        steps,
        "adapted to this scan",
        dice_before=float(np.mean(list(before.values()))),
        dice_after=float(np.mean(list(after.values()))),
        seconds=round(seconds, 1),
    )
    return AdaptationResult(
        net=model,
        spec=new_spec,
        slices=zs,
        dice_before=float(np.mean(list(before.values()))),
        dice_after=float(np.mean(list(after.values()))),
        per_class_before=before,
        per_class_after=after,
        steps=len(losses),
        seconds=seconds,
        cancelled=cancelled,
        losses=losses,
    )


def adapted_spec(
    spec: ModelSpec,
    slices: Sequence[int],
    before: dict[str, float],
    after: dict[str, float],
    steps: int,
    seconds: float,
    **recipe,
) -> ModelSpec:
    """A copy of ``spec`` describing its adapted copy (name ``<base>-adapted``, version 1,
    ``parent`` = the base key, ``metrics["adaptation"]``, ``training["adaptation"]``).

    The recipe keywords (``lr``, ``batch_size``, ...) go into ``training["adaptation"]``.
    No patient data: only slice indices and figures are recorded.
    """
    d = spec.to_dict()
    d.update(
        name=f"{spec.name}-adapted",
        version=1,
        parent=spec.key,
        created="",
        software_version="",
        weights_sha256="",  # the adapted weights: registration records their sha256
        description=f"{spec.key} adapted to one scan on {len(slices)} corrected slices",
        metrics={
            **{k: v for k, v in spec.metrics.items() if k != "adaptation"},
            "adaptation": {
                "slices": list(slices),
                "dice_before": float(np.mean(list(before.values()))),
                "dice_after": float(np.mean(list(after.values()))),
                "per_class_before": before,
                "per_class_after": after,
                "measured_on": "the corrected slices (trained on)",
            },
        },
        training={
            **spec.training,
            "adaptation": {"steps": steps, "seconds": round(seconds, 1), "base": spec.key, **recipe},
        },
    )
    return ModelSpec.from_dict(d)


# ----------------------------------------------------------------- re-segment
@dataclass
class ResegmentResult:
    """``labels``: the new ``(z, y, x)`` uint8 volume (kept slices unchanged);
    ``slices``: the re-segmented slice indices; ``cancelled``: stopped early (the slices
    finished before are in ``labels``, ``slices`` lists only them)."""

    labels: np.ndarray
    slices: list[int]
    cancelled: bool = False


def resegment_except(
    volume: Volume | np.ndarray,
    labels: np.ndarray,
    keep: Sequence[int],
    spec: ModelSpec,
    net: torch.nn.Module,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> ResegmentResult:
    """Re-segment every slice except ``keep`` (the edited or reviewed ones).

    The other slices are predicted with ``net``; the spec's single-component
    post-processing (:func:`~napari_gi_seg.engine.postprocess.postprocess_labels`)
    runs on the merged volume, so the kept slices anchor the 3D connectivity, but only
    the re-segmented slices take its result. ``labels`` is not modified.

    Parameters
    ----------
    volume
        The scan (:class:`Volume` or ``(z, y, x)`` raw intensities).
    labels
        ``(z, y, x)`` current labels.
    keep
        Slice indices to leave as they are.
    spec, net:
        The (adapted) model.
    device, batch_size:
        As in :func:`~napari_gi_seg.engine.inference.segment_volume`.
    progress
        ``progress(event)``: the ``"segment"`` events of
        :func:`~napari_gi_seg.engine.inference.segment_volume` (one per batch).
    cancel
        Polled between batches.

    Returns
    -------
    ResegmentResult

    Raises
    ------
    ValueError
        ``labels`` not on the scan's grid; ``IndexError`` for ``keep`` out of range.
    """
    data = volume.data if isinstance(volume, Volume) else np.asarray(volume)
    lab = np.asarray(labels)
    if lab.shape != data.shape:
        raise InputError(f"labels of shape (z, y, x) {lab.shape} are not on the scan's grid {data.shape}")
    kept = set(parse_slices(keep, data.shape[0])) if len(keep) else set()
    todo = [z for z in range(data.shape[0]) if z not in kept]
    out = lab.astype(np.uint8, copy=True)
    if not todo:
        return ResegmentResult(out, [])
    res = segment_volume(
        volume,
        spec,
        net,
        slices=todo,
        batch_size=batch_size,
        device=device,
        postprocess=False,
        cancel=cancel,
        progress=progress,
    )
    done = sorted(res.segmented)
    out[done] = res.labels[done]
    if not res.cancelled:
        pp = postprocess_labels(out, spec)
        out[done] = pp[done]
    return ResegmentResult(out, done, res.cancelled)


# ----------------------------------------------------------------- CLI
@dataclass
class FileAdaptation:
    """What ``segment --adapt`` needs after :func:`adapt_from_files`: the adapted
    ``spec`` and ``net``, the ``result``, the corrected labels (``(z, y, x)``) and the
    registry ``entry`` when ``--save-model`` registered it."""

    spec: ModelSpec
    net: torch.nn.Module
    result: AdaptationResult
    corrected: np.ndarray
    entry: object | None = None

    def merge(self, labels: np.ndarray) -> np.ndarray:
        """``labels`` (``(z, y, x)``, the adapted model's output) with the corrected
        slices put back as the clinician drew them (a copy)."""
        out = np.array(labels, dtype=np.uint8, copy=True)
        out[self.result.slices] = self.corrected[self.result.slices]
        return out


def adapt_from_files(
    labels_path: str,
    slices: str,
    volumes: Sequence[Volume],
    spec: ModelSpec,
    net: torch.nn.Module,
    *,
    device: str | torch.device = "cpu",
    save_model: str | None = None,
    quiet: bool = False,
) -> FileAdaptation:
    """``napari-gi-seg segment SCAN -o OUT --adapt LABELS --adapt-slices 12,17,22
    [--save-model NAME]``: read LABELS on the scan's grid, adapt a copy of the model on
    the listed slices, optionally register it as NAME.

    Parameters
    ----------
    labels_path
        Label file (NIfTI, TIFF, UW-Madison CSV: :func:`napari_gi_seg.io.read_labels`)
        with the corrected labels on the scan's grid (same shape and spacing).
    slices
        Comma-separated slice indices, numbered as the plugin's reader numbers
        slices (``z`` of ``(z, y, x)``; for a NIfTI file its third voxel axis).
    volumes
        The scan as read by the CLI; exactly one volume.
    spec, net:
        The base model.
    device
        Torch device of the fine-tune.
    save_model
        Register the adapted model under this name (next free version).
    quiet
        No progress bar on stderr.

    Returns
    -------
    FileAdaptation

    Raises
    ------
    ValueError
        ``--adapt`` with several volumes, unreadable labels or labels off the scan's
        grid (``InvalidInputError`` naming the file), labels from another frame of
        reference (:class:`~napari_gi_seg.io.frames.FrameOfReferenceError`, by
        :func:`~napari_gi_seg.io.frames.check_same_frame`), bad slice list, label values
        the model does not have; ``FileNotFoundError`` for a missing label file.
    """
    from ..io import read_labels
    from ..io.frames import check_same_frame
    from ..progress import TqdmProgress

    if len(volumes) != 1:
        raise InputError(f"--adapt needs a single scan; the input holds {len(volumes)} volumes")
    vol = volumes[0]
    if slices is None:
        raise InputError("--adapt needs --adapt-slices: the corrected slices, e.g. 12,17,22")
    zs = parse_slices(slices, vol.shape[0])
    if save_model:
        from .patient_models import check_model_name

        check_model_name(save_model)  # before the fine-tune, not after
    lab = read_labels(labels_path, like=vol)
    check_same_frame(vol, lab, labels_path)  # an RTSTRUCT/SEG/NIfTI of another frame of reference is refused
    corrected = np.asarray(lab.data)
    try:
        corrected_target(corrected, zs, spec)
    except ValueError as e:
        raise InputError(f"{labels_path}: {e}") from None
    bars = TqdmProgress(disable=quiet, desc="adapt")
    try:
        res = adapt_to_scan(vol, corrected, zs, spec, net, steps=DEFAULT_STEPS, device=device, progress=bars)
    finally:
        bars.close()
    print(
        f"adapted {spec.key} on slices {','.join(map(str, zs))}: Dice on those slices "
        f"{res.dice_before:.3f} -> {res.dice_after:.3f}, {res.steps} steps in {res.seconds:.0f} s"
    )
    entry = None
    if save_model:
        from .patient_models import register_adapted

        entry = register_adapted(res, save_model)
        print(f"registered {entry.key} (parent {spec.key}) in {entry.folder}")
    return FileAdaptation(res.spec if entry is None else entry.spec(), res.net, res, corrected.astype(np.uint8), entry)
