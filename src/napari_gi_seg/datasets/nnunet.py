"""The nnU-Net v2 raw layout (``dataset.json``, ``imagesTr``, ``labelsTr``): what
exported corrections use and what nnU-Net itself reads.

A label named ``"ignore"`` in ``dataset.json`` (nnU-Net's ignore-label convention: it
must be the highest value) marks voxels nobody reviewed; it is mapped to
:data:`~.case.IGNORE_INDEX` and excluded from the loss.

``dataset.json`` is the single list of cases when it has ``groups`` (what our
exporter writes): files it does not list are ignored with a warning, so the image
and label files of an interrupted append never reach training (without a group
or provenance). Every key is type-checked (:func:`validate_dataset_json`).

Partial labels: ``dataset.json``'s optional ``"annotated_classes": {case: [names]}``
(written by our exporter) says which structures were annotated on each case's
reviewed slices; a case it does not list annotates every class. In a case's label
file, the value of a class the case does not annotate is read as the ignore label:
that is how the label files of cases exported before a structure was added (whose
ignore value was the new structure's value) stay valid.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..io.nifti import read_nifti
from .case import IGNORE_INDEX, Case, CaseRef, DatasetFormatError, SegDataset, _natural_key

# nnU-Net v2 raw layout: the one place it is spelled out (the exporter uses it too).
NNUNET_FILE_ENDING = ".nii.gz"
NNUNET_IMAGES, NNUNET_LABELS, NNUNET_JSON = "imagesTr", "labelsTr", "dataset.json"

log = logging.getLogger(__name__)


def nnunet_image_relpath(case_id: str, file_ending: str = NNUNET_FILE_ENDING) -> Path:
    """``imagesTr/<case>_0000<ending>``: the single-channel (channel 0) image of a case."""
    return Path(NNUNET_IMAGES) / f"{case_id}_0000{file_ending}"


def nnunet_label_relpath(case_id: str, file_ending: str = NNUNET_FILE_ENDING) -> Path:
    """``labelsTr/<case><ending>``: the label volume of a case."""
    return Path(NNUNET_LABELS) / f"{case_id}{file_ending}"


#: Case ids a dataset.json may list (no path separators, no leading dot).
_CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_dataset_json(path: Path, meta: object) -> dict:
    """Type-check a parsed ``dataset.json``; returns it.

    Checked keys: the top level is an object; ``labels`` maps names to distinct
    integer values with ``background`` = 0 (region lists, strings, objects and
    booleans are refused); ``file_ending`` is a string starting with ``.``;
    ``numTraining`` a non-negative integer; ``channel_names`` an object; ``groups``
    an object mapping case ids (letters, digits, ``.``, ``_``, ``-``) to patient
    strings; ``name``/``description`` strings.

    Raises
    ------
    DatasetFormatError
        Naming the file, the key and what is wrong.
    """

    def bad(key: str, what: str):
        raise DatasetFormatError(f"{path}: key {key!r}: {what}")

    if not isinstance(meta, dict):
        raise DatasetFormatError(f"{path}: must be a JSON object ({{...}}), got a {type(meta).__name__}")
    labels = meta.get("labels")
    if not isinstance(labels, dict):
        bad("labels", f"must be an object mapping class names to label values, got {type(labels).__name__}")
    for name, v in labels.items():
        if isinstance(v, (list, tuple)):
            bad(f"labels.{name}", f"region-based labels (lists such as {v!r}) are not supported")
        if isinstance(v, bool) or not isinstance(v, int):
            bad(f"labels.{name}", f"label values must be integers, got {type(v).__name__} {v!r}")
        if not 0 <= v <= 255:
            bad(f"labels.{name}", f"label values must be 0..255, got {v}")
    if labels.get("background") != 0:
        bad("labels", "must include 'background': 0")
    if len(set(labels.values())) != len(labels):
        bad("labels", f"label values must be distinct, got {sorted(labels.values())}")
    fe = meta.get("file_ending", NNUNET_FILE_ENDING)
    if not isinstance(fe, str) or not fe.startswith(".") or "/" in fe or "\\" in fe:
        bad("file_ending", f"must be a file suffix such as '.nii.gz', got {fe!r}")
    n = meta.get("numTraining", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        bad("numTraining", f"must be a non-negative integer, got {n!r}")
    if "channel_names" in meta and not isinstance(meta["channel_names"], dict):
        bad("channel_names", f"must be an object such as {{'0': 'MR'}}, got {type(meta['channel_names']).__name__}")
    groups = meta.get("groups", {})
    if not isinstance(groups, dict):
        bad("groups", f"must be an object mapping case ids to patient ids, got {type(groups).__name__}")
    for cid, g in groups.items():
        if not _CASE_ID_RE.match(cid):
            bad(f"groups.{cid}", "case ids must be letters, digits, '.', '_' or '-' (no path separators)")
        if not isinstance(g, str) or not g:
            bad(f"groups.{cid}", f"the patient id must be a non-empty string, got {g!r}")
    annotated = meta.get("annotated_classes", {})
    names = set(labels) - {"background", "ignore"}
    if not isinstance(annotated, dict):
        bad("annotated_classes", f"must be an object mapping case ids to lists of class names, got {annotated!r}")
    for cid, a in annotated.items():
        if not isinstance(a, list) or not all(isinstance(n, str) for n in a):
            bad(f"annotated_classes.{cid}", f"must be a list of class names, got {a!r}")
        unknown = sorted(set(a) - names)
        if unknown:
            bad(f"annotated_classes.{cid}", f"names classes not in 'labels': {unknown}")
    for k in ("name", "description"):
        if k in meta and not isinstance(meta[k], str):
            bad(k, f"must be a string, got {type(meta[k]).__name__}")
    return meta


def read_dataset_json(root: Path) -> dict:
    """Read and type-check ``<root>/dataset.json`` (:func:`validate_dataset_json`).

    Raises :class:`DatasetFormatError` naming the file (unreadable, not JSON, bad keys).
    """
    path = Path(root) / NNUNET_JSON
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetFormatError(f"{path}: cannot read ({e})") from e
    return validate_dataset_json(path, meta)


def listed_cases(root: Path, meta: dict) -> list[str]:
    """The dataset's cases: with a ``groups`` object (our exporter's list), exactly
    its keys; label files it does not list (e.g. left by an interrupted append) are
    ignored with a warning. Without ``groups`` (a plain nnU-Net dataset): every label
    file, as nnU-Net does (a ``numTraining`` that differs is warned about).

    Raises :class:`DatasetFormatError` for a listed case whose label file is missing.
    """
    suffix = meta.get("file_ending", NNUNET_FILE_ENDING)
    lab_dir = root / NNUNET_LABELS
    on_disk = {p.name[: -len(suffix)] for p in lab_dir.glob(f"*{suffix}") if not p.name.startswith(".")}
    if "groups" in meta:
        ids = sorted(meta["groups"], key=_natural_key)
        missing = [c for c in ids if c not in on_disk]
        if missing:
            raise DatasetFormatError(
                f"{lab_dir / (missing[0] + suffix)}: listed in dataset.json but missing ({len(missing)} case(s))"
            )
        extra = sorted(on_disk - set(ids), key=_natural_key)
        if extra:
            log.warning(
                "%s: %d label file(s) not listed in dataset.json are ignored (an interrupted export?): %s",
                root,
                len(extra),
                ", ".join(extra[:5]),
            )
        return ids
    ids = sorted(on_disk, key=_natural_key)
    if meta.get("numTraining") not in (None, len(ids)):
        log.warning("%s: numTraining is %s but %d label files were found", root, meta.get("numTraining"), len(ids))
    return ids


def open_nnunet(root: Path, class_names: Sequence[str] | None = None) -> SegDataset:
    """nnU-Net v2 raw layout (see module docstring). Cases: :func:`listed_cases`.
    Groups: ``dataset.json``'s optional ``"groups": {case: patient}`` (written by our
    exporter), else the case id.

    Raises :class:`DatasetFormatError` naming the file and key for a malformed
    ``dataset.json`` (:func:`validate_dataset_json`) or missing files.
    """
    root = Path(root)
    meta = read_dataset_json(root)
    labels = meta["labels"]
    by_value = {int(v): k for k, v in labels.items()}
    ignore_value = labels.get("ignore")
    fg = sorted((v, k) for v, k in by_value.items() if v != 0 and k != "ignore")
    if [v for v, _ in fg] != list(range(1, len(fg) + 1)):
        raise DatasetFormatError(f"{root / 'dataset.json'}: foreground labels must be 1..K, got {[v for v, _ in fg]}")
    if ignore_value is not None and int(ignore_value) != len(fg) + 1:
        raise DatasetFormatError(
            f"{root / 'dataset.json'}: the ignore label must be the highest value ({len(fg) + 1}), got {ignore_value}"
        )
    names = [k for _, k in fg]
    if class_names is not None and list(class_names) != names:
        raise DatasetFormatError(f"{root}: classes {names} differ from the requested {list(class_names)}")
    suffix = meta.get("file_ending", NNUNET_FILE_ENDING)
    groups = meta.get("groups", {})
    annotated = {cid: tuple(n for n in names if n in a) for cid, a in meta.get("annotated_classes", {}).items()}
    lab_dir = root / NNUNET_LABELS
    ids = listed_cases(root, meta)
    if not ids:
        raise DatasetFormatError(f"{lab_dir}: no label files ending in {suffix}")

    def loader(cid: str) -> Callable[[], Case]:
        def load() -> Case:
            ip = root / nnunet_image_relpath(cid, suffix)
            if not ip.exists():
                raise DatasetFormatError(f"{ip}: image for case {cid} is missing")
            img = read_nifti(ip, as_labels=False)
            lab = read_nifti(root / nnunet_label_relpath(cid, suffix), as_labels=True)
            if lab.shape != img.shape:
                raise DatasetFormatError(
                    f"{lab_dir / (cid + suffix)}: label shape {lab.shape} differs from image {img.shape}"
                )
            t = lab.data.astype(np.uint8)
            if ignore_value is not None:
                t[t == int(ignore_value)] = IGNORE_INDEX
            for v, n in fg:  # a class this case does not annotate: its value is no label (see module docstring)
                if cid in annotated and n not in annotated[cid]:
                    t[t == v] = IGNORE_INDEX
            if (t[t != IGNORE_INDEX].max(initial=0)) > len(names):
                raise DatasetFormatError(f"{lab_dir / (cid + suffix)}: label values exceed the {len(names)} classes")
            return Case(cid, str(groups.get(cid, cid)), img, t, annotated.get(cid))

        return load

    refs = [CaseRef(i, str(groups.get(i, i)), loader(i), annotated.get(i)) for i in ids]
    return SegDataset(root, "nnunet", names, refs, extra={"dataset_json": meta})
