"""Command line: ``napari-gi-seg segment|models|train|finetune|evaluate|demo``.

Exit status: 0 on success; 2 with one line on stderr
(``napari-gi-seg: error: <file>: <problem>``) for every expected failure: bad input
(``InvalidInputError``, ``DatasetFormatError``, an invalid spec or model name), a
missing file, an unknown model, a file-system error (disk full, read-only folder,
permission denied: the line names the file), not enough memory; 130 when
interrupted; 1 with one line for an unexpected internal error. ``--debug`` (before or
after the sub-command) prints the full traceback too and sets logging to DEBUG.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._cli_errors import run_guarded


def _offsets(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"context must be comma-separated integers such as -1,0,1, got {s!r}"
        ) from None


def _model_name(s: str) -> str:
    """argparse type of ``--name``: :data:`~napari_gi_seg.models.spec.MODEL_NAME_PATTERN`."""
    from .models.spec import validate_model_name

    try:
        return validate_model_name(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _names(s: str) -> list[str]:
    return [n.strip() for n in s.split(",") if n.strip()]


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
    p.add_argument("--arch", default="Unet", choices=["Unet", "UnetPlusPlus", "DeepLabV3Plus", "FPN"])
    p.add_argument(
        "--encoder", default="mobilenet_v2", help="any segmentation-models-pytorch encoder (default mobilenet_v2)"
    )
    p.add_argument("--context", type=_offsets, default=(-1, 0, 1), help="2.5D slice offsets (default -1,0,1)")
    p.add_argument("--size", type=int, default=160, help="in-plane input size in pixels (default 160)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the one-cycle schedule")
    p.add_argument(
        "--val-fraction", type=float, default=0.25, help="fraction of patients held out for validation (0: none)"
    )
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--patience", type=int, default=30, help="early stopping: epochs without validation improvement")
    p.add_argument(
        "--max-minutes", type=float, default=None, help="stop after this many minutes (best checkpoint kept)"
    )
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--work-dir", default=None, help="run folder (checkpoints, metrics.csv, training_curve.png)")
    p.add_argument(
        "--exclude",
        type=_names,
        default=[],
        help="case-days/cases to leave out, comma-separated (UW-Madison: known faulty ones)",
    )
    p.add_argument("--description", default="")
    p.add_argument("--num-workers", type=int, default=0)
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
        help="left-right flip augmentation, swapping left/right classes (makes --tta usable); "
        "default: only when no class is lateralised",
    )
    flip.add_argument("--no-flip-augment", dest="flip_augment", action="store_false")


def cmd_train(args: argparse.Namespace) -> int:
    from .training.trainer import TrainConfig, train

    cfg = TrainConfig(
        dataset=args.dataset,
        name=args.name,
        class_names=args.classes,
        arch=args.arch,
        encoder=args.encoder,
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
        max_steps_per_epoch=args.max_steps_per_epoch,
        work_dir=args.work_dir,
        exclude=args.exclude,
        description=args.description,
        num_workers=args.num_workers,
        single_component=args.single_component,
        flip_augment=args.flip_augment,
    )
    res = train(cfg)
    if res.entry is not None:
        print(
            f"registered {res.spec.key}  validation mean Dice {res.best_metrics.get('mean_dice', float('nan')):.4f}  ({res.entry.folder})"
        )
    return 0


# ----------------------------------------------------------------- segment
def _add_segment_args(p: argparse.ArgumentParser) -> None:
    from .cli_segment import add_segment_args

    add_segment_args(p)


def cmd_segment(args: argparse.Namespace) -> int:
    """``napari-gi-seg segment``: see :func:`napari_gi_seg.cli_segment.cmd_segment`."""
    from .cli_segment import cmd_segment as run

    return run(args)


def read_input_volumes(path: str):
    """See :func:`napari_gi_seg.cli_segment.read_input_volumes`."""
    from .cli_segment import read_input_volumes as read

    return read(path)


# ----------------------------------------------------------------- models
def _add_models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def _mean_dice(metrics: dict) -> float | None:
    """Validation mean Dice from ``spec.metrics`` (``{"validation": {"mean_dice"}}``
    as the trainer writes it, or a top-level ``mean_dice``)."""
    v = (metrics.get("validation") or {}).get("mean_dice") if isinstance(metrics.get("validation"), dict) else None
    v = metrics.get("mean_dice") if v is None else v
    return float(v) if isinstance(v, (int, float)) else None


def model_rows() -> list[dict]:
    """One dict per registered model version (see ``napari-gi-seg models --json``)."""
    from .models import registry

    rows = []
    for e in registry.list_models():
        row = {
            "name": e.name,
            "version": e.version,
            "key": e.key,
            "source": "bundled" if e.bundled else "user",
            "folder": str(e.folder),
        }
        try:
            s = e.spec()
        except ValueError as err:
            row["error"] = str(err)
        else:
            row.update(
                classes=[c.name for c in s.classes],
                architecture=s.architecture,
                encoder=s.encoder,
                input_size=list(s.input_size),
                context_offsets=list(s.context_offsets),
                parent=s.parent,
                mean_dice=_mean_dice(s.metrics),
                created=s.created,
            )
        rows.append(row)
    return rows


def cmd_models(args: argparse.Namespace) -> int:
    """``napari-gi-seg models [--json]``: list the registered models."""
    import json

    from .models import registry

    rows = model_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no models registered (user folder: {registry.user_models_root()})")
        return 0
    head = ("model", "source", "architecture", "classes", "parent", "val. Dice")
    table = [head]
    for r in rows:
        if "error" in r:
            table.append((r["key"], r["source"], "INVALID", r["error"], "", ""))
            continue
        table.append(
            (
                r["key"],
                r["source"],
                f"{r['architecture']}/{r['encoder']}",
                ",".join(r["classes"]),
                r["parent"] or "-",
                "-" if r["mean_dice"] is None else f"{r['mean_dice']:.3f}",
            )
        )
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


# ----------------------------------------------------------------- finetune / evaluate
def _add_finetune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "dataset", help="labelled dataset folder (nnU-Net v2 export of corrections, UW-Madison, NIfTI pairs)"
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
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of the one-cycle schedule (default 5e-4)")
    p.add_argument("--freeze-encoder", action="store_true", help="train only the decoder and segmentation head")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.25,
        help="share of patients held back (a single patient: share of its labelled slices)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--max-minutes", type=float, default=None, help="time budget (best weights so far are registered)")
    p.add_argument(
        "--classes",
        type=_names,
        default=None,
        help="the dataset's class names in label order (NIfTI pairs without classes.json; default: the base's)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None, help="run folder (default <user folder>/runs/NAME-vN)")
    p.add_argument(
        "--jsonl", action="store_true", help="print one JSON object per line on stdout (start, each epoch, done)"
    )
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help=argparse.SUPPRESS)


def cmd_finetune(args: argparse.Namespace) -> int:
    """``napari-gi-seg finetune DATASET --model BASE --name NEW``: fine-tune and register NEW (parent BASE)."""
    import json
    import math

    from .training.finetune import finetune

    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    def emit(obj: dict) -> None:
        if args.jsonl:
            print(json.dumps(clean(obj)), flush=True)

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
        on_epoch=lambda row: emit({"event": "epoch", **row}),
        on_event=emit,
    )
    if not args.jsonl:
        print(
            f"registered {res.spec.key} (parent {res.spec.parent}); held-back ({res.split}-level) mean Dice "
            f"{res.dice_before:.4f} -> {res.dice_after:.4f}  ({res.entry.folder})"
        )
    return 0


def _add_evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="labelled dataset folder (any layout the trainer reads)")
    p.add_argument("--model", default=None, help="registered model NAME or NAME:VERSION (default: the default model)")
    p.add_argument("--json", default=None, metavar="PATH", help="write all metrics as JSON")
    p.add_argument("--report", default=None, metavar="PATH", help="write a Markdown report (images in PATH_files/)")
    p.add_argument(
        "--classes",
        type=_names,
        default=None,
        help="score only these classes (comma-separated names shared by model and dataset)",
    )
    p.add_argument(
        "--dataset-classes",
        type=_names,
        default=None,
        help="the dataset's class names in label order (NIfTI pairs without classes.json; default: the model's)",
    )
    p.add_argument("--cases", type=_names, default=None, help="only these case or patient ids, comma-separated")
    p.add_argument("--tta", action="store_true", help="left-right flip test-time augmentation")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--batch-size", type=int, default=8)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``napari-gi-seg evaluate DATASET``: segment every case and print/write Dice, IoU, precision,
    recall, HD95 (mm) and the UW-Madison Kaggle terms."""
    from .evaluation.evaluate import evaluate_dataset, format_table, write_json, write_report

    ev = evaluate_dataset(
        args.dataset,
        model=args.model,
        cases=args.cases,
        classes=args.classes,
        dataset_classes=args.dataset_classes,
        tta=args.tta,
        device=args.device,
        batch_size=args.batch_size,
        progress=lambda cid, i, n: print(f"[{i + 1}/{n}] {cid}", file=sys.stderr, flush=True),
    )
    print(format_table(ev.summary))
    if args.json:
        print(f"metrics: {write_json(ev.summary, args.json)}")
    if args.report:
        print(f"report: {write_report(ev, args.report)}")
    return 0


