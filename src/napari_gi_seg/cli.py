"""Command line: ``napari-gi-seg segment|propagate|prompt|models|train|finetune|evaluate|demo``.

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
import logging
import sys
from collections.abc import Sequence

from ._cli_errors import run_guarded
from ._cli_training import _add_finetune_args, _add_train_args, cmd_finetune, cmd_train
from ._cli_types import int_at_least
from .constants import DEVICES

log = logging.getLogger("napari_gi_seg.cli")


def _names(s: str) -> list[str]:
    return [n.strip() for n in s.split(",") if n.strip()]


# ----------------------------------------------------------------- segment
def _add_segment_args(p: argparse.ArgumentParser) -> None:
    from .cli_segment import add_segment_args

    add_segment_args(p)


def cmd_segment(args: argparse.Namespace) -> int:
    """``napari-gi-seg segment``: see :func:`napari_gi_seg.cli_segment.cmd_segment`."""
    from .cli_segment import cmd_segment as run

    return run(args)


# ----------------------------------------------------------------- propagate
def _add_propagate_args(p: argparse.ArgumentParser) -> None:
    from .cli_propagate import add_propagate_args

    add_propagate_args(p)


def cmd_propagate(args: argparse.Namespace) -> int:
    """``napari-gi-seg propagate``: see :func:`napari_gi_seg.cli_propagate.cmd_propagate`."""
    from .cli_propagate import cmd_propagate as run

    return run(args)


# ----------------------------------------------------------------- models
def _add_models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def model_rows() -> list[dict]:
    """One dict per registered model version (see ``napari-gi-seg models --json``);
    ``mean_dice`` is the headline figure and ``dice_measured_on`` says where it was
    measured (:func:`napari_gi_seg.models.card.headline_metric`)."""
    from .models import registry
    from .models.card import headline_metric

    rows = []
    for e in registry.list_models(kind=None):
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
                kind=s.kind,
                parent=s.parent,
                created=s.created,
            )
            row["mean_dice"], row["dice_measured_on"] = headline_metric(s)
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
    head = ("model", "source", "architecture", "classes", "parent", "Dice", "measured on")
    table = [head]
    for r in rows:
        if "error" in r:
            table.append((r["key"], r["source"], "INVALID", r["error"], "", "", ""))
            continue
        table.append(
            (
                r["key"],
                r["source"],
                f"{r['architecture']}/{r['encoder']}",
                ",".join(r["classes"]) if r.get("kind") != "promptable" else "any structure (promptable)",
                r["parent"] or "-",
                "-" if r["mean_dice"] is None else f"{r['mean_dice']:.3f}",
                r["dice_measured_on"] if r["mean_dice"] is not None else "",
            )
        )
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


# ----------------------------------------------------------------- evaluate
def _add_evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "dataset", nargs="?", default=None, help="labelled dataset folder (any layout the trainer reads, CHAOS too)"
    )
    p.add_argument(
        "--reference",
        default=None,
        metavar="REF",
        help="score a prediction against this reference instead of a model on a dataset: a label file or a "
        "folder of per-slice PNGs (natural sort order; CHAOS values or binary)",
    )
    p.add_argument("--prediction", default=None, metavar="PRED", help="with --reference: the label file or PNG folder")
    p.add_argument(
        "--image",
        default=None,
        metavar="DICOM_DIR",
        help="with --reference: the DICOM series the labels belong to (geometry, slice order of PNGs)",
    )
    p.add_argument(
        "--sequences",
        type=_names,
        default=None,
        help="CHAOS layout: contrasts to score, comma-separated from t2spir,t1in,t1out (default all)",
    )
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
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--batch-size", type=int_at_least(1), default=8, help="slices per forward pass, >= 1 (default 8)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``napari-gi-seg evaluate DATASET``: segment every case and print/write Dice, IoU, precision,
    recall, HD95 (mm) and the UW-Madison Kaggle terms."""
    from .errors import UsageError
    from .evaluation.evaluate import evaluate_dataset, format_table, write_json, write_report

    if args.reference or args.prediction:
        if not (args.reference and args.prediction) or args.dataset or args.model or args.report:
            raise UsageError("evaluate --reference REF --prediction PRED [--image DICOM_DIR] [--classes] [--json]")
        from .evaluation.reference import evaluate_reference

        summary = evaluate_reference(args.reference, args.prediction, image=args.image, classes=args.classes)
        print(format_table(summary))
        if args.json:
            print(f"metrics: {write_json(summary, args.json)}")
        return 0
    if not args.dataset:
        raise UsageError("evaluate needs a DATASET folder, or --reference REF --prediction PRED")
    if args.image:
        raise UsageError("--image goes with --reference/--prediction")
    ev = evaluate_dataset(
        args.dataset,
        model=args.model,
        cases=args.cases,
        classes=args.classes,
        dataset_classes=args.dataset_classes,
        sequences=args.sequences,
        tta=args.tta,
        device=args.device,
        batch_size=args.batch_size,
        progress=lambda ev: log.info("[%d/%d] %s", ev.done + 1, ev.total, ev.message),
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
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--tta", action="store_true", help="left-right flip test-time augmentation")


def cmd_demo(args: argparse.Namespace) -> int:
    """``napari-gi-seg demo [--headless] [--out DIR]``: the clinician's loop on the CHAOS sample."""
    from .demo import main as demo_main

    return demo_main(headless=args.headless, out=args.out, model=args.model, device=args.device, tta=args.tta)


# ----------------------------------------------------------------- parser
def _add_prompt_args(p: argparse.ArgumentParser) -> None:
    from .cli_prompt import add_prompt_args

    add_prompt_args(p)


def _cmd_prompt(args: argparse.Namespace) -> int:
    from .cli_prompt import cmd_prompt

    return cmd_prompt(args)


#: ``(name, help, add_arguments, command)`` per sub-command; add new commands here.
COMMANDS: list[tuple[str, str, object, object]] = [
    ("segment", "segment an MRI volume with a registered model and write the labels", _add_segment_args, cmd_segment),
    (
        "propagate",
        "carry the previous day's labels onto today's scan by image registration",
        _add_propagate_args,
        cmd_propagate,
    ),
    ("models", "list the registered models", _add_models_args, cmd_models),
    ("train", "train a new model and register it", _add_train_args, cmd_train),
    (
        "finetune",
        "fine-tune a registered model on new labelled data; register it unless it is worse",
        _add_finetune_args,
        cmd_finetune,
    ),
    (
        "evaluate",
        "score a model on a labelled dataset (Dice, IoU, HD95, Kaggle score)",
        _add_evaluate_args,
        cmd_evaluate,
    ),
    (
        "prompt",
        "segment structures from boxes and clicks in a JSON file (promptable model or random walker)",
        _add_prompt_args,
        _cmd_prompt,
    ),
    (
        "demo",
        "open napari with the CHAOS sample and the widgets (or --headless: segment, score, write)",
        _add_demo_args,
        cmd_demo,
    ),
]


#: ``napari-gi-seg --help``: plain text (no reST markup).
DESCRIPTION = (
    "Segment abdominal MRI with registered models, score them, train and fine-tune them.\n"
    "The napari plugin (Plugins > GI Seg) is the clinician's side of the same tools."
)
EPILOG = (
    "exit status: 0 success; 2 bad input, a missing file or model, a file-system error\n"
    "(one line naming the file); 130 interrupted; 1 internal error (a bug: rerun with\n"
    "--debug for the traceback). 'napari-gi-seg COMMAND --help' describes each command."
)


def build_parser() -> argparse.ArgumentParser:
    """The ``napari-gi-seg`` parser: one sub-command per :data:`COMMANDS` entry, a
    global ``--debug`` (accepted before or after the sub-command) and ``--version``."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="napari-gi-seg",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    debug_help = "log at DEBUG level (with logger names) and show tracebacks of errors"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    parser.add_argument("--version", action="version", version=f"napari-gi-seg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_, add_args, func in COMMANDS:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
        add_args(p)
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    from ._logging import setup_cli_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_cli_logging(debug=args.debug)
    return run_guarded(args.func, args, debug=bool(args.debug))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
