"""The training commands of the CLI: ``napari-gi-seg train`` and ``finetune``.

Both run with the progress/cancel protocol (:mod:`napari_gi_seg.progress`): a tqdm
bar per epoch on a terminal, one log line per epoch, and a graceful stop: the first
Ctrl-C (SIGINT) or SIGTERM, or the creation of ``--stop-file``, ends the run after
finishing the current epoch (at most 120 s more; otherwise the epoch is checkpointed as
a partial one, which ``--resume`` completes: :mod:`napari_gi_seg.training.stopping`),
with the best epoch kept; a second signal aborts at once. Every numeric option is
range-checked while parsing (:mod:`napari_gi_seg._cli_types`), before any work.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from ._cli_types import SEED_MAX, float_above, fraction, int_at_least, probability
from .constants import DEVICES
from .models.spec import ARCHITECTURES, DEFAULT_ARCH, INPUT_SIZE_RANGE, MAX_CONTEXT, MAX_CONTEXT_OFFSET

log = logging.getLogger("napari_gi_seg.cli")


def _offsets(s: str) -> tuple[int, ...]:
    """argparse type of ``--context``: 1..MAX_CONTEXT distinct integers within +-MAX_CONTEXT_OFFSET."""
    try:
        offs = tuple(int(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"context must be comma-separated integers such as -1,0,1, got {s!r}"
        ) from None
    if not 1 <= len(offs) <= MAX_CONTEXT or len(set(offs)) != len(offs):
        raise argparse.ArgumentTypeError(f"context must be 1..{MAX_CONTEXT} distinct offsets, got {s!r}")
    if any(abs(o) > MAX_CONTEXT_OFFSET for o in offs):
        raise argparse.ArgumentTypeError(f"context offsets must lie within +-{MAX_CONTEXT_OFFSET} slices, got {s!r}")
    return offs


def _model_name(s: str) -> str:
    """argparse type of ``--name``: :data:`~napari_gi_seg.models.spec.MODEL_NAME_PATTERN`."""
    from .models.spec import validate_model_name

    try:
        return validate_model_name(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _names(s: str) -> list[str]:
    return [n.strip() for n in s.split(",") if n.strip()]


@contextlib.contextmanager
def graceful_stop(stop_file: str | None = None) -> Iterator[Callable[[], bool]]:
    """A ``cancel()`` callable for a long run: True after SIGINT/SIGTERM or once
    ``stop_file`` exists.

    The first signal asks the run to stop after finishing the current epoch (the
    trainer's bounded wait, :mod:`napari_gi_seg.training.stopping`; the best epoch is
    kept); a second one raises :class:`KeyboardInterrupt` at once. The previous signal
    handlers are restored on exit. Signals are only caught in the main thread.

    Parameters
    ----------
    stop_file : str, optional
        A path whose creation asks for the stop (the Fine-tune widget's way; works on
        every platform).

    Yields
    ------
    callable
        ``cancel() -> bool``.
    """
    state = {"stop": False}

    def handler(signum, frame):
        if state["stop"]:
            raise KeyboardInterrupt
        state["stop"] = True
        log.warning(
            "%s received: the run stops once the current epoch is finished and checkpointed; press again to abort",
            signal.Signals(signum).name,
        )

    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
    try:
        yield lambda: state["stop"] or bool(stop_file and os.path.exists(stop_file))
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="dataset folder (nnU-Net v2, UW-Madison, or image_<id>/label_<id> NIfTI pairs)")
    p.add_argument(
        "--name", required=True, type=_model_name, help="registry name of the new model (letters, digits, . _ -)"
    )
    p.add_argument(
        "--classes",
        type=_names,
        default=None,
        help="foreground class names in label order, comma-separated (NIfTI pairs without classes.json)",
    )
    p.add_argument(
        "--arch",
        default=DEFAULT_ARCH,
        choices=list(ARCHITECTURES),
        help=f"network: an smp architecture, a MONAI network or a zoo network (default {DEFAULT_ARCH}; see docs/training.md)",
    )
    p.add_argument(
        "--encoder",
        default=None,
        help="smp encoder name, or the MONAI network's preset (default: mobilenet_v2 / the network's first preset)",
    )
    p.add_argument(
        "--gate",
        type=fraction(),
        default=None,
        metavar="T",
        help="two-stage empty-slice gating: add a slice classifier; slices it scores below T (0 < T < 1) come out empty",
    )
    p.add_argument("--context", type=_offsets, default=(-1, 0, 1), help="2.5D slice offsets (default -1,0,1)")
    lo, hi = INPUT_SIZE_RANGE
    p.add_argument(
        "--size",
        type=int_at_least(lo, hi),
        default=160,
        help=f"in-plane input size in pixels, {lo}..{hi} (default 160)",
    )
    p.add_argument("--epochs", type=int_at_least(1), default=100, help="epochs, >= 1 (default 100)")
    p.add_argument("--batch-size", type=int_at_least(1), default=16, help="slices per step, >= 1 (default 16)")
    p.add_argument("--lr", type=float_above(0), default=2e-3, help="peak learning rate of the one-cycle schedule, > 0")
    p.add_argument(
        "--val-fraction",
        type=fraction(allow_zero=True),
        default=0.25,
        help="fraction of patients held out for validation, in [0, 1) (0: none)",
    )
    p.add_argument("--fold", type=int_at_least(0), default=0, help="validation fold, >= 0")
    p.add_argument("--seed", type=int_at_least(0, SEED_MAX), default=0)
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument(
        "--patience",
        type=int_at_least(1),
        default=30,
        help="early stopping: epochs without validation improvement, >= 1",
    )
    p.add_argument(
        "--max-minutes",
        type=float_above(0),
        default=None,
        help="stop after this many minutes, > 0 (best checkpoint kept)",
    )
    p.add_argument(
        "--budget-minutes",
        type=float_above(0),
        default=None,
        help="train for this many minutes: the one-cycle learning-rate schedule spans the budget "
        "(--epochs is then an upper bound)",
    )
    p.add_argument("--max-steps-per-epoch", type=int_at_least(1), default=None, help=argparse.SUPPRESS)
    p.add_argument("--stop-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work-dir", default=None, help="run folder (checkpoints, metrics.csv, training_curve.png)")
    p.add_argument(
        "--exclude",
        type=_names,
        default=[],
        help="case-days/cases to leave out, comma-separated (UW-Madison: known faulty ones)",
    )
    _add_sequences_arg(p)
    p.add_argument("--description", default="")
    p.add_argument("--num-workers", type=int_at_least(0), default=0, help="data-loader worker processes, >= 0")
    p.add_argument(
        "--single-component",
        type=_names,
        default=[],
        help="classes that are one connected organ (e.g. liver,spleen): inference keeps their largest 3D component",
    )
    flip = p.add_mutually_exclusive_group()
    flip.add_argument(
        "--flip-augment",
        dest="flip_augment",
        action="store_true",
        default=None,
        help="left-right flip augmentation (makes --tta usable); default: on unless a class is lateralised "
        "(kidneys), where flips slowed learning in the peer table (docs/benchmarks.md)",
    )
    flip.add_argument(
        "--no-flip-augment", dest="flip_augment", action="store_false", help="no left-right flips (--tta refused)"
    )
    p.add_argument(
        "--invert-intensity",
        type=probability,
        default=0.0,
        metavar="P",
        help="probability of an inverted-intensity training sample (1 - x; T1 and T2 reverse the organs' order "
        "of brightness), in [0, 1]; default 0",
    )
    p.add_argument(
        "--flip-labels",
        choices=["keep", "swap"],
        default="keep",
        help="lateralised classes on flipped images: keep (contextual: the right kidney is the one beside the "
        "liver; the default) or swap (anatomical: laterality = image side, which small networks learn slowly); "
        "see docs/training.md",
    )


def _add_sequences_arg(p: argparse.ArgumentParser) -> None:
    """``--sequences t2spir,t1in,t1out`` (CHAOS layout only; default all contrasts)."""
    p.add_argument(
        "--sequences",
        type=_names,
        default=None,
        help="CHAOS layout: contrasts to use, comma-separated from t2spir,t1in,t1out (default all)",
    )


def cmd_train(args: argparse.Namespace) -> int:
    """``napari-gi-seg train DATASET --name NAME``: train a new model and register it."""
    from .progress import TqdmProgress
    from .training.trainer import TrainConfig, train

    cfg = TrainConfig(
        dataset=args.dataset,
        name=args.name,
        class_names=args.classes,
        arch=args.arch,
        encoder=args.encoder,
        gate_threshold=args.gate,
        context=args.context,
        size=args.size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        val_fraction=args.val_fraction,
        fold=args.fold,
        seed=args.seed,
        device=args.device,
        resume=args.resume,
        patience=args.patience,
        max_minutes=args.max_minutes,
        budget_minutes=args.budget_minutes,
        max_steps_per_epoch=args.max_steps_per_epoch,
        work_dir=args.work_dir,
        exclude=args.exclude,
        sequences=args.sequences,
        description=args.description,
        num_workers=args.num_workers,
        single_component=args.single_component,
        flip_augment=args.flip_augment,
        flip_labels=args.flip_labels,
        invert_intensity=args.invert_intensity,
    )
    with graceful_stop(args.stop_file) as cancel, TqdmProgress(disable=not sys.stderr.isatty()) as bar:
        res = train(cfg, progress=bar, cancel=cancel)
    if res.entry is not None:
        print(
            f"registered {res.spec.key}  validation mean Dice {res.best_metrics.get('mean_dice', float('nan')):.4f}"
            f"  ({res.entry.folder}; run log {res.work_dir / 'train.log'})"
        )
    return 0


def _add_finetune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "dataset",
        help="labelled dataset folder (nnU-Net v2 export of corrections, UW-Madison, NIfTI pairs, CHAOS MR)",
    )
    p.add_argument(
        "--model", required=True, dest="base", metavar="BASE", help="registered base model NAME or NAME:VERSION"
    )
    p.add_argument(
        "--name",
        required=True,
        type=_model_name,
        help="registry name of the fine-tuned model (letters, digits, . _ -; next free version)",
    )
    p.add_argument("--epochs", type=int_at_least(1), default=20, help="epochs, >= 1 (default 20)")
    p.add_argument(
        "--lr",
        type=float_above(0),
        default=5e-4,
        help="peak learning rate of the one-cycle schedule, > 0 (default 5e-4)",
    )
    p.add_argument("--freeze-encoder", action="store_true", help="train only the decoder and segmentation head")
    p.add_argument(
        "--val-fraction",
        type=fraction(),
        default=0.25,
        help="share of patients held back, in (0, 1) (a single patient: share of its labelled slices)",
    )
    p.add_argument("--batch-size", type=int_at_least(1), default=8, help="slices per step, >= 1 (default 8)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument(
        "--max-minutes",
        type=float_above(0),
        default=None,
        help="time budget in minutes, > 0 (best weights so far kept)",
    )
    p.add_argument(
        "--classes",
        type=_names,
        default=None,
        help="the dataset's class names in label order (NIfTI pairs without classes.json; default: the base's)",
    )
    p.add_argument("--seed", type=int_at_least(0, SEED_MAX), default=0)
    p.add_argument("--work-dir", default=None, help="run folder (default <user folder>/runs/NAME-vN)")
    p.add_argument(
        "--jsonl",
        action="store_true",
        help="print one JSON object per progress event on stdout (baseline, step, validate, epoch, done)",
    )
    _add_sequences_arg(p)
    p.add_argument(
        "--register-if-worse",
        action="store_true",
        help="register the new model even when its held-back Dice is below the base's (default: keep it unregistered)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted fine-tune of NAME (or the one in --work-dir) from its last checkpoint",
    )
    p.add_argument("--max-steps-per-epoch", type=int_at_least(1), default=None, help=argparse.SUPPRESS)
    p.add_argument("--stop-file", default=None, help=argparse.SUPPRESS)  # the widget's graceful stop


def _json_clean(o):
    import math

    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _json_clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_clean(v) for v in o]
    return o


def cmd_finetune(args: argparse.Namespace) -> int:
    """``napari-gi-seg finetune DATASET --model BASE --name NEW``: fine-tune, print the
    held-back Dice before and after, and register NEW (parent BASE) unless it is worse
    (``--register-if-worse``) or was stopped."""
    import json

    from .progress import TqdmProgress
    from .training.finetune import finetune, held_back_comparison

    bar = TqdmProgress(disable=args.jsonl or not sys.stderr.isatty())

    def progress(ev) -> None:
        if args.jsonl:
            print(json.dumps(_json_clean(ev.to_dict())), flush=True)
        else:
            bar(ev)

    with graceful_stop(args.stop_file) as cancel, bar:
        res = finetune(
            args.dataset,
            args.base,
            args.name,
            epochs=args.epochs,
            lr=args.lr,
            freeze_encoder=args.freeze_encoder,
            val_fraction=args.val_fraction,
            batch_size=args.batch_size,
            device=args.device,
            max_minutes=args.max_minutes,
            class_names=args.classes,
            seed=args.seed,
            max_steps_per_epoch=args.max_steps_per_epoch,
            work_dir=args.work_dir,
            register_if_worse=args.register_if_worse,
            resume=args.resume,
            progress=progress,
            cancel=cancel,
            sequences=args.sequences,
        )
    if not args.jsonl:
        ft = res.spec.metrics["finetune"]
        where = (
            f"{sum(len(v) for v in res.held_back.values())} held-back slices of {len(res.held_back)} case(s)"
            if res.split == "slice"
            else f"{len(res.held_back)} held-back patient(s)"
        )
        # an unregistered candidate has no version: the registry gives one only when it is registered
        after = res.spec.key if res.registered else f"{res.spec.name} (candidate)"
        worse = "  (worse)" if res.worse else ""
        if ft.get("new_classes"):  # grown by new structures: like for like on the base's classes only
            cmp = held_back_comparison(ft["per_class_before"], ft["per_class_after"])
            print(
                f"held-back mean Dice of the base's classes ({', '.join(cmp['classes']) or 'none scored'}) "
                f"on {where} of {ft['dataset']} ({res.split}-level):"
            )
            print(f"  before  {ft['base']:<24} {cmp['before']:.4f}")
            print(f"  after   {after:<24} {cmp['after']:.4f}{worse}")
            print("  old classes' change: " + ", ".join(f"{n} {d:+.4f}" for n, d in ft["old_class_change"].items()))
            print(
                "  new structure(s) (the base has none to compare): "
                + ", ".join(f"{n} {ft['per_class_after'].get(n, float('nan')):.4f}" for n in ft["new_classes"])
            )
        else:
            print(f"held-back mean Dice on {where} of {ft['dataset']} ({res.split}-level):")
            print(f"  before  {ft['base']:<24} {res.dice_before:.4f}")
            print(f"  after   {after:<24} {res.dice_after:.4f}{worse}")
        if res.registered:
            print(f"registered {res.spec.key} (parent {res.spec.parent})  ({res.entry.folder})")
        else:
            why = f": {res.reason}" if res.reason else ""
            print(f"not registered{why}; the candidate is kept in the run folder {res.work_dir}")
    return 0
