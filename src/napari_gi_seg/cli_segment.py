"""``napari-gi-seg segment``: one scan -> one label file, or a folder of scans -> one
output per series and a run manifest (sharded across processes under ``torchrun``).

Formats by the output's extension or ``--format``: NIfTI, TIFF, UW-Madison CSV, DICOM
RTSTRUCT (``.dcm``) and DICOM-SEG (``.seg.dcm``) for DICOM inputs. The work itself is
:mod:`napari_gi_seg.engine.batch` and :func:`~napari_gi_seg.engine.inference.segment_volume`;
this module turns arguments into calls and errors into :class:`~napari_gi_seg._cli_errors.CLIError`.
"""

from __future__ import annotations

import argparse
import os
import sys

from ._cli_errors import CLIError
from ._cli_types import int_at_least
from .constants import DEVICES, PRECISIONS


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


def add_segment_args(p: argparse.ArgumentParser) -> None:
    """The ``segment`` sub-command's arguments."""
    p.add_argument(
        "input", nargs="?", help="image: NIfTI, TIFF stack, DICOM series folder, ... (anything the readers take)"
    )
    p.add_argument(
        "-i",
        "--input-dir",
        default=None,
        metavar="DIR",
        help="segment every scan in DIR (DICOM series folders, NIfTI, TIFF); -o is then a folder "
        "with one output per series and a run manifest (segment-manifest.json); under torchrun the "
        "scans are shared out between the processes",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="label file to write; the format follows the extension: "
        ".nii.gz/.nii (the input's affine), .tif/.tiff, .csv (UW-Madison RLE), .dcm (DICOM RTSTRUCT), "
        ".seg.dcm (DICOM-SEG); with -i DIR (or a folder INPUT and an OUTPUT without extension): the output folder",
    )
    p.add_argument(
        "--format",
        default=None,
        choices=["nifti", "tiff", "rtstruct", "dicom-seg"],
        help="output format (default: by OUTPUT's extension; NIfTI for a folder); rtstruct and dicom-seg need "
        "a DICOM series input and reference it",
    )
    p.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write the class probabilities (C, z, y, x) float16 as OUTPUT_STEM.probabilities.npz",
    )
    p.add_argument(
        "--model",
        default=None,
        help="registered model NAME or NAME:VERSION (default: the bundled default model, newest version)",
    )
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--batch-size", type=int_at_least(1), default=8, help="slices per forward pass, >= 1 (default 8)")
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
        choices=PRECISIONS,
        help="number type of the forward pass (default auto: fp16 on CUDA, bf16 on CPUs with native "
        "bfloat16, else fp32)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUTPUT if it exists (default: refuse; an input of the run is never replaced); with -i DIR: "
        "segment every scan again (default: a rerun skips outputs that are up to date in the manifest)",
    )
    p.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="leave out unreadable or truncated files of a DICOM series with a warning naming them (default: "
        "refuse the series); a slice they leave missing is interpolated from its neighbours, with a warning",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--adapt",
        metavar="LABELS",
        default=None,
        help="corrected labels on the scan's grid: fine-tune a copy of the model on the --adapt-slices of them "
        "first, then segment with it (the corrected slices are written as drawn)",
    )
    p.add_argument(
        "--adapt-slices",
        metavar="Z,Z,...",
        default=None,
        help="the corrected slices of LABELS to adapt on, comma-separated 0-based indices as the reader numbers "
        "slices (a NIfTI file's third voxel axis); only these are used",
    )
    p.add_argument(
        "--save-model", metavar="NAME", default=None, help="register the adapted model as NAME (next free version)"
    )


def read_input_volumes(path: str, skip_unreadable: bool = False):
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
    vols = read_image(path, skip_unreadable=skip_unreadable, allow_uneven=skip_unreadable)
    if not vols:
        raise CLIError(f"{path}: no image found")
    for v in vols:
        if v.metadata.get("is_labels"):
            raise CLIError(f"{path}: looks like a label volume, not an image (segment the image it belongs to)")
    return vols


