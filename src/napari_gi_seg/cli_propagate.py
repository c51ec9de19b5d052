"""``napari-gi-seg propagate``: the previous day's labels carried onto today's scan by
image registration (:func:`napari_gi_seg.propagation.propagate`).

Scans in every format :func:`napari_gi_seg.io.read_image` reads; labels as NIfTI, TIFF,
RTSTRUCT or DICOM-SEG drawn on the previous scan; output by the suffix as ``segment``
writes it (``.dcm`` an RTSTRUCT referencing today's DICOM series). Errors become
:class:`~napari_gi_seg._cli_errors.CLIError` (exit 2).
"""

from __future__ import annotations

import argparse
import os

from ._cli_errors import CLIError


def add_propagate_args(p: argparse.ArgumentParser) -> None:
    """The ``propagate`` sub-command's arguments."""
    p.add_argument("--from", dest="prev", required=True, metavar="PREV_SCAN", help="the previous day's scan")
    p.add_argument(
        "--labels",
        required=True,
        metavar="PREV_LABELS",
        help="labels drawn on PREV_SCAN: .nii/.nii.gz, .tif/.tiff, an RTSTRUCT or a DICOM-SEG",
    )
    p.add_argument("--to", dest="input", required=True, metavar="TODAY_SCAN", help="today's scan")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="labels on today's grid; format by extension: .nii.gz/.nii, .tif/.tiff, .dcm (RTSTRUCT on "
        "today's DICOM series), .seg.dcm (DICOM-SEG)",
    )
    p.add_argument(
        "--stages",
        default="auto",
        help="registration stages, some of rigid,affine,bspline in that order; 'none': scanner coordinates; "
        "'auto' (default): all three, except for two scans of one Frame of Reference (one session) without "
        "itk-elastix: none (scanner coordinates)",
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "simpleitk", "elastix"],
        help="registration library: 'auto' (default): itk-elastix for two scans of one Frame of Reference when "
        "installed, else SimpleITK; 'elastix' needs pip install itk-elastix",
    )
    p.add_argument("--interpolation", default="distance", choices=["distance", "nearest"], help="label interpolation")
    p.add_argument(
        "--initial",
        default="world",
        choices=["world", "moments"],
        help="start from the scanner coordinates (default; the scans share a patient frame) or align the "
        "centres of mass first (scans in different frames)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the metric's random sampling (default 0)")
    p.add_argument("--threads", type=int, default=2, help="registration threads (default 2)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the transform's figures as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists (default: refuse)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _one_image(path: str, what: str):
    from .cli_segment import read_input_volumes

    vols = read_input_volumes(path)
    if len(vols) != 1:
        raise CLIError(f"{path}: holds {len(vols)} image series; give the folder of the one {what} scan")
    return vols[0]


def cmd_propagate(args: argparse.Namespace) -> int:
    """``napari-gi-seg propagate --from PREV --labels LABELS --to TODAY -o OUT``."""
    from .io import label_suffix, write_labels
    from .progress import TqdmProgress
    from .propagation import RegistrationSettings, default_settings, propagate, read_previous_labels

    suffix = label_suffix(args.output)
    if suffix is None or suffix == ".csv":
        raise CLIError(f"{args.output}: unknown output format; use .nii.gz, .nii, .tif, .tiff, .dcm or .seg.dcm")
    if os.path.exists(args.output) and not args.overwrite:
        raise CLIError(f"{args.output}: already exists (pass --overwrite to replace it)")
    for path in (args.prev, args.labels, args.input):
        if not os.path.exists(path):
            raise CLIError(f"{path}: file not found")
    auto = args.stages.strip() == "auto"
    stages = () if args.stages.strip() == "none" else tuple(s.strip() for s in args.stages.split(",") if s.strip())
    kw = {"seed": args.seed, "threads": args.threads, "initial": args.initial}
    if args.backend != "auto":
        kw["backend"] = args.backend
    try:
        settings = RegistrationSettings(**kw) if auto else RegistrationSettings(stages=stages, **kw)
    except ValueError as e:
        raise CLIError(f"--stages/--initial/--backend: {e}") from e
    prev = _one_image(args.prev, "previous")
    today = _one_image(args.input, "today's")
    if auto:
        settings = default_settings(prev, today, **kw)
    if suffix in (".dcm", ".seg.dcm") and getattr(today, "_dicom_ref", None) is None:
        raise CLIError(f"{args.output}: an RTSTRUCT or DICOM-SEG needs today's scan as a DICOM series ({args.input})")
    labels = read_previous_labels(args.labels, prev)
    with TqdmProgress(disable=args.quiet, desc="propagate") as bar:
        result = propagate(prev, labels, today, settings=settings, interpolation=args.interpolation, progress=bar)
    names = result.labels.metadata.get("class_names")
    out = write_labels(
        args.output, result.labels.data, today, names, generation="SEMIAUTOMATIC", model_key="propagation"
    )
    s = result.summary()
    if args.json:
        from ._atomic import write_json

        write_json(args.json, s)
    metric = "-" if s["metric"] is None else f"{s['metric']:.3f}"
    print(
        f"{out}: labels propagated ({'+'.join(s['stages']) or 'scanner coordinates'}) in {s['seconds']:.1f} s; "
        f"final metric {metric}, folded {100 * s['folded_fraction']:.3f} % of the body"
    )
    return 0