# ----------------------------------------------------------------- demo
def _add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--headless",
        action="store_true",
        help="no window: segment the CHAOS sample, print Dice per organ, write labels + overlay PNG (default when there is no display)",
    )
    p.add_argument("--out", default="demo-output", help="output folder of the headless run (default ./demo-output)")
    p.add_argument("--model", default=None, help="registered model NAME or NAME:VERSION (default: the default model)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--tta", action="store_true", help="left-right flip test-time augmentation")


def cmd_demo(args: argparse.Namespace) -> int:
    """``napari-gi-seg demo [--headless] [--out DIR]``: the clinician's loop on the CHAOS sample."""
    from .demo import main as demo_main

    return demo_main(headless=args.headless, out=args.out, model=args.model, device=args.device, tta=args.tta)


# ----------------------------------------------------------------- parser
#: ``(name, help, add_arguments, command)`` per sub-command; add new commands here.
COMMANDS: list[tuple[str, str, object, object]] = [
    ("segment", "segment an MRI volume with a registered model and write the labels", _add_segment_args, cmd_segment),
    ("models", "list the registered models", _add_models_args, cmd_models),
    ("train", "train a new model and register it", _add_train_args, cmd_train),
    ("finetune", "fine-tune a registered model on new labelled data and register it", _add_finetune_args, cmd_finetune),
    (
        "evaluate",
        "score a model on a labelled dataset (Dice, IoU, HD95, Kaggle score)",
        _add_evaluate_args,
        cmd_evaluate,
    ),
    (
        "demo",
        "open napari with the CHAOS sample and the widgets (or --headless: segment, score, write)",
        _add_demo_args,
        cmd_demo,
    ),
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="napari-gi-seg", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and DEBUG logging")
    parser.add_argument("--version", action="version", version=f"napari-gi-seg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_, add_args, func in COMMANDS:
        p = sub.add_parser(name, help=help_, description=help_)
        add_args(p)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_guarded(args.func, args, debug=bool(getattr(args, "debug", False)))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
