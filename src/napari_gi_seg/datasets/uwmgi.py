"""The UW-Madison GI Tract (Kaggle 2022) training layout as a :class:`SegDataset`.

Layout (the competition's download, unpacked)::

    <root>/train.csv                                        id,class,segmentation (RLE)
    <root>/train/case123/case123_day20/scans/slice_0001_266_266_1.50_1.50.png ...

* **Cases** are case-days (one MR series each, ``case_id = "case123_day20"``); the
  **group** is the patient ``"case123"``, so every split (validation, folds,
  fine-tune hold-back) keeps all days of a patient together.
* **Classes** are :data:`napari_gi_seg.io.uwmgi.UWMGI_CLASSES`, the order of the
  Kaggle ``train.csv`` rows (large_bowel, small_bowel, stomach). That one constant
  decides the channel order; a model trained on this layout stores it in its spec.
* **Multi-label** (organs may overlap in the labels): targets are ``(K, z, y, x)``
  uint8 masks in {0, 1}, trained with sigmoid outputs (Dice + BCE). Slices that have
  no row in ``train.csv`` are set to the ignore label (:data:`IGNORE_INDEX`) in every
  channel, i.e. they are not trained on and not scored.
* **Geometry**: in-plane spacing from the PNG file names, slice spacing
  ``slice_spacing_mm`` (3 mm, Lee et al., Data in Brief 2024), via
  :func:`napari_gi_seg.io.uwmgi.read_uwmgi_case_day`; masks are decoded from the RLE
  with :func:`napari_gi_seg.io.rle.rle_decode` (via
  :func:`napari_gi_seg.io.uwmgi.read_uwmgi_multilabel`).
* **Exclusions**: :data:`DEFAULT_EXCLUDE` lists case-days whose labels are known to
  be faulty (community reports during the competition: case7_day0 and case81_day30
  have masks that do not match the scans). Passing ``exclude=`` replaces that list;
  an entry may be a case-day (``"case7_day0"``) or a whole patient (``"case7"``).

One command trains the GI model from the Kaggle download::

    napari-gi-seg train /path/to/uw-madison-gi-tract-image-segmentation \\
        --name gi-tract --size 256 --epochs 60
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ..io.uwmgi import (
    DEFAULT_SLICE_SPACING_MM,
    UWMGI_CLASSES,
    load_train_csv,
    read_uwmgi_case_day,
    read_uwmgi_multilabel,
    scans_folder,
)
from .case import IGNORE_INDEX, Case, CaseRef, DatasetFormatError, SegDataset, _natural_key

#: Case-days left out by default (labels known to be wrong for the scans).
DEFAULT_EXCLUDE: tuple[str, ...] = ("case7_day0", "case81_day30")

_CASE_DAY = re.compile(r"^(case\d+)_day\d+$")


def find_case_days(root: str | Path) -> dict[str, Path]:
    """``{"case123_day20": <folder>}`` for every ``train/caseN/caseN_dayM`` folder with
    scans under ``root`` (natural order)."""
    train = Path(root) / "train"
    out = {}
    if not train.is_dir():
        return out
    for case_dir in train.iterdir():
        if not case_dir.is_dir():
            continue
        for cd in case_dir.iterdir():
            if cd.is_dir() and _CASE_DAY.match(cd.name) and scans_folder(cd) is not None:
                out[cd.name] = cd
    return {k: out[k] for k in sorted(out, key=_natural_key)}


def open_uwmgi(
    root: str | Path,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    slice_spacing_mm: float = DEFAULT_SLICE_SPACING_MM,
    class_names: Sequence[str] | None = None,
) -> SegDataset:
    """Open the Kaggle UW-Madison layout (module docstring) as a multi-label dataset.

    Parameters
    ----------
    root: folder holding ``train.csv`` and ``train/``.
    exclude: case-days (``"case7_day0"``) or patients (``"case7"``) to leave out;
        default :data:`DEFAULT_EXCLUDE`; ``()`` keeps everything.
    slice_spacing_mm: slice spacing in mm (not in the file names).
    class_names: must be ``None`` or equal to :data:`UWMGI_CLASSES` (the layout fixes
        its classes).

    Each case's ``load()`` returns a :class:`Case` with ``image`` ``(z, y, x)``
    (uint16 PNG intensities) and ``target`` ``(3, z, y, x)`` uint8 {0, 1, 255}.

    Raises
    ------
    DatasetFormatError
        No ``train.csv``, no case-day folders with scans, none of them in
        ``train.csv``, or ``class_names`` that differ from the layout's.
    """
    root = Path(root)
    csv_path = root / "train.csv"
    if not csv_path.is_file():
        raise DatasetFormatError(f"{csv_path}: missing; the UW-Madison layout needs train.csv next to train/")
    if class_names is not None and list(class_names) != list(UWMGI_CLASSES):
        raise DatasetFormatError(
            f"{root}: the UW-Madison classes are {list(UWMGI_CLASSES)} (Kaggle order), got {list(class_names)}"
        )
    try:
        table = load_train_csv(csv_path)
    except ValueError as e:  # InvalidInputError names the file
        raise DatasetFormatError(str(e)) from e
    folders = find_case_days(root)
    if not folders:
        raise DatasetFormatError(f"{root / 'train'}: no caseN/caseN_dayM/scans/slice_*.png folders found")
    excl = set(exclude or ())
    keep = {cd: f for cd, f in folders.items() if cd not in excl and _CASE_DAY.match(cd).group(1) not in excl}
    unlabelled = [cd for cd in keep if cd not in table.rles]
    keep = {cd: f for cd, f in keep.items() if cd in table.rles}
    if not keep:
        raise DatasetFormatError(
            f"{root}: none of the case-day folders {list(folders)[:5]} has rows in {csv_path} "
            f"(after excluding {sorted(excl)})"
        )

    def loader(cd: str, folder: Path):
        def load() -> Case:
            img = read_uwmgi_case_day(folder, slice_spacing_mm=slice_spacing_mm)
            numbers = list(img.metadata.get("slice_numbers") or range(1, img.shape[0] + 1))
            try:
                masks = read_uwmgi_multilabel(table, cd, shape=img.shape, slice_numbers=numbers, classes=UWMGI_CLASSES)
            except ValueError as e:
                raise DatasetFormatError(f"{folder}: labels do not fit the scans: {e}") from e
            labelled = set(table.rles[cd])
            missing = [z for z, n in enumerate(numbers) if n not in labelled]
            if missing:
                masks[:, missing] = IGNORE_INDEX
            return Case(cd, _CASE_DAY.match(cd).group(1), img, masks)

        return load

    cases = [CaseRef(cd, _CASE_DAY.match(cd).group(1), loader(cd, f)) for cd, f in keep.items()]
    return SegDataset(
        root,
        "uwmgi",
        list(UWMGI_CLASSES),
        cases,
        multilabel=True,
        extra={
            "excluded": sorted(excl & set(folders)),
            "without_labels": unlabelled,
            "slice_spacing_mm": float(slice_spacing_mm),
        },
    )