def _resolve_slices(sl, depth: int, source: str) -> range | None:
    """``--slices A:B`` (Python slice, negatives from the end) -> ``range`` within ``0..depth``."""
    if sl is None:
        return None
    a, b = sl
    a0 = 0 if a is None else (a + depth if a < 0 else a)
    b0 = depth if b is None else (b + depth if b < 0 else b)
    if not (0 <= a0 < b0 <= depth):
        raise CLIError(
            f"--slices {'' if a is None else a}:{'' if b is None else b} is empty or outside 0..{depth} "
            f"for {source} ({depth} slices)"
        )
    return range(a0, b0)


def _output_paths(output: str, vols, fmt_suffix: str | None = None) -> list[str]:
    """One output per volume: OUTPUT itself, or ``<stem>_<volume name><suffix>`` when
    the input holds several volumes (e.g. a folder of DICOM series: the volume name
    is then suffixed with the first 8 hex digits of the hashed ``SeriesInstanceUID``,
    so two series never share a path). Free-text DICOM fields such as
    ``SeriesDescription`` never reach a file name (they may hold a patient's name).

    Raises
    ------
    CLIError
        Naming the clashing path if two outputs would still have the same path (nothing
        is then written).
    """
    if len(vols) == 1:
        return [output]
    from .engine.batch import safe_name
    from .io import label_suffix

    suf = label_suffix(output) or fmt_suffix or ""
    stem = output[: len(output) - len(label_suffix(output) or "")]
    outs = []
    for v in vols:
        tag = safe_name(v.name)
        uid = v.metadata.get("series_instance_uid_hash")
        if uid:
            tag = f"{tag}_{uid[:8]}"
        outs.append(f"{stem}_{tag}{suf}")
    dup = sorted({o for o in outs if outs.count(o) > 1})
    if dup:
        raise CLIError(f"{dup[0]}: several volumes of the input would be written to this one file; nothing written")
    return outs


def _input_files(path: str | os.PathLike | None) -> list[str]:
    """The files an input names: the file itself, or every file under a folder."""
    if not path or not os.path.exists(path):
        return []
    if not os.path.isdir(path):
        return [str(path)]
    return [os.path.join(root, f) for root, _dirs, files in os.walk(path) for f in files]


def refuse_input_overwrite(outputs, inputs) -> None:
    """Raise :class:`~napari_gi_seg.errors.ConflictError` when an output would replace a
    file that is an input of the same run (compared by resolved path and, for files that
    exist, ``os.path.samefile``: symlinks and hard links count), whatever ``--overwrite``
    says: the labels must never replace the scan.

    Parameters
    ----------
    outputs : iterable of path
        The files the run would write.
    inputs : iterable of path
        Input files or folders (a folder stands for every file under it).
    """
    from pathlib import Path

    from .errors import ConflictError

    files = [f for i in inputs for f in _input_files(i)]
    resolved = {str(Path(f).resolve()): f for f in files}
    for o in outputs:
        hit = resolved.get(str(Path(o).resolve()))
        if hit is None and os.path.exists(o):
            hit = next((f for f in files if _same(o, f)), None)
        if hit is not None:
            raise ConflictError(
                f"{o}: this output is the input {hit} of the same run; refusing to write the labels over "
                "the scan (with or without --overwrite): choose another output"
            )


