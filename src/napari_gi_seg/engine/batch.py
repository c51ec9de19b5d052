"""Segmenting scans from files: one output per series, a run manifest, torchrun sharding.

Used by ``napari-gi-seg segment`` (GUI-free, no argparse). A *scan unit* is what
:func:`find_scans` lists in an input folder: a NIfTI or TIFF file, or a folder of DICOM
files (which may hold several series, each segmented on its own) or a UW-Madison
case-day folder. Each series gets one output, named after its unit.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the units are sharded:
rank ``r`` of ``W`` takes units ``r, r + W, r + 2W, ...`` of the sorted list
(:func:`shard`), so the ranks' sets are disjoint and together complete. The records of
all ranks are gathered (``torch.distributed`` over gloo) and rank 0 alone writes the
run manifest (:data:`MANIFEST_NAME`) beside the outputs.

The manifest records what is needed to reproduce or audit a run and nothing about the
patient: model key and weights sha256, package versions, device, precision, TTA,
post-processing, output format and, per series, the output's file name, a sha256 of
the voxel data, shape, spacing and timing. No input path, DICOM UID or patient value
is written.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io.volume import Volume
from ..progress import ProgressCallback

MANIFEST_NAME = "segment-manifest.json"
PROBABILITIES_SUFFIX = ".probabilities.npz"
#: ``--format`` -> output suffix.
OUTPUT_FORMATS = {"nifti": ".nii.gz", "tiff": ".tif", "rtstruct": ".dcm", "dicom-seg": ".seg.dcm"}
_PACKAGES = (
    "napari-gi-seg",
    "torch",
    "segmentation-models-pytorch",
    "monai",
    "numpy",
    "nibabel",
    "pydicom",
    "highdicom",
    "tifffile",
)


# ----------------------------------------------------------------- discovery and sharding
def find_scans(folder: str | Path) -> list[Path]:
    """The scan units in ``folder``, sorted by name: NIfTI and TIFF files, folders with
    DICOM files (searched recursively) and UW-Madison case-day folders. A folder that
    holds DICOM files itself is one unit. Hidden entries are skipped.

    Raises
    ------
    NotADirectoryError
        ``folder`` is not a folder.
    """
    from ..io import _kind
    from ..io.dicom import looks_like_dicom

    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    children = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if any(p.is_file() and looks_like_dicom(p) for p in children):
        return [folder]
    # one unit per real file or folder: a link to the folder itself or above (``loop -> .``)
    # or to a sibling (``alias -> seriesA``) adds none; real entries win over links
    here, seen, units = folder.resolve(), set(), []
    for p in sorted(children, key=lambda c: (c.is_symlink(), c.name)):
        try:
            real = p.resolve()
        except (OSError, RuntimeError):  # a dangling or looping link
            continue
        if real in seen or (p.is_dir() and (real == here or real in here.parents)):
            continue
        kind = _kind(p)
        if (p.is_dir() and kind in ("dicom", "uwmgi")) or (p.is_file() and kind in ("nifti", "tiff")):
            seen.add(real)
            units.append(p)
    return sorted(units)


def shard(items: list, rank: int, world_size: int) -> list:
    """Items ``rank, rank + world_size, ...``: disjoint across ranks, complete together."""
    return list(items)[rank::world_size]


def distributed_context() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's environment; with ``WORLD_SIZE`` > 1 the
    default process group is initialised (gloo) if it is not yet. ``(0, 1)`` otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def gather_records(records: list[dict], world_size: int) -> list[dict]:
    """All ranks' records on every rank (``all_gather_object``, also a barrier); the
    records themselves when not distributed."""
    if world_size <= 1:
        return records
    import torch.distributed as dist

    out: list = [None] * world_size
    dist.all_gather_object(out, records)
    return [r for part in out for r in (part or [])]


# ----------------------------------------------------------------- names and fingerprints
def safe_name(text: str) -> str:
    """``text`` reduced to letters, digits, ``.``, ``_`` and ``-`` (file-name safe)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    return s or "scan"


def unit_stem(unit: Path) -> str:
    """The output stem of a scan unit: its file name without the image suffix."""
    n = unit.name
    for suf in (".nii.gz", ".nii", ".tiff", ".tif"):
        if n.lower().endswith(suf):
            return safe_name(n[: -len(suf)])
    return safe_name(n)


