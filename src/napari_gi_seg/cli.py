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
import logging
import sys
from collections.abc import Sequence

from ._cli_errors import CLIError, run_guarded
from ._cli_training import _add_finetune_args, _add_train_args, cmd_finetune, cmd_train

log = logging.getLogger("napari_gi_seg.cli")


def _names(s: str) -> list[str]:
    return [n.strip() for n in s.split(",") if n.strip()]


# ----------------------------------------------------------------- segment
def _slice_range(s: str) -> tuple[int | None, int | None]:
    """``"A:B"`` -> (A, B): 0-based, B exclusive, either side may be empty (Python slice)."""
    parts = s.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        a, b = (int(v) if v.strip() else None for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"slices must be A:B (0-based, B exclusive, e.g. 10:20 or :5), got {s!r}"
        ) from None
    return a, b


def _add_segment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="image: NIfTI, TIFF stack, DICOM series folder, ... (anything the readers take)")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="label file to write; the format follows the extension: "
        ".nii.gz/.nii (the input's affine), .tif/.tiff, .csv (UW-Madison RLE)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="registered model NAME or NAME:VERSION (default: the bundled default model, newest version)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--batch-size", type=int, default=8, help="slices per forward pass (default 8)")
    p.add_argument(
        "--tta", action="store_true", help="average with a left-right flipped pass (left/right classes swapped back)"
    )
    p.add_argument(
        "--slices",
        type=_slice_range,
        default=None,
        metavar="A:B",
        help="segment only slices A..B-1 (0-based z index; others stay 0)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="number type of the forward pass (default auto: fp16 on CUDA, bf16 on CPUs with native "
        "bfloat16, else fp32)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists (default: refuse)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def read_input_volumes(path: str):
    """Read ``path`` with :func:`napari_gi_seg.io.read_image` (all formats) -> list of
    image :class:`~napari_gi_seg.io.volume.Volume` (several for a DICOM folder with
    several series or a UW-Madison case folder with several days).

    Raises :class:`CLIError` for a missing path or a label file, and
    ``InvalidInputError`` (a ``ValueError`` naming the file) for unreadable or
    unsupported input.
    """
    from pathlib import Path

    from .io import read_image

    if not Path(path).exists():
        raise CLIError(f"{path}: file not found")
    vols = read_image(path)
    if not vols:
        raise CLIError(f"{path}: no image found")
    for v in vols:
        if v.metadata.get("is_labels"):
            raise CLIError(f"{path}: looks like a label volume, not an image (segment the image it belongs to)")
    return vols


def write_output_labels(path: str, labels, volume, class_names: dict[int, str]) -> None:
    """Write ``labels`` (``(z, y, x)`` uint8) to ``path`` in the format of its
    extension via :func:`napari_gi_seg.io.write_labels` (temp file + rename);
    ``class_names`` are the foreground names by label value (used by the RLE CSV)."""
    from .io import write_labels

    write_labels(path, labels, like=volume, class_names={k: v for k, v in class_names.items() if k != 0})


def _output_paths(output: str, vols) -> list[str]:
    """One output per volume: OUTPUT itself, or ``<stem>_<volume name><suffix>`` when
    the input holds several volumes (e.g. a folder of DICOM series: the volume name
    is then suffixed with the series description and the first 8 hex digits of the
    hashed ``SeriesInstanceUID``, so two series never share a path).

    Raises :class:`CLIError` naming the clashing series if two outputs would still
    have the same path (nothing is then written).
    """
    if len(vols) == 1:
        return [output]
    import re

    from .io import label_suffix

    suf = label_suffix(output) or ""
    stem = output[: len(output) - len(suf)]
    outs = []
    for v in vols:
        tag = v.name
        uid = v.metadata.get("series_instance_uid_hash")
        if uid:
            desc = re.sub(r"[^A-Za-z0-9._-]+", "-", str(v.metadata.get("series_description") or "")).strip("-")[:40]
            tag = "_".join(t for t in (v.name, desc, uid[:8]) if t)
        outs.append(f"{stem}_{tag}{suf}")
    dup = sorted({o for o in outs if outs.count(o) > 1})
    if dup:
        raise CLIError(f"{dup[0]}: several volumes of the input would be written to this one file; nothing written")
    return outs


def cmd_segment(args: argparse.Namespace) -> int:
    """``napari-gi-seg segment INPUT -o OUTPUT``: segment every slice (or ``--slices``)
    of INPUT with a registered model and write the label volume."""
    import os

    from .engine.inference import resolve_device, segment_volume
    from .io import LABEL_WRITE_SUFFIXES, label_suffix
    from .models import registry
    from .models.network import load_network
    from .progress import TqdmProgress

    if label_suffix(args.output) is None:
        raise CLIError(f"{args.output}: unknown output format; use one of {', '.join(LABEL_WRITE_SUFFIXES)}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not os.path.exists(args.input):
        raise CLIError(f"{args.input}: file not found")
    device = resolve_device(args.device)
    entry = registry.get_entry(args.model)  # ModelNotFoundError lists the known models
    vols = read_input_volumes(args.input)
    outs = _output_paths(args.output, vols)
    if not args.overwrite:
        for o in outs:
            if os.path.exists(o):
                raise CLIError(f"{o}: already exists (pass --overwrite to replace it)")
    spec = entry.spec()
    if args.tta and not spec.flip_augmented:
        raise CLIError(
            f"--tta needs a model trained with left-right flips; {spec.key} was not (spec.flip_augmented is false)"
        )
    net = load_network(spec, entry.weights_path, device)
    for vol, out in zip(vols, outs):
        depth = vol.shape[0]
        slices = None
        if args.slices is not None:
            a, b = args.slices
            a = 0 if a is None else (a + depth if a < 0 else a)
            b = depth if b is None else (b + depth if b < 0 else b)
            if not (0 <= a < b <= depth):
                raise CLIError(
                    f"--slices {args.slices[0] if args.slices[0] is not None else ''}:"
                    f"{args.slices[1] if args.slices[1] is not None else ''} is empty or outside 0..{depth} "
                    f"for {args.input} ({depth} slices)"
                )
            slices = range(a, b)
        with TqdmProgress(disable=args.quiet, desc=vol.name) as bar:
            res = segment_volume(
                vol,
                spec,
                net,
                slices=slices,
                batch_size=args.batch_size,
                device=device,
                tta=args.tta,
                precision=args.precision,
                progress=bar,
            )
        write_output_labels(out, res.labels, vol, spec.class_names)
        print(f"{out}: {len(res.segmented)} slices segmented with {spec.key} on {res.device} in {res.seconds:.1f} s")
    return 0


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
                ",".join(r["classes"]),
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
        "demo",
        "open napari with the CHAOS sample and the widgets (or --headless: segment, score, write)",
        _add_demo_args,
        cmd_demo,
    ),
]


def build_parser() -> argparse.ArgumentParser:
    """The ``napari-gi-seg`` parser: one sub-command per :data:`COMMANDS` entry and a
    global ``--debug`` (accepted before or after the sub-command)."""
    parser = argparse.ArgumentParser(prog="napari-gi-seg", description=__doc__.splitlines()[0])
    debug_help = "log at DEBUG level (with logger names) and show tracebacks of errors"
    parser.add_argument("--debug", action="store_true", help=debug_help)
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