def _same(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def warn_burned_in(vol, source) -> None:
    """Log a warning when a DICOM series says ``BurnedInAnnotation`` YES (0028,0301):
    its pixels may show the patient's name or other identifiers, which the labels do
    not carry but an export of the image would."""
    if vol.metadata.get("burned_in_annotation"):
        import logging

        logging.getLogger("napari_gi_seg.cli").warning(
            "%s: the series says BurnedInAnnotation=YES: its pixels may show patient identifiers; "
            "do not share or export the image without checking it (export refuses it unless allowed)",
            source,
        )


def _segment_setup(args):
    """Checks shared by single and folder runs -> ``(device, entry, spec)``."""
    from .engine.inference import resolve_device
    from .models import registry

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    entry = registry.get_entry(args.model)  # ModelNotFoundError lists the known models
    spec = entry.spec()
    if args.tta and not spec.flip_augmented:
        raise CLIError(
            f"--tta needs a model trained with left-right flips; {spec.key} was not (spec.flip_augmented is false)"
        )
    return device, entry, spec


def _segment_options(args, slices=None, merge=None):
    from .engine.batch import SegmentOptions

    return SegmentOptions(
        batch_size=args.batch_size,
        tta=args.tta,
        precision=args.precision,
        slices=slices,
        save_probabilities=args.save_probabilities,
        quiet=args.quiet,
        merge=merge,
        fmt=args.format,
    )


def _run_one(vol, out, spec, net, device, options, quiet: bool) -> dict:
    from .engine.batch import segment_to_file
    from .progress import TqdmProgress

    # out-of-distribution input: the engine logs a warning (stderr, via the CLI's logging), never refuses
    with TqdmProgress(disable=quiet, desc=vol.name) as bar:
        rec = segment_to_file(vol, out, spec, net, device, options, progress=bar)
    print(f"{out}: {rec['slices_segmented']} slices segmented with {spec.key} on {device} in {rec['seconds']:.1f} s")
    return rec


def cmd_segment(args: argparse.Namespace) -> int:
    """``napari-gi-seg segment INPUT -o OUTPUT`` (one scan) or ``segment -i DIR -o DIR``
    (every scan in a folder, sharded across processes under torchrun): segment every
    slice (or ``--slices``) with a registered model and write the labels."""
    import os
    from pathlib import Path

    from .engine.batch import OUTPUT_FORMATS, probabilities_path
    from .io import LABEL_FORMATS, LABEL_WRITE_SUFFIXES, label_suffix, resolve_label_suffix
    from .models.network import load_network

    if (args.input is None) == (args.input_dir is None):
        raise CLIError("give either INPUT or -i/--input-dir DIR")
    if args.input_dir is not None or (Path(args.input).is_dir() and label_suffix(args.output) is None):
        return _segment_folder(args)
    suffix = label_suffix(args.output)
    if suffix is None:
        raise CLIError(f"{args.output}: unknown output format; use one of {', '.join(LABEL_WRITE_SUFFIXES)}")
    if args.format is not None and LABEL_FORMATS[suffix] != args.format:
        try:  # an explicit --format wins where the name allows it (any .dcm for rtstruct / dicom-seg)
            resolve_label_suffix(args.output, args.format)
        except ValueError:
            raise CLIError(
                f"{args.output}: --format {args.format} writes {OUTPUT_FORMATS[args.format]} files, not {suffix}"
            ) from None
    if not os.path.exists(args.input):
        raise CLIError(f"{args.input}: file not found")
    device, entry, spec = _segment_setup(args)
    vols = read_input_volumes(args.input, args.skip_unreadable)
    outs = _output_paths(args.output, vols)
    prob_outs = [probabilities_path(o) for o in outs] if args.save_probabilities else []
    refuse_input_overwrite([*outs, *prob_outs], [args.input, args.adapt])
    for v in vols:
        warn_burned_in(v, args.input)
    if not args.overwrite:
        for o in outs:
            if os.path.exists(o):
                raise CLIError(f"{o}: already exists (pass --overwrite to replace it)")
    net = load_network(spec, entry.weights_path, device)
    adapted = None
    if args.adapt or args.adapt_slices or args.save_model:
        if not args.adapt:
            raise CLIError("--adapt-slices and --save-model need --adapt LABELS")
        from .training.adaptation import adapt_from_files

        adapted = adapt_from_files(
            args.adapt, args.adapt_slices, vols, spec, net, device=device, save_model=args.save_model, quiet=args.quiet
        )
        spec, net = adapted.spec, adapted.net
    for vol, out in zip(vols, outs):
        options = _segment_options(
            args, _resolve_slices(args.slices, vol.shape[0], args.input), adapted.merge if adapted else None
        )
        _run_one(vol, out, spec, net, device, options, args.quiet)
    return 0


def _segment_folder(args: argparse.Namespace) -> int:
    """Every scan unit in the input folder -> one output per series in the output
    folder + the run manifest; units sharded by rank under torchrun. Resumable: a rerun
    skips up-to-date outputs, redoes missing or stale ones and merges the manifest
    (:mod:`napari_gi_seg.engine.resume`)."""
    from pathlib import Path

    from .engine import batch
    from .engine.resume import FolderManifest
    from .errors import ConflictError
    from .io import read_image
    from .models.network import load_network

    src = Path(args.input_dir or args.input)
    out_dir = Path(args.output)
    if args.adapt or args.adapt_slices or args.save_model:
        raise CLIError("--adapt works on one scan (INPUT), not on a folder of scans")
    if not src.is_dir():
        raise CLIError(f"{src}: not a folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"{out_dir}: exists and is not a folder (a folder run writes one file per series)")
    if out_dir.resolve() == src.resolve() or (out_dir.exists() and _same(out_dir, src)):
        raise ConflictError(
            f"{out_dir}: the output folder is the input folder {src}; the labels would replace or mix with "
            "the scans (and be read as scans by the next run): choose another output folder"
        )
    fmt = args.format or "nifti"
    suffix = batch.OUTPUT_FORMATS[fmt]
    units = batch.find_scans(src)
    if not units:
        raise CLIError(f"{src}: no scans found (DICOM series folders, NIfTI or TIFF files)")
    refuse_input_overwrite(
        [out_dir / f"{batch.unit_stem(u)}{suffix}" for u in units if u.is_file()], [u for u in units if u.is_file()]
    )
    device, entry, spec = _segment_setup(args)
    started = batch.utc_now()
    rank, world = batch.distributed_context()
    if world > 1 and device.type == "cuda":
        import torch

        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    out_dir.mkdir(parents=True, exist_ok=True)
    info = batch.run_info(entry, spec, device, _segment_options(args), fmt, world)
    manifest = FolderManifest(out_dir, info, started, incremental=world == 1)
    net = load_network(spec, entry.weights_path, device)
    records, skipped = [], 0
    for unit in batch.shard(units, rank, world):
        try:
            vols = [
                v
                for v in read_image(unit, skip_unreadable=args.skip_unreadable, allow_uneven=args.skip_unreadable)
                if not v.metadata.get("is_labels")
            ]
        except (OSError, ValueError) as e:
            rec = {"unit": batch.unit_stem(unit), "status": "failed", "error": _no_path(e, unit, out_dir), "rank": rank}
            records.append(manifest.add(rec))
            print(f"napari-gi-seg: {e}", file=sys.stderr)
            continue
        for vol, stem in zip(vols, batch.output_names(unit, vols)):
            out = out_dir / f"{stem}{suffix}"
            refuse_input_overwrite([out], [unit])
            warn_burned_in(vol, unit)
            sha = batch.voxel_sha256(vol.data)
            if not args.overwrite and manifest.up_to_date(out, sha):
                print(f"{out}: up to date (same input, model and settings), skipped")
                records.append(manifest.skipped(out.name))
                skipped += 1
                continue
            try:
                if out.exists() and not args.overwrite:
                    if not manifest.listed(out.name):
                        raise CLIError(f"{out}: already exists and no earlier run recorded it (pass --overwrite)")
                    print(f"{out}: {manifest.why_stale(out, sha)}; segmenting it again")
                manifest.running(out.name, sha)
                options = _segment_options(args, _resolve_slices(args.slices, vol.shape[0], str(unit)))
                rec = _run_one(vol, out, spec, net, device, options, args.quiet or world > 1)
            except (CLIError, OSError, ValueError) as e:
                rec = {"output": out.name, "status": "failed", "error": _no_path(e, unit, out_dir)}
                print(f"napari-gi-seg: {e}", file=sys.stderr)
            records.append(manifest.add({**rec, "rank": rank}, out))
    records = batch.gather_records(records, world)
    if rank == 0:
        print(f"manifest: {manifest.save(records)}")
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    failed = [r for r in records if r.get("status") != "ok"]
    if skipped:
        print(f"{skipped} of {len(records)} outputs were up to date and skipped (--overwrite segments them again)")
    if failed:
        raise CLIError(f"{len(failed)} of {len(records)} scans failed (see {out_dir / batch.MANIFEST_NAME})")
    return 0


def _no_path(err: Exception, unit, out_dir) -> str:
    """An error message for the manifest without local paths (input unit -> its name,
    output folder dropped)."""
    return str(err).replace(str(out_dir) + os.sep, "").replace(str(unit), unit.name)
