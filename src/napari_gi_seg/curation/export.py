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

Atomicity (:mod:`napari_gi_seg._atomic`): a first export into a new folder is
assembled in a temporary folder beside it and renamed into place. An append (or a
first export into an existing empty folder, e.g. a mount point) stages everything
**inside** the dataset folder, so no rename ever crosses a file system: the image and
label files are written (each temp-then-rename) under names the reader ignores until
``dataset.json`` lists them, then ``provenance.json`` and finally ``dataset.json``
(the commit) are replaced atomically. ``dataset.json``'s ``groups`` is the single list
of cases (:func:`napari_gi_seg.datasets.nnunet.listed_cases`): files of an
interrupted append are never read for training. An exception removes the new case
files; a ``kill -9`` leaves at most unlisted files (ignored, with a warning).

Partial labels (new structures): ``dataset.json``'s ``annotated_classes``
``{case: [names]}`` records which structures were annotated on each case's reviewed
slices (also in the case's provenance entry). An export may **add** structures to an
existing dataset (its classes are the dataset's followed by new ones, so old label
values keep their meaning): the cases exported before then are recorded as not
annotating the new structures, and their label files' old ignore value (now the first
new structure's value) is rewritten to the new ignore value after the commit (until
then the reader treats a class a case does not annotate as the ignore label, so a
crash in between leaves a dataset that reads correctly). An export with fewer classes
than the dataset (a model that lacks the added structures) is written with the
dataset's labels and annotates only its own classes.

Privacy: default case ids and groups are ``img<8 hex>``, an HMAC-SHA256 of the image
file or folder name keyed with a per-installation secret
(:func:`napari_gi_seg.paths.installation_secret`, mode 0600, never exported), so a
short name (a 6-digit MRN) cannot be recovered by hashing every candidate.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .. import __version__
from .._atomic import atomic_dir, is_temp_name, write_bytes, write_json
from ..datasets import NNUNET_FILE_ENDING, NNUNET_LABELS, nnunet_image_relpath, nnunet_label_relpath
from ..datasets.nnunet import NNUNET_IMAGES, read_dataset_json
from ..errors import InputError
from ..evaluation.metrics import rt_contour_metrics
from ..io.fingerprint import image_fingerprint
from ..io.nifti import write_nifti
from ..io.volume import Volume
from ..progress import ProgressCallback, emit
from .review import correction_dice_per_slice

__all__ = ["export_case", "IGNORE_NAME", "FILE_ENDING", "dataset_labels", "BurnedInAnnotationError"]

IGNORE_NAME = "ignore"
FILE_ENDING = NNUNET_FILE_ENDING
PROVENANCE_FILE = "provenance.json"
log = logging.getLogger(__name__)
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
        raise InputError(f"class_names must map label values 1..K to names, got {class_names!r}") from e
    keys = [k for k, _ in items]
    if not keys or keys != list(range(1, len(keys) + 1)):
        raise InputError(f"class_names keys must be 1..K without gaps (background excluded), got {keys}")
    if len(keys) > 254:
        raise InputError(f"at most 254 foreground classes fit uint8 with an ignore label, got {len(keys)}")
    names = [n for _, n in items]
    if len(set(names)) != len(names) or any(not n or n in ("background", IGNORE_NAME) for n in names):
        raise InputError(f"class names must be distinct, non-empty and not 'background'/'ignore': {names}")
    out = {"background": 0}
    out.update({n: k for k, n in items})
    out[IGNORE_NAME] = len(items) + 1
    return out


def _merge_labels(dataset_dir: Path, old: dict[str, int], new: dict[str, int]):
    """The labels of an append: ``(labels, grown_from)``. ``new`` equal to ``old``, or a
    prefix of it (written with the dataset's labels): ``(old, None)``; ``new`` extends
    ``old`` with structures after its classes: ``(new, old)``. Anything else raises
    ``ValueError`` naming both."""
    fg_old = [n for n, _ in sorted(old.items(), key=lambda kv: kv[1]) if n not in ("background", IGNORE_NAME)]
    fg_new = [n for n, _ in sorted(new.items(), key=lambda kv: kv[1]) if n not in ("background", IGNORE_NAME)]
    if fg_new == fg_old and old == new:
        return old, None
    if len(fg_new) < len(fg_old) and fg_old[: len(fg_new)] == fg_new and old.get(IGNORE_NAME) == len(fg_old) + 1:
        return old, None
    if len(fg_new) > len(fg_old) and fg_new[: len(fg_old)] == fg_old and old.get(IGNORE_NAME) == len(fg_old) + 1:
        return new, old
    raise InputError(
        f"{dataset_dir}: dataset classes {old} differ from this export's {new} (new structures can only be "
        "added after the dataset's classes, with the same names and values for the others)"
    )


