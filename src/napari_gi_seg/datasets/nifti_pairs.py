"""The NIfTI-pairs layout: a folder of ``image_<id>.nii.gz`` / ``label_<id>.nii.gz``
(the CHAOS layout in ``../shared/data``). Class names come from ``classes.json`` in the
folder (``{"1": "liver", ...}`` or a list) or from the caller (``class_names=``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..io.nifti import read_nifti
from .case import Case, CaseRef, DatasetFormatError, SegDataset, _natural_key, _parse_class_names


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
        try:
            class_names = _parse_class_names(json.loads((root / "classes.json").read_text()))
        except (OSError, UnicodeDecodeError, TypeError, ValueError, AttributeError) as e:  # JSONDecodeError too
            raise DatasetFormatError(f"{root / 'classes.json'}: {e}") from e
    if not class_names:
        raise DatasetFormatError(
            f"{root}: class names unknown; pass them (e.g. --classes liver,right_kidney,left_kidney,spleen) "
            'or put a classes.json ({"1": "liver", ...}) in the folder'
        )

    def loader(cid: str) -> Callable[[], Case]:
        def load() -> Case:
            img = read_nifti(imgs[cid], as_labels=False)
            lab = read_nifti(labs[cid], as_labels=True)
            if lab.shape != img.shape:
                raise DatasetFormatError(f"{labs[cid]}: label shape {lab.shape} differs from image {img.shape}")
            if lab.data.max() > len(class_names):
                raise DatasetFormatError(
                    f"{labs[cid]}: label value {int(lab.data.max())} > number of classes {len(class_names)}"
                )
            return Case(cid, cid, img, lab.data.astype(np.uint8))

        return load

    return SegDataset(root, "nifti-pairs", list(class_names), [CaseRef(i, i, loader(i)) for i in ids])
