"""Training/evaluation dataset layouts, auto-detected by :func:`open_dataset`.

Layouts
-------
``nifti-pairs``
    A folder of ``image_<id>.nii.gz`` / ``label_<id>.nii.gz`` pairs (the CHAOS layout
    in ``../shared/data``). Class names come from ``classes.json`` in the folder
    (``{"1": "liver", ...}`` or a list) or from the caller (``class_names=``).
``nnunet``
    nnU-Net v2 raw layout (``dataset.json``, ``imagesTr/<case>_0000.nii.gz``,
    ``labelsTr/<case>.nii.gz``); also what exported corrections use. A label named
    ``"ignore"`` in ``dataset.json`` (nnU-Net's ignore-label convention: it must be
    the highest value) marks voxels nobody reviewed; it is mapped to
    :data:`IGNORE_INDEX` and excluded from the loss.
``uwmgi``
    UW-Madison GI Tract Kaggle layout (``train.csv`` + ``train/caseN/caseN_dayM/scans``),
    multi-label (see :mod:`napari_gi_seg.training.uwmgi_dataset`).

Each case carries a ``group`` (the patient) so splits are patient-level, never by
slice and never by day.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.nifti import read_nifti
from ..io.volume import Volume

IGNORE_INDEX = 255

# nnU-Net v2 raw layout: the one place it is spelled out (the exporter uses it too).
NNUNET_FILE_ENDING = ".nii.gz"
NNUNET_IMAGES, NNUNET_LABELS, NNUNET_JSON = "imagesTr", "labelsTr", "dataset.json"


def nnunet_image_relpath(case_id: str, file_ending: str = NNUNET_FILE_ENDING) -> Path:
    """``imagesTr/<case>_0000<ending>``: the single-channel (channel 0) image of a case."""
    return Path(NNUNET_IMAGES) / f"{case_id}_0000{file_ending}"


def nnunet_label_relpath(case_id: str, file_ending: str = NNUNET_FILE_ENDING) -> Path:
    """``labelsTr/<case><ending>``: the label volume of a case."""
    return Path(NNUNET_LABELS) / f"{case_id}{file_ending}"


class DatasetFormatError(ValueError):
    """The folder is not a dataset layout we know, or is inconsistent; the message
    names the folder/file and what is wrong."""


@dataclass
class Case:
    """One training case.

    ``image``: the raw image :class:`Volume` ``(z, y, x)``. ``target``: ``(z, y, x)``
    uint8 labels 0..K with :data:`IGNORE_INDEX` for unlabelled voxels (softmax
    datasets), or ``(K, z, y, x)`` uint8 {0, 1, IGNORE_INDEX} masks (multi-label).
    """

    case_id: str
    group: str
    image: Volume
    target: np.ndarray


@dataclass
class CaseRef:
    """A lazily loaded case: ``load()`` returns the :class:`Case`."""

    case_id: str
    group: str
    load: Callable[[], Case]


@dataclass
class SegDataset:
    """A dataset: its classes (foreground, index 1..K in order), whether classes may
    overlap (multi-label, sigmoid), and its cases."""

    root: Path
    layout: str
    class_names: list[str]
    cases: list[CaseRef]
    multilabel: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def groups(self) -> list[str]:
        """Sorted unique patient ids."""
        return sorted({c.group for c in self.cases})

    def subset(self, groups: Sequence[str]) -> "SegDataset":
        """The cases whose ``group`` is in ``groups``."""
        g = set(groups)
        return SegDataset(self.root, self.layout, self.class_names, [c for c in self.cases if c.group in g], self.multilabel, self.extra)


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _parse_class_names(obj) -> list[str]:
    if isinstance(obj, list):
        return [str(n) for n in obj]
    if isinstance(obj, dict):
        items = sorted(((int(k), str(v)) for k, v in obj.items() if int(k) != 0))
        return [v for _, v in items]
    raise ValueError(f"class names must be a list or an index->name mapping, got {type(obj).__name__}")


def open_nifti_pairs(root: Path, class_names: Sequence[str] | None = None) -> SegDataset:
    """The ``image_<id>.nii.gz``/``label_<id>.nii.gz`` layout (see module docstring)."""
    root = Path(root)
    imgs = {m.group(1): p for p in root.glob("image_*.nii*") if (m := re.match(r"image_(.+?)\.nii(\.gz)?$", p.name))}
    labs = {m.group(1): p for p in root.glob("label_*.nii*") if (m := re.match(r"label_(.+?)\.nii(\.gz)?$", p.name))}
    ids = sorted(set(imgs) & set(labs), key=_natural_key)
    if not ids:
        raise DatasetFormatError(f"{root}: no image_<id>.nii.gz / label_<id>.nii.gz pairs found")
    missing = sorted(set(imgs) ^ set(labs))
    if missing:
        raise DatasetFormatError(f"{root}: cases without both image and label: {missing[:5]}")
    if class_names is None and (root / "classes.json").exists():
        class_names = _parse_class_names(json.loads((root / "classes.json").read_text()))
    if not class_names:
        raise DatasetFormatError(
            f"{root}: class names unknown; pass them (e.g. --classes liver,right_kidney,left_kidney,spleen) "
            "or put a classes.json ({\"1\": \"liver\", ...}) in the folder"
        )

    def loader(cid: str) -> Callable[[], Case]:
        def load() -> Case:
            img = read_nifti(imgs[cid], as_labels=False)
            lab = read_nifti(labs[cid], as_labels=True)
            if lab.shape != img.shape:
                raise DatasetFormatError(f"{labs[cid]}: label shape {lab.shape} differs from image {img.shape}")
            if lab.data.max() > len(class_names):
                raise DatasetFormatError(f"{labs[cid]}: label value {int(lab.data.max())} > number of classes {len(class_names)}")
            return Case(cid, cid, img, lab.data.astype(np.uint8))

        return load

    return SegDataset(root, "nifti-pairs", list(class_names), [CaseRef(i, i, loader(i)) for i in ids])


def open_nnunet(root: Path, class_names: Sequence[str] | None = None) -> SegDataset:
    """nnU-Net v2 raw layout (see module docstring). Groups: ``dataset.json``'s
    optional ``"groups": {case: patient}`` (written by our exporter), else the case id."""
    root = Path(root)
    try:
        meta = json.loads((root / NNUNET_JSON).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetFormatError(f"{root / 'dataset.json'}: cannot read ({e})") from e
    labels = meta.get("labels")
    if not isinstance(labels, dict) or "background" not in labels:
        raise DatasetFormatError(f"{root / 'dataset.json'}: 'labels' must map names to values and include background")
    by_value = {int(v): k for k, v in labels.items() if not isinstance(v, (list, tuple))}
    ignore_value = labels.get("ignore")
    fg = sorted((v, k) for v, k in by_value.items() if v != 0 and k != "ignore")
    if [v for v, _ in fg] != list(range(1, len(fg) + 1)):
        raise DatasetFormatError(f"{root / 'dataset.json'}: foreground labels must be 1..K, got {[v for v, _ in fg]}")
    if ignore_value is not None and int(ignore_value) != len(fg) + 1:
        raise DatasetFormatError(f"{root / 'dataset.json'}: the ignore label must be the highest value ({len(fg) + 1}), got {ignore_value}")
    names = [k for _, k in fg]
    if class_names is not None and list(class_names) != names:
        raise DatasetFormatError(f"{root}: classes {names} differ from the requested {list(class_names)}")
    suffix = meta.get("file_ending", NNUNET_FILE_ENDING)
    groups = meta.get("groups", {})
    lab_dir = root / NNUNET_LABELS
    ids = sorted((p.name[: -len(suffix)] for p in lab_dir.glob(f"*{suffix}")), key=_natural_key)
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
                raise DatasetFormatError(f"{lab_dir / (cid + suffix)}: label shape {lab.shape} differs from image {img.shape}")
            t = lab.data.astype(np.uint8)
            if ignore_value is not None:
                t[t == int(ignore_value)] = IGNORE_INDEX
            if (t[t != IGNORE_INDEX].max(initial=0)) > len(names):
                raise DatasetFormatError(f"{lab_dir / (cid + suffix)}: label values exceed the {len(names)} classes")
            return Case(cid, str(groups.get(cid, cid)), img, t)

        return load

    return SegDataset(root, "nnunet", names, [CaseRef(i, str(groups.get(i, i)), loader(i)) for i in ids], extra={"dataset_json": meta})


def detect_layout(root: str | Path) -> str:
    """``"nnunet"``, ``"uwmgi"`` or ``"nifti-pairs"``; raises :class:`DatasetFormatError`."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(f"{root}: not a folder")
    if (root / NNUNET_JSON).exists() and (root / NNUNET_LABELS).is_dir():
        return "nnunet"
    if (root / "train.csv").exists():
        return "uwmgi"
    if any(root.glob("image_*.nii*")):
        return "nifti-pairs"
    raise DatasetFormatError(
        f"{root}: unknown dataset layout; expected nnU-Net v2 (dataset.json + imagesTr/labelsTr), "
        "UW-Madison (train.csv + train/caseN/...), or image_<id>.nii.gz/label_<id>.nii.gz pairs"
    )