def _rewrite_ignore(dataset_dir: Path, case_ids: Sequence[str], old_ignore: int, new_ignore: int) -> None:
    """After a commit that added structures: the label files of ``case_ids`` get
    ``new_ignore`` where they held ``old_ignore`` (each file temp-then-rename), so that
    nnU-Net itself reads their unreviewed slices as ignored. A crash part-way is
    harmless for our reader (see the module docstring)."""
    from ..io.nifti import read_nifti

    for cid in case_ids:
        path = dataset_dir / nnunet_label_relpath(cid, FILE_ENDING)
        try:
            lab = read_nifti(path, as_labels=True)
            data = np.asarray(lab.data).astype(np.uint8)
            if (data == old_ignore).any():
                data[data == old_ignore] = new_ignore
                write_nifti(lab, path, data=data)
        except (OSError, ValueError) as e:  # the dataset is committed and reads correctly; warn only
            log.warning("%s: could not rewrite the ignore value %d -> %d (%s)", path, old_ignore, new_ignore, e)


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def pseudonym(text: str, n_hex: int = 8) -> str:
    """HMAC-SHA256 of ``text`` keyed with the per-installation secret
    (:func:`napari_gi_seg.paths.installation_secret`), first ``n_hex`` hex digits.

    Unlike a plain hash it cannot be reversed by hashing candidate names (all
    6-digit MRNs take well under a second to hash) without the key, which never
    leaves this computer. The same name gives the same pseudonym on this
    installation, so exports of one scan share a group.

    Raises ``OSError`` when the user folder holding the key is not writable.
    """
    from ..paths import installation_secret

    return hmac.new(installation_secret(), text.encode("utf-8"), hashlib.sha256).hexdigest()[:n_hex]


def _source_key(image: Volume) -> str:
    """A pseudonymous id of the image's source: :func:`pseudonym` of the file or
    folder name (names may contain patient names or MRNs, so they are never written
    out), or of the image data's fingerprint when there is no file."""
    basis = image.name if image.metadata.get("source_path") else image_fingerprint(image.data)
    return "img" + pseudonym(basis)


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
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e})") from e
    if not isinstance(obj, dict):
        raise InputError(f"{path}: must be a JSON object, got a {type(obj).__name__}")
    return obj


def _only_staging(folder: Path) -> bool:
    """True for an empty folder, or one holding only what an interrupted first export
    leaves (empty-ish ``imagesTr``/``labelsTr`` and temporaries): safe to export into."""
    for p in folder.iterdir():
        if is_temp_name(p.name):
            continue
        if p.name in (NNUNET_IMAGES, NNUNET_LABELS) and p.is_dir():
            continue
        return False
    return True


