"""Export clinician-reviewed labels as an nnU-Net v2 raw dataset (GUI-free).

Layout (nnU-Net v2 ``dataset_format.md``; read back by
:func:`napari_gi_seg.datasets.open_nnunet`)::

    <dataset_dir>/
        dataset.json            channel_names, labels (+ "ignore"), numTraining,
                                file_ending ".nii.gz", groups {case: patient}
        provenance.json         one entry per case (model, software, time, reviewed
                                slices, per-slice correction Dice, RT contour metrics
                                of the model vs the final labels); no patient data
        imagesTr/<case>_0000.nii.gz   the image, with its own affine
        labelsTr/<case>.nii.gz        labels; slices NOT reviewed = ignore label

Only reviewed slices carry supervision: every voxel of an unreviewed slice gets the
**ignore label** ``K + 1`` (K = number of foreground classes), named ``"ignore"`` in
``dataset.json``, which nnU-Net v2 excludes from the loss and from evaluation
(nnU-Net ``documentation/ignore_label.md``: the ignore label must be named
``"ignore"`` and be the highest label value). Our trainer maps it to
:data:`~napari_gi_seg.datasets.IGNORE_INDEX`.

Atomicity: all files of an export are written into a temporary folder beside the
dataset (``.<name>.export-<random>``). A first export then renames that folder to
``dataset_dir``; an append moves the two new NIfTI files into place and then
replaces ``provenance.json`` and ``dataset.json`` (the commit), undoing the moves if
any step fails. An exception while writing therefore leaves no dataset folder (first
export) or the previous complete dataset (append).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .. import __version__
from ..datasets import NNUNET_FILE_ENDING, NNUNET_LABELS, nnunet_image_relpath, nnunet_label_relpath
from ..evaluation.metrics import rt_contour_metrics
from ..io.nifti import write_nifti
from ..io.volume import Volume
from .review import correction_dice_per_slice
from .session import image_fingerprint

__all__ = ["export_case", "IGNORE_NAME", "FILE_ENDING", "dataset_labels"]

IGNORE_NAME = "ignore"
FILE_ENDING = NNUNET_FILE_ENDING
PROVENANCE_FILE = "provenance.json"
_CASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def dataset_labels(class_names: Mapping[int, str]) -> dict[str, int]:
    """The ``dataset.json`` ``labels`` mapping for foreground ``class_names``
    ``{1: "liver", ...}``: ``{"background": 0, "liver": 1, ..., "ignore": K + 1}``.

    Raises ``ValueError`` unless the keys are exactly 1..K (K <= 254) with distinct,
    non-empty names other than "background" and "ignore".
    """
    try:
        items = sorted((int(k), str(v)) for k, v in class_names.items())
    except (TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"class_names must map label values 1..K to names, got {class_names!r}") from e
    keys = [k for k, _ in items]
    if not keys or keys != list(range(1, len(keys) + 1)):
        raise ValueError(f"class_names keys must be 1..K without gaps (background excluded), got {keys}")
    if len(keys) > 254:
        raise ValueError(f"at most 254 foreground classes fit uint8 with an ignore label, got {len(keys)}")
    names = [n for _, n in items]
    if len(set(names)) != len(names) or any(not n or n in ("background", IGNORE_NAME) for n in names):
        raise ValueError(f"class names must be distinct, non-empty and not 'background'/'ignore': {names}")
    out = {"background": 0}
    out.update({n: k for k, n in items})
    out[IGNORE_NAME] = len(items) + 1
    return out


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _source_key(image: Volume) -> str:
    """A pseudonymous id of the image's source: sha256 of the file name (file names
    may contain patient names, so they are never written out), or of the image data
    when there is no file."""
    if image.metadata.get("source_path"):
        basis = image.name.encode()
    else:
        basis = image_fingerprint(image.data).encode()
    return "img" + hashlib.sha256(basis).hexdigest()[:8]


def _model_info(model_key: str | None) -> dict | None:
    if not model_key:
        return None
    name, _, version = str(model_key).rpartition(":")
    if not name or not version.isdigit():
        return {"key": str(model_key), "name": str(model_key), "version": None}
    return {"key": str(model_key), "name": name, "version": int(version)}


def _finite(o):
    """``o`` with NaN/inf floats replaced by ``None`` (strict JSON)."""
    if isinstance(o, float):
        return o if np.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    return o


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read ({e})") from e


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def export_case(
    dataset_dir: str | Path,
    image: Volume,
    labels: np.ndarray,
    reviewed_slices: Sequence[int],
    class_names: Mapping[int, str],
    *,
    case_id: str | None = None,
    group: str | None = None,
    prediction: np.ndarray | None = None,
    model_key: str | None = None,
) -> Path:
    """Add one reviewed case to an nnU-Net v2 raw dataset (created if missing).

    Parameters
    ----------
    dataset_dir:
        The dataset folder (e.g. ``.../Dataset501_Corrections``); created on the first
        export, appended to afterwards.
    image:
        The image :class:`Volume` ``(z, y, x)``; written as float32 with its affine.
    labels:
        ``(z, y, x)`` integer labels 0..K, same shape as the image.
    reviewed_slices:
        Slice indices the clinician confirmed; every other slice is written as the
        ignore label ``K + 1``.
    class_names:
        ``{1: "liver", ...}`` foreground classes (from the model spec). Appending
        requires the same classes as the dataset.
    case_id:
        nnU-Net case identifier (letters, digits, ``_``, ``-``); default
        ``img<hash8>_<NNN>`` where ``hash8`` is a hash of the image file name (never
        the name itself) and ``NNN`` the first free counter.
    group:
        The patient the case belongs to (a pseudonym), stored in
        ``dataset.json["groups"]`` so training splits by patient; default
        ``img<hash8>``, i.e. exports of the same image file share a group.
    prediction:
        ``(z, y, x)`` model labels before correction; gives the per-slice
        correction Dice and, on the reviewed slices, the radiotherapy contour metrics
        of the model against the clinician's final labels (``rt_metrics``: surface
        Dice at a stated tolerance, mean surface distance, HD95 and added path length
        per organ and slice; :func:`~napari_gi_seg.evaluation.metrics.rt_contour_metrics`)
        in ``provenance.json``.
    model_key:
        ``"name:version"`` of the model that produced the prediction.

    Returns
    -------
    The dataset folder.

    Raises
    ------
    ValueError
        Nothing reviewed, shape mismatch, label values > K, bad class names, classes
        that differ from an existing dataset's, a ``case_id`` that exists already or
        is malformed, or ``dataset_dir`` is a non-empty folder that is not a dataset.
    OSError
        From the file system; the dataset is then left as it was.
    """
    dataset_dir = Path(dataset_dir)
    labels = np.asarray(labels)
    if labels.shape != image.shape:
        raise ValueError(f"labels shape {labels.shape} differs from the image's {image.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    zs = sorted({int(z) for z in reviewed_slices})
    if not zs:
        raise ValueError("no slice is reviewed: mark the slices you checked as reviewed before exporting")
    bad = [z for z in zs if not 0 <= z < image.shape[0]]
    if bad:
        raise ValueError(f"reviewed slice(s) {bad} out of range 0..{image.shape[0] - 1}")
    label_map = dataset_labels(class_names)
    k = len(label_map) - 2
    ignore = label_map[IGNORE_NAME]
    if labels.size and (labels.min() < 0 or labels.max() > k):
        raise ValueError(f"label values must be 0..{k} for {k} classes, found {int(labels.min())}..{int(labels.max())}")
    if prediction is not None:
        prediction = np.asarray(prediction)
        if prediction.shape != labels.shape:
            raise ValueError(f"prediction shape {prediction.shape} differs from labels {labels.shape}")

    # -- the existing dataset, if any ----------------------------------------------
    appending = (dataset_dir / "dataset.json").is_file()
    if appending:
        meta = _read_json(dataset_dir / "dataset.json")
        old_labels = {str(n): int(v) for n, v in meta.get("labels", {}).items()}
        if old_labels != label_map:
            raise ValueError(f"{dataset_dir}: dataset classes {old_labels} differ from this export's {label_map}")
        if meta.get("file_ending", FILE_ENDING) != FILE_ENDING:
            raise ValueError(f"{dataset_dir}: file_ending {meta.get('file_ending')!r} is not {FILE_ENDING!r}")
        prov_path = dataset_dir / PROVENANCE_FILE
        prov = _read_json(prov_path) if prov_path.exists() else {"format_version": 1, "cases": []}
        existing = {p.name[: -len(FILE_ENDING)] for p in (dataset_dir / NNUNET_LABELS).glob(f"*{FILE_ENDING}")}
    elif dataset_dir.exists() and (not dataset_dir.is_dir() or any(dataset_dir.iterdir())):
        raise ValueError(
            f"{dataset_dir}: exists and is not an nnU-Net dataset (no dataset.json); choose a new or empty folder"
        )
    else:
        meta = {
            "name": dataset_dir.name,
            "description": "Clinician-reviewed corrections exported by napari-gi-seg; unreviewed slices carry the ignore label",
            "channel_names": {"0": str(image.metadata.get("modality") or "MR")},
            "labels": label_map,
            "numTraining": 0,
            "file_ending": FILE_ENDING,
            "groups": {},
        }
        prov = {"format_version": 1, "cases": []}
        existing = set()
    existing |= set(meta.get("groups", {}))

    src_key = _source_key(image)
    if case_id is None:
        n = 0
        while f"{src_key}_{n:03d}" in existing:
            n += 1
        case_id = f"{src_key}_{n:03d}"
    elif not _CASE_RE.match(str(case_id)):
        raise ValueError(f"case_id {case_id!r} must be 1-64 letters, digits, '_' or '-'")
    elif case_id in existing:
        raise ValueError(f"{dataset_dir}: case {case_id!r} exists already; cases are never overwritten")
    group = str(group) if group is not None else src_key

    # -- content --------------------------------------------------------------------
    out_labels = labels.astype(np.uint8, copy=True)
    unreviewed = np.setdiff1d(np.arange(image.shape[0]), zs)
    out_labels[unreviewed] = ignore
    cls = sorted(int(c) for c in class_names)
    dice_z = correction_dice_per_slice(prediction, labels, cls, zs) if prediction is not None else None
    entry = {
        "case_id": case_id,
        "group": group,
        "exported_at": _utc_now(),
        "software": {"name": "napari-gi-seg", "version": __version__},
        "model": _model_info(model_key),
        "shape_zyx": [int(s) for s in image.shape],
        "spacing_mm": [float(s) for s in image.spacing_mm],
        "reviewed_slices": zs,
        "n_ignored_slices": int(unreviewed.size),
        "correction_dice_per_slice": None if dice_z is None else {str(z): round(d, 6) for z, d in dice_z.items()},
        "mean_correction_dice": None if dice_z is None else round(float(np.mean(list(dice_z.values()))), 6),
        "rt_metrics": None
        if prediction is None
        else _finite(rt_contour_metrics(prediction, labels, image.spacing_mm, class_names, zs)),
    }
    meta = dict(meta)
    meta["groups"] = {**meta.get("groups", {}), case_id: group}
    meta["numTraining"] = len(meta["groups"])
    prov = dict(prov)
    prov["cases"] = [*prov.get("cases", []), entry]

    # -- write everything into a temp folder beside the dataset ------------------------
    dataset_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = dataset_dir.parent / f".{dataset_dir.name}.export-{uuid.uuid4().hex[:12]}"
    img_rel = nnunet_image_relpath(case_id, FILE_ENDING)
    lab_rel = nnunet_label_relpath(case_id, FILE_ENDING)
    try:
        (tmp / img_rel.parent).mkdir(parents=True)
        (tmp / lab_rel.parent).mkdir()
        write_nifti(image, tmp / img_rel, data=np.asarray(image.data, dtype=np.float32))
        write_nifti(image, tmp / lab_rel, data=out_labels)
        _write_json(tmp / PROVENANCE_FILE, prov)
        _write_json(tmp / "dataset.json", meta)
        if not appending:
            if dataset_dir.exists():  # an empty folder the user picked
                dataset_dir.rmdir()
            os.rename(tmp, dataset_dir)
        else:
            _merge(tmp, dataset_dir, [img_rel, lab_rel], [PROVENANCE_FILE, "dataset.json"])
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dataset_dir


def _merge(tmp: Path, dst: Path, new_files: Sequence[Path], replace_files: Sequence[str]) -> None:
    """Move ``new_files`` (relative paths) from ``tmp`` into ``dst``, then replace
    ``replace_files`` (``dataset.json`` last: the commit). On failure, undo."""
    moved: list[Path] = []
    backups: dict[str, Path] = {}
    created: list[Path] = []
    try:
        for rel in new_files:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, dst / rel)
            moved.append(dst / rel)
        for name in replace_files:
            if (dst / name).exists():
                backups[name] = tmp / f"{name}.previous"
                shutil.copy2(dst / name, backups[name])
            else:
                created.append(dst / name)
            os.replace(tmp / name, dst / name)
    except BaseException:
        for name, b in backups.items():
            try:
                os.replace(b, dst / name)
            except OSError:
                pass
        for p in moved + created:
            try:
                p.unlink()
            except OSError:
                pass
        raise