def open_dataset(root: str | Path, class_names: Sequence[str] | None = None, **kwargs) -> SegDataset:
    """Open a dataset folder of any supported layout (auto-detected).

    ``class_names``: foreground class names in label order, needed for NIfTI pairs
    without ``classes.json``. Extra keyword arguments go to the layout's opener
    (e.g. ``exclude=`` for UW-Madison).

    Raises :class:`DatasetFormatError` naming the folder and the problem.
    """
    layout = detect_layout(root)
    if layout == "nnunet":
        return open_nnunet(Path(root), class_names)
    if layout == "uwmgi":
        from .uwmgi_dataset import open_uwmgi

        return open_uwmgi(Path(root), **kwargs)
    return open_nifti_pairs(Path(root), class_names)


def fingerprint(cases: Sequence[Case]) -> str:
    """sha256 hex over each case's id, image shape and label bytes (sorted by id):
    identifies exactly which labelled data a model saw."""
    h = hashlib.sha256()
    for c in sorted(cases, key=lambda c: c.case_id):
        h.update(c.case_id.encode())
        h.update(str(c.image.shape).encode())
        h.update(np.ascontiguousarray(c.target).tobytes())
    return h.hexdigest()


def split_groups(groups: Sequence[str], val_fraction: float, fold: int = 0, seed: int = 0) -> tuple[list[str], list[str]]:
    """Patient-level split: shuffle the sorted patient ids with ``seed``, cut them into
    ``round(1 / val_fraction)`` folds and return ``(train, val)`` for fold ``fold``.
    ``val_fraction == 0`` -> all patients train, none validate.

    Raises ``ValueError`` for a fold out of range or too few patients.
    """
    groups = sorted(set(groups), key=_natural_key)
    if val_fraction <= 0:
        return groups, []
    k = max(2, int(round(1.0 / val_fraction)))
    if len(groups) < 2:
        raise ValueError(f"need at least 2 patients to hold some out, got {len(groups)}")
    if not 0 <= fold < k:
        raise ValueError(f"fold {fold} out of range 0..{k - 1} for val_fraction {val_fraction}")
    rng = np.random.default_rng(seed)
    order = [groups[i] for i in rng.permutation(len(groups))]
    val = order[fold::k]
    train = [g for g in order if g not in set(val)]
    return sorted(train, key=_natural_key), sorted(val, key=_natural_key)