def output_names(unit: Path, vols: list[Volume]) -> list[str]:
    """One output stem per volume of ``unit``: the unit's stem (its sanitised file or
    folder name), plus, when the unit holds several series, the first 8 hex digits of
    the hashed ``SeriesInstanceUID`` (UW-Madison: ``<case id>_day<n>``), and ``-2``,
    ``-3``... should two volumes still share a name (one series split into volumes).

    Free-text DICOM fields (``SeriesDescription``, ``ProtocolName``, ...) are never used:
    they may hold a patient's name.
    """
    stem = unit_stem(unit)
    if len(vols) == 1:
        return [stem]
    names: list[str] = []
    for i, v in enumerate(vols):
        md = v.metadata
        tag = str(md.get("series_instance_uid_hash") or "")[:8] or f"{i + 1:03d}"
        if md.get("day") is not None and md.get("case_id"):
            tag = f"{md['case_id']}_day{md['day']}"
        if md.get("volume_label"):  # one volume of a multi-echo series: ..._e1, ..._e2 (as dcm2niix)
            tag = f"{tag}_{md['volume_label']}"
        base = f"{stem}_{safe_name(tag)}"
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}-{k}"
        names.append(name)
    return names


def voxel_sha256(data: np.ndarray) -> str:
    """sha256 hex of an array's shape, dtype and bytes (identifies the input voxels
    without any path, UID or patient value)."""
    a = np.ascontiguousarray(data)
    h = hashlib.sha256(f"{a.shape}|{a.dtype.str}|".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 hex of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a run depends on (``None`` if absent), and Python's."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


# ----------------------------------------------------------------- one series
@dataclass
class SegmentOptions:
    """How each series is segmented and written (``napari-gi-seg segment`` options).

    ``fmt``: a key of :data:`OUTPUT_FORMATS` or ``None`` (by the output's suffix);
    ``slices``: ``range`` of z indices or ``None`` (all); ``precision``: see
    :func:`~.inference.autocast_dtype`; ``save_probabilities``: also write the
    ``(C, z, y, x)`` float16 class probabilities (``.probabilities.npz``).
    """

    batch_size: int = 8
    tta: bool = False
    precision: str = "auto"
    slices: range | None = None
    save_probabilities: bool = False
    quiet: bool = True
    #: ``labels (z, y, x) -> labels`` applied before writing (``segment --adapt`` puts the
    #: corrected slices back as drawn), or ``None``
    merge: Callable[[np.ndarray], np.ndarray] | None = None
    #: output format (a key of :data:`OUTPUT_FORMATS`), or ``None``: by the suffix
    fmt: str | None = None


def write_probabilities(path: str | Path, probs: np.ndarray, volume: Volume, class_names: dict[int, str]) -> Path:
    """Save ``(C, z, y, x)`` float16 probabilities as a compressed ``.npz`` with
    ``probabilities``, ``class_names`` (channel order: background first for softmax
    models) and ``spacing_mm``, through :func:`napari_gi_seg._atomic.atomic_path`
    (a killed run leaves no visible file; its hidden temporary is removed by the next
    write into the folder)."""
    from .._atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy adds no suffix
        np.savez_compressed(
            f,
            probabilities=np.asarray(probs, np.float16),
            class_names=np.array([class_names[k] for k in sorted(class_names)]),
            spacing_mm=np.asarray(volume.spacing_mm, float),
        )
    return path


def probabilities_path(out: str | Path) -> Path:
    """``<output stem>.probabilities.npz`` beside the label file ``out``."""
    from ..io import label_suffix

    out = Path(out)
    stem = out.name[: len(out.name) - len(label_suffix(out) or out.suffix)]
    return out.with_name(stem + PROBABILITIES_SUFFIX)


def segment_to_file(
    volume: Volume,
    out: str | Path,
    spec,
    net: torch.nn.Module,
    device: torch.device,
    options: SegmentOptions,
    progress: ProgressCallback | None = None,
) -> dict:
    """Segment one ``volume`` with :func:`~.inference.segment_volume` and write the
    labels to ``out`` (format by suffix: NIfTI, TIFF, UW-Madison CSV, RTSTRUCT
    ``.dcm``, DICOM-SEG ``.seg.dcm``; class names and colours from ``spec``).
    ``progress`` gets ``"segment"`` :class:`~napari_gi_seg.progress.ProgressEvent` s
    (the protocol of :mod:`napari_gi_seg.progress`).

    Returns the manifest record of the series (no path other than the output's name).

    Raises
    ------
    ValueError
        From the writer (e.g. an RTSTRUCT for an image not read from DICOM).
    """
    from ..io import write_labels
    from ..io.rtstruct import require_reference
    from .inference import segment_volume

    if str(out).lower().endswith(".dcm") or options.fmt in ("rtstruct", "dicom-seg"):
        require_reference(volume, out)  # fail before the work, not after
    res = segment_volume(
        volume,
        spec,
        net,
        slices=options.slices,
        batch_size=options.batch_size,
        device=device,
        tta=options.tta,
        return_probs=options.save_probabilities,
        precision=options.precision,
        progress=progress,
    )
    names = {c.index: c.name for c in spec.classes}
    colours = {c.index: c.colour for c in spec.classes}
    out = Path(out)
    labels = res.labels if options.merge is None else options.merge(res.labels)
    write_labels(
        out, labels, volume, names, colours=colours, model_key=spec.key, generation="AUTOMATIC", fmt=options.fmt
    )
    rec = {
        "output": out.name,
        "input_sha256": voxel_sha256(volume.data),
        "input_format": volume.metadata.get("format") or "unknown",
        "shape_zyx": [int(s) for s in volume.shape],
        "spacing_mm": [round(float(s), 6) for s in volume.spacing_mm],
        "slices_segmented": len(res.segmented),
        "seconds": round(res.seconds, 3),
        "labels_voxels": {names[v]: int(n) for v, n in zip(*np.unique(labels, return_counts=True)) if v in names},
        "status": "ok",
    }
    if options.save_probabilities and res.probs is not None:
        p = write_probabilities(probabilities_path(out), res.probs, volume, spec.class_names)
        rec["probabilities"] = p.name
    return rec


# ----------------------------------------------------------------- manifest
def run_info(entry, spec, device: torch.device, options: SegmentOptions, fmt: str, world_size: int) -> dict:
    """The run-level part of the manifest (model, weights sha256, versions, device,
    precision, TTA, post-processing, output format)."""
    from .inference import autocast_dtype

    dt = autocast_dtype(device, options.precision)
    dev = {"type": device.type}
    if device.type == "cuda":
        dev["name"] = torch.cuda.get_device_name(device)
    return {
        "model": {"key": spec.key, "weights_sha256": file_sha256(entry.weights_path)},
        "packages": package_versions(),
        "device": dev,
        "precision": {"requested": options.precision, "forward": str(dt).replace("torch.", "") if dt else "float32"},
        "tta": bool(options.tta),
        "postprocessing": {
            "keep_largest_3d_component": [c.name for c in spec.classes if c.single_component],
            "applied_when": "the whole stack is segmented",
        },
        "output_format": fmt,
        "save_probabilities": bool(options.save_probabilities),
        "slices": None if options.slices is None else [options.slices.start, options.slices.stop],
        "world_size": int(world_size),
    }


def write_manifest(
    folder: str | Path, info: dict, records: list[dict], started: str, history: list[dict] | None = None
) -> Path:
    """Write :data:`MANIFEST_NAME` in ``folder`` through :func:`napari_gi_seg._atomic.write_json`.

    ``records``: one per output (see :mod:`napari_gi_seg.engine.resume` for how a rerun
    merges them with the previous manifest); ``history``: the earlier runs into the same
    folder (``started``, ``finished``, ``model``), oldest first.
    """
    from .._atomic import write_json

    doc = {
        "format_version": 1,
        "software": "napari-gi-seg",
        "started": started,
        "finished": utc_now(),
        **info,
        "n_outputs": sum(r.get("status") == "ok" for r in records),
        "cases": sorted(records, key=lambda r: str(r.get("output", ""))),
    }
    if history:
        doc["previous_runs"] = history
    return write_json(Path(folder) / MANIFEST_NAME, doc)


def utc_now() -> str:
    """ISO 8601 UTC time, seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


__all__ = [
    "find_scans",
    "shard",
    "distributed_context",
    "gather_records",
    "output_names",
    "segment_to_file",
    "SegmentOptions",
    "run_info",
    "write_manifest",
    "voxel_sha256",
    "MANIFEST_NAME",
    "OUTPUT_FORMATS",
]
