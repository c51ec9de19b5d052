"""Cases and datasets: the torch-free types every dataset layout returns.

A :class:`SegDataset` lists :class:`CaseRef` (lazily loaded :class:`Case`); each case
carries a ``group`` (the patient) so splits are patient-level, never by slice and
never by day. Layouts live beside this module (:mod:`.nnunet`, :mod:`.nifti_pairs`,
:mod:`.uwmgi`); :func:`napari_gi_seg.datasets.open_dataset` picks one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import GiSegError, InputError
from ..io.volume import Volume

#: Label value of voxels nobody labelled (excluded from losses and metrics).
IGNORE_INDEX = 255


class DatasetFormatError(GiSegError, ValueError):
    """The folder is not a dataset layout we know, or is inconsistent; the message
    names the folder/file and what is wrong."""


@dataclass
class Case:
    """One training case.

    ``image``: the raw image :class:`Volume` ``(z, y, x)``. ``target``: ``(z, y, x)``
    uint8 labels 0..K with :data:`IGNORE_INDEX` for unlabelled voxels (softmax
    datasets), or ``(K, z, y, x)`` uint8 {0, 1, IGNORE_INDEX} masks (multi-label).
    ``annotated``: the class names annotated on this case's labelled voxels (partial
    labels); ``None`` means every class of the dataset. Where a class is not annotated,
    a 0 voxel means "background or that class", never "not that class".
    """

    case_id: str
    group: str
    image: Volume
    target: np.ndarray
    annotated: tuple[str, ...] | None = None


@dataclass
class CaseRef:
    """A lazily loaded case: ``load()`` returns the :class:`Case`. ``annotated`` as
    :attr:`Case.annotated` (known without loading the volumes)."""

    case_id: str
    group: str
    load: Callable[[], Case]
    annotated: tuple[str, ...] | None = None


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
    def partial(self) -> bool:
        """True when some case does not annotate every class (partial labels)."""
        return any(not_annotated(c.annotated, self.class_names) for c in self.cases)

    def annotated_classes(self) -> dict[str, list[str]]:
        """``{case_id: [class names annotated in that case]}`` in the dataset's class order."""
        return {c.case_id: [n for n in self.class_names if c.annotated is None or n in c.annotated] for c in self.cases}

    @property
    def groups(self) -> list[str]:
        """Sorted unique patient ids."""
        return sorted({c.group for c in self.cases})

    def subset(self, groups: Sequence[str]) -> SegDataset:
        """The cases whose ``group`` is in ``groups``."""
        g = set(groups)
        return SegDataset(
            self.root,
            self.layout,
            self.class_names,
            [c for c in self.cases if c.group in g],
            self.multilabel,
            self.extra,
        )


def not_annotated(annotated: Sequence[str] | None, class_names: Sequence[str]) -> list[str]:
    """The names of ``class_names`` that ``annotated`` (``None`` = all) leaves out, in order."""
    if annotated is None:
        return []
    a = set(annotated)
    return [n for n in class_names if n not in a]


def multilabel_target(target: np.ndarray, n_classes: int, not_annotated_channels: Sequence[int] = ()) -> np.ndarray:
    """Single-label targets as multi-label masks (for a sigmoid model).

    Parameters
    ----------
    target
        ``(z, y, x)`` uint8 labels 0..K with :data:`IGNORE_INDEX` for unlabelled voxels
        (e.g. an export of reviewed slices, :mod:`napari_gi_seg.curation.export`).
    n_classes
        K, the number of foreground classes (channel ``k`` is label value ``k + 1``).
    not_annotated_channels
        Channels (0-based) of classes not annotated in this case (partial labels): set
        to :data:`IGNORE_INDEX` everywhere (per-channel ignore: the sigmoid counterpart
        of the marginal loss, :mod:`napari_gi_seg.training.losses`).

    Returns
    -------
    ``(K, z, y, x)`` uint8 in {0, 1, IGNORE_INDEX}: channel ``k`` is 1 where the label
    is ``k + 1``; an ignored voxel is ignored in **every** channel (nobody said which
    organs are there), a labelled voxel is 0 in the channels of the other annotated classes.

    Raises
    ------
    ValueError
        ``target`` is not 3D, or holds values above K other than the ignore label.
    """
    t = np.asarray(target)
    if t.ndim != 3:
        raise InputError(f"single-label target must be (z, y, x), got shape {t.shape}")
    k = int(n_classes)
    bad = np.setdiff1d(np.unique(t), np.r_[np.arange(k + 1), IGNORE_INDEX])
    if bad.size:
        raise InputError(f"target holds label values {bad.tolist()} outside 0..{k} and the ignore label")
    ignore = t == IGNORE_INDEX
    out = np.zeros((k, *t.shape), dtype=np.uint8)
    for c in range(k):
        out[c][t == c + 1] = 1
        out[c][ignore] = IGNORE_INDEX
    for c in not_annotated_channels:
        out[c] = IGNORE_INDEX
    return out


def as_multilabel(ds: SegDataset) -> SegDataset:
    """The same dataset with its single-label targets loaded as multi-label masks
    (:func:`multilabel_target`), so a sigmoid (multi-label) model can be trained or
    fine-tuned on a single-label export. A multi-label dataset is returned as is.
    Classes a case does not annotate are ignored in their channels for that case."""
    if ds.multilabel:
        return ds
    k = len(ds.class_names)

    def converted(ref: CaseRef) -> CaseRef:
        def load() -> Case:
            c = ref.load()
            skip = [ds.class_names.index(n) for n in not_annotated(c.annotated, ds.class_names)]
            return Case(c.case_id, c.group, c.image, multilabel_target(c.target, k, skip), c.annotated)

        return CaseRef(ref.case_id, ref.group, load, ref.annotated)

    return SegDataset(ds.root, ds.layout, list(ds.class_names), [converted(c) for c in ds.cases], True, ds.extra)


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _parse_class_names(obj) -> list[str]:
    if isinstance(obj, list):
        return [str(n) for n in obj]
    if isinstance(obj, dict):
        items = sorted(((int(k), str(v)) for k, v in obj.items() if int(k) != 0))
        return [v for _, v in items]
    raise InputError(f"class names must be a list or an index->name mapping, got {type(obj).__name__}")


def fingerprint(cases: Sequence[Case]) -> str:
    """sha256 hex over each case's id, image shape and label bytes (sorted by id):
    identifies exactly which labelled data a model saw."""
    h = hashlib.sha256()
    for c in sorted(cases, key=lambda c: c.case_id):
        h.update(c.case_id.encode())
        h.update(str(c.image.shape).encode())
        h.update(np.ascontiguousarray(c.target).tobytes())
    return h.hexdigest()


def split_groups(
    groups: Sequence[str], val_fraction: float, fold: int = 0, seed: int = 0
) -> tuple[list[str], list[str]]:
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
        raise InputError(f"need at least 2 patients to hold some out, got {len(groups)}")
    if not 0 <= fold < k:
        raise InputError(f"fold {fold} out of range 0..{k - 1} for val_fraction {val_fraction}")
    rng = np.random.default_rng(seed)
    order = [groups[i] for i in rng.permutation(len(groups))]
    val = order[fold::k]
    train = [g for g in order if g not in set(val)]
    return sorted(train, key=_natural_key), sorted(val, key=_natural_key)