class BurnedInAnnotationError(InputError):
    """An export refused because the image's DICOM series declares burned-in
    annotation (identifiers possibly drawn into the pixels)."""


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
    annotated: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
    allow_burned_in: bool = False,
) -> Path:
    """Add one reviewed case to an nnU-Net v2 raw dataset (created if missing).

    Parameters
    ----------
    dataset_dir
        The dataset folder (e.g. ``.../Dataset501_Corrections``); created on the first
        export, appended to afterwards.
    image
        The image :class:`Volume` ``(z, y, x)``; written as float32 with its affine.
    labels
        ``(z, y, x)`` integer labels 0..K, same shape as the image.
    reviewed_slices
        Slice indices the clinician confirmed; every other slice is written as the
        ignore label ``K + 1``.
    class_names
        ``{1: "liver", ...}`` foreground classes (from the model spec). Appending
        requires the same classes as the dataset.
    case_id
        nnU-Net case identifier (letters, digits, ``_``, ``-``); default
        ``img<hash8>_<NNN>`` where ``hash8`` is a hash of the image file name (never
        the name itself) and ``NNN`` the first free counter.
    group
        The patient the case belongs to (a pseudonym), stored in
        ``dataset.json["groups"]`` so training splits by patient; default
        ``img<hash8>``, i.e. exports of the same image file share a group.
    prediction
        ``(z, y, x)`` model labels before correction; gives the per-slice
        correction Dice and, on the reviewed slices, the radiotherapy contour metrics
        of the model against the clinician's final labels (``rt_metrics``: surface
        Dice at a stated tolerance, mean surface distance, HD95 and added path length
        per organ and slice; :func:`~napari_gi_seg.evaluation.metrics.rt_contour_metrics`)
        in ``provenance.json``.
    model_key
        ``"name:version"`` of the model that produced the prediction.
    annotated
        Names of the structures annotated on the reviewed slices (partial labels);
        default: every class in ``class_names``. The others are recorded as not
        annotated, so training does not read their absence as background
        (:mod:`napari_gi_seg.training.losses`).
    progress
        Gets ``"export"`` :class:`~napari_gi_seg.progress.ProgressEvent` s (3 steps:
        image written, labels written, dataset committed); see :mod:`napari_gi_seg.progress`.
    allow_burned_in
        Export an image whose DICOM series says ``BurnedInAnnotation`` YES (0028,0301)
        anyway: an explicit choice after checking that its pixels show no identifier.

    Returns
    -------
    The dataset folder.

    Raises
    ------
    ValueError
        Nothing reviewed, shape mismatch, label values > K, bad class names, classes
        that neither extend nor are a prefix of an existing dataset's, ``annotated``
        naming unknown classes, a ``case_id`` that exists already or
        is malformed, or ``dataset_dir`` is a non-empty folder that is not a dataset.
    BurnedInAnnotationError
        The image's series says ``BurnedInAnnotation`` YES and ``allow_burned_in`` is
        false (nothing is written): the training data would carry identifiers in pixels.
    OSError
        From the file system; the dataset is then left as it was.
    """
    dataset_dir = Path(dataset_dir)
    if image.metadata.get("burned_in_annotation") and not allow_burned_in:
        raise BurnedInAnnotationError(
            f"{image.name}: the DICOM series says BurnedInAnnotation=YES (0028,0301): its pixels may show the "
            "patient's name or other identifiers; not exported. Check the image and export with "
            "allow_burned_in=True only if it shows none"
        )
    labels = np.asarray(labels)
    if labels.shape != image.shape:
        raise InputError(f"labels shape {labels.shape} differs from the image's {image.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise InputError(f"labels must be integers, got dtype {labels.dtype}")
    zs = sorted({int(z) for z in reviewed_slices})
    if not zs:
        raise InputError("no slice is reviewed: mark the slices you checked as reviewed before exporting")
    bad = [z for z in zs if not 0 <= z < image.shape[0]]
    if bad:
        raise InputError(f"reviewed slice(s) {bad} out of range 0..{image.shape[0] - 1}")
    label_map = dataset_labels(class_names)
    k = len(label_map) - 2
    if labels.size and (labels.min() < 0 or labels.max() > k):
        raise InputError(f"label values must be 0..{k} for {k} classes, found {int(labels.min())}..{int(labels.max())}")
    own_names = [n for n in label_map if n not in ("background", IGNORE_NAME)]
    annotated = own_names if annotated is None else [str(n) for n in annotated]
    if not set(annotated) <= set(own_names) or not annotated:
        raise InputError(f"annotated structures {annotated} must be a non-empty subset of the classes {own_names}")
    if prediction is not None:
        prediction = np.asarray(prediction)
        if prediction.shape != labels.shape:
            raise InputError(f"prediction shape {prediction.shape} differs from labels {labels.shape}")

    # -- the existing dataset, if any ----------------------------------------------
    appending = (dataset_dir / "dataset.json").is_file()
    if appending:
        meta = read_dataset_json(dataset_dir)  # type-checked; DatasetFormatError names file and key
        old_labels = {str(n): int(v) for n, v in meta.get("labels", {}).items()}
        label_map, grown_from = _merge_labels(dataset_dir, old_labels, label_map)
        if meta.get("file_ending", FILE_ENDING) != FILE_ENDING:
            raise InputError(f"{dataset_dir}: file_ending {meta.get('file_ending')!r} is not {FILE_ENDING!r}")
        prov_path = dataset_dir / PROVENANCE_FILE
        prov = _read_json(prov_path) if prov_path.exists() else {"format_version": 1, "cases": []}
        if not isinstance(prov.get("cases", []), list):
            raise InputError(f"{prov_path}: key 'cases' must be a list")
        listed = set(meta.get("groups", {}))
        if listed:  # drop entries of an interrupted append (dataset.json is the list of cases)
            prov["cases"] = [c for c in prov.get("cases", []) if isinstance(c, dict) and c.get("case_id") in listed]
        existing = {p.name[: -len(FILE_ENDING)] for p in (dataset_dir / NNUNET_LABELS).glob(f"*{FILE_ENDING}")}
    elif dataset_dir.exists() and (not dataset_dir.is_dir() or not _only_staging(dataset_dir)):
        raise InputError(
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
        grown_from = None
    existing |= set(meta.get("groups", {}))
    ignore = label_map[IGNORE_NAME]
    all_names = [n for n in label_map if n not in ("background", IGNORE_NAME)]
    old_names = [n for n in (grown_from or label_map) if n not in ("background", IGNORE_NAME)]
    before = {c: list(meta.get("annotated_classes", {}).get(c, old_names)) for c in meta.get("groups", {})}

    src_key = _source_key(image)
    if case_id is None:
        n = 0
        while f"{src_key}_{n:03d}" in existing:
            n += 1
        case_id = f"{src_key}_{n:03d}"
    elif not _CASE_RE.match(str(case_id)):
        raise InputError(f"case_id {case_id!r} must be 1-64 letters, digits, '_' or '-'")
    elif case_id in existing:
        raise InputError(f"{dataset_dir}: case {case_id!r} exists already; cases are never overwritten")
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
        "annotated_classes": [n for n in all_names if n in annotated],
        "not_annotated_classes": [n for n in all_names if n not in annotated],
        "n_ignored_slices": int(unreviewed.size),
        "correction_dice_per_slice": None if dice_z is None else {str(z): round(d, 6) for z, d in dice_z.items()},
        "mean_correction_dice": None if dice_z is None else round(float(np.mean(list(dice_z.values()))), 6),
        "rt_metrics": None
        if prediction is None
        else _finite(rt_contour_metrics(prediction, labels, image.spacing_mm, class_names, zs)),
    }
    meta = dict(meta)
    meta["labels"] = label_map
    meta["annotated_classes"] = {**before, case_id: entry["annotated_classes"]}
    meta["groups"] = {**meta.get("groups", {}), case_id: group}
    meta["numTraining"] = len(meta["groups"])
    prov = dict(prov)
    prov["cases"] = [*prov.get("cases", []), entry]

    # -- write --------------------------------------------------------------------------
    img_rel = nnunet_image_relpath(case_id, FILE_ENDING)
    lab_rel = nnunet_label_relpath(case_id, FILE_ENDING)
    img_data = np.asarray(image.data, dtype=np.float32)
    if not dataset_dir.exists():
        # a new dataset: assembled in a temporary folder beside it, renamed into place
        with atomic_dir(dataset_dir) as tmp:
            (tmp / img_rel.parent).mkdir()
            (tmp / lab_rel.parent).mkdir()
            write_nifti(image, tmp / img_rel, data=img_data)
            emit(progress, "export", 1, 3, f"{case_id}: image written")
            write_nifti(image, tmp / lab_rel, data=out_labels)
            emit(progress, "export", 2, 3, f"{case_id}: labels written")
            write_json(tmp / PROVENANCE_FILE, prov)
            write_json(tmp / "dataset.json", meta)
        emit(progress, "export", 3, 3, f"{case_id}: added to {dataset_dir.name}")
        return dataset_dir
    # append, or a first export into an existing (empty) folder: staged inside it
    prov_path = dataset_dir / PROVENANCE_FILE
    old_prov = prov_path.read_bytes() if prov_path.is_file() else None
    written: list[Path] = []
    try:
        for i, (rel, data) in enumerate(((img_rel, img_data), (lab_rel, out_labels)), start=1):
            if (dataset_dir / rel).exists():  # an unlisted file of an interrupted export with this id
                (dataset_dir / rel).unlink()
            written.append(dataset_dir / rel)
            write_nifti(image, dataset_dir / rel, data=data)  # temp-then-rename; unlisted until the commit
            emit(progress, "export", i, 3, f"{case_id}: {'image' if i == 1 else 'labels'} written")
        written.append(prov_path)
        write_json(prov_path, prov)
        write_json(dataset_dir / "dataset.json", meta)  # the commit
        written = []
        if grown_from is not None:
            _rewrite_ignore(dataset_dir, sorted(before), grown_from[IGNORE_NAME], ignore)
    except BaseException:
        for f in written:
            try:
                if f == prov_path and old_prov is not None:
                    write_bytes(prov_path, old_prov)
                else:
                    f.unlink()
            except OSError:
                pass
        raise
    emit(progress, "export", 3, 3, f"{case_id}: added to {dataset_dir.name}")
    return dataset_dir
