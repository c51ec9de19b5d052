"""Held-back data for fine-tuning: a patient-level split when the dataset has two or
more patients, else a slice-level one inside each case (see
:mod:`napari_gi_seg.training.finetune`); classes re-ordered to the base model's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..datasets import IGNORE_INDEX, Case, CaseRef, SegDataset, detect_layout, open_dataset, split_groups
from ..errors import InputError

__all__ = ["slice_split", "split_for_finetune", "open_for_base", "widen_dataset"]


def _remap(target: np.ndarray, order: list[int]) -> np.ndarray:
    """Re-order classes: ``order[k]`` = dataset label value (or channel + 1) of the base's
    class ``k + 1``."""
    if order == list(range(1, len(order) + 1)):
        return target
    if target.ndim == 4:
        return np.ascontiguousarray(target[[v - 1 for v in order]])
    out = np.zeros_like(target)
    for k, v in enumerate(order):
        out[target == v] = k + 1
    out[target == IGNORE_INDEX] = IGNORE_INDEX
    return out


def _labelled_slices(target: np.ndarray) -> list[int]:
    valid = np.asarray(target) != IGNORE_INDEX
    if valid.ndim == 4:  # (K, z, y, x): a slice is labelled when any channel is
        valid = valid.any(0)
    reviewed = valid.reshape(valid.shape[0], -1).any(1)
    return [int(z) for z in np.nonzero(reviewed)[0]]


def slice_split(case: Case, val_fraction: float) -> tuple[Case, Case, list[int]]:
    """Slice-level hold-back within one case (see the module docstring).

    Parameters
    ----------
    case : Case
        A loaded case; ``target`` ``(z, y, x)`` or ``(K, z, y, x)`` with :data:`IGNORE_INDEX`
        on unreviewed slices (never held back).
    val_fraction : float
        Share of the labelled slices to hold back (every ``round(1 / val_fraction)``-th).

    Returns
    -------
    (Case, Case, list of int)
        ``(train_case, held_back_case, held_back_slices)``; both cases share the image,
        their targets have the other part set to :data:`IGNORE_INDEX`.

    Raises
    ------
    ValueError
        The case has fewer than 2 labelled slices.
    """
    lab = _labelled_slices(case.target)
    if len(lab) < 2:
        raise InputError(f"case {case.case_id}: need at least 2 labelled slices to hold some back, found {len(lab)}")
    k = max(2, int(round(1.0 / max(val_fraction, 1e-6))))
    held = lab[k // 2 :: k] or [lab[len(lab) // 2]]
    t_train, t_val = case.target.copy(), np.full_like(case.target, IGNORE_INDEX)
    if case.target.ndim == 3:
        t_train[held] = IGNORE_INDEX
        t_val[held] = case.target[held]
    else:
        t_train[:, held] = IGNORE_INDEX
        t_val[:, held] = case.target[:, held]
    return (
        Case(case.case_id, case.group, case.image, t_train, case.annotated),
        Case(case.case_id, case.group, case.image, t_val, case.annotated),
        held,
    )


def open_for_base(dataset, class_names, base_names, sequences=None) -> SegDataset:
    """Open ``dataset``; NIfTI pairs without ``classes.json`` and without
    ``class_names`` are assumed to follow the base model's class order ``base_names``.
    ``sequences``: the CHAOS layout's contrasts (default all)."""
    root = Path(dataset)
    if class_names is None and detect_layout(root) == "nifti-pairs" and not (root / "classes.json").exists():
        class_names = base_names  # unnamed label values: assume the base's order
    return open_dataset(root, class_names, sequences=sequences)


def split_for_finetune(ds: SegDataset, base_names: list[str], val_fraction: float, seed: int):
    """Split ``ds`` into training data and held-back cases, classes in the base's order.

    Parameters
    ----------
    ds : SegDataset
        The opened dataset (the model's class names, any order; see :func:`widen_dataset`).
    base_names : list of str
        The (grown) model's class names in its index order; each case's
        ``annotated`` classes are kept.
    val_fraction : float
        Share of patients (>= 2 patients) or of labelled slices (one patient) held back.
    seed : int
        Seed of the patient split.

    Returns
    -------
    (SegDataset, list of Case, list or dict, str)
        ``(train_ds, held_cases, held_back, split)``: ``held_back`` is the list of
        held-back patients (``split == "patient"``) or ``{case_id: [z, ...]}``
        (``split == "slice"``).
    """
    order = [ds.class_names.index(n) + 1 for n in base_names]

    def remapped(ref: CaseRef) -> CaseRef:
        def load() -> Case:
            c = ref.load()
            return Case(c.case_id, c.group, c.image, _remap(c.target, order), c.annotated)

        return CaseRef(ref.case_id, ref.group, load, ref.annotated)

    if len(ds.groups) >= 2:
        split = "patient"
        train_groups, held_groups = split_groups(ds.groups, val_fraction, 0, seed)
        train_refs = [remapped(c) for c in ds.subset(train_groups).cases]
        held_cases = [remapped(c).load() for c in ds.subset(held_groups).cases]
        held_back: object = held_groups
    else:
        split = "slice"
        train_refs, held_cases, held_back = [], [], {}
        for ref in ds.cases:
            c = remapped(ref).load()
            tr, va, held = slice_split(c, val_fraction)
            train_refs.append(CaseRef(tr.case_id, tr.group, (lambda tr=tr: tr), tr.annotated))
            held_cases.append(va)
            held_back[c.case_id] = held
    train_ds = SegDataset(ds.root, ds.layout, list(base_names), train_refs, ds.multilabel, ds.extra)
    return train_ds, held_cases, held_back, split


def widen_dataset(ds: SegDataset, names: list[str]) -> SegDataset:
    """``ds`` with the classes ``names`` (a model's, e.g. grown by new structures), in
    that order: label values re-mapped (a dataset class not in ``names`` becomes the
    ignore label), and each case annotating only the classes it annotated that are in
    ``names`` (so the model's classes the dataset lacks are partial labels, never
    background; :mod:`napari_gi_seg.training.losses`).

    Parameters
    ----------
    ds : SegDataset
        A single-label dataset (multi-label: channels re-ordered, absent ones ignored).
    names : list of str
        The model's class names in index order.

    Returns
    -------
    SegDataset
    """
    src = {n: i + 1 for i, n in enumerate(ds.class_names)}

    def annotated(a):
        have = set(ds.class_names if a is None else a)
        out = tuple(n for n in names if n in have)
        return None if len(out) == len(names) else out

    def remap(t: np.ndarray) -> np.ndarray:
        if t.ndim == 4:
            out = np.full((len(names), *t.shape[1:]), IGNORE_INDEX, dtype=t.dtype)
            for k, n in enumerate(names):
                if n in src:
                    out[k] = t[src[n] - 1]
            return out
        out = np.zeros_like(t)
        for k, n in enumerate(names):
            if n in src:
                out[t == src[n]] = k + 1
        for n, v in src.items():
            if n not in names:
                out[t == v] = IGNORE_INDEX
        out[t == IGNORE_INDEX] = IGNORE_INDEX
        return out

    def widened(ref: CaseRef) -> CaseRef:
        def load() -> Case:
            c = ref.load()
            return Case(c.case_id, c.group, c.image, remap(c.target), annotated(c.annotated))

        return CaseRef(ref.case_id, ref.group, load, annotated(ref.annotated))

    return SegDataset(ds.root, ds.layout, list(names), [widened(c) for c in ds.cases], ds.multilabel, ds.extra)
