"""Dataset layouts (torch-free), auto-detected by :func:`open_dataset`.

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
    multi-label (see :mod:`napari_gi_seg.datasets.uwmgi`).
``chaos``
    The CHAOS MR layout as the organisers ship it (``<patient>/T2SPIR/DICOM_anon`` +
    ``Ground/*.png``, ``<patient>/T1DUAL/...``): each contrast of a patient is a case of
    the patient's group (``sequences=``; see :mod:`napari_gi_seg.datasets.chaos`).

Each case carries a ``group`` (the patient) so splits are patient-level, never by
slice and never by day.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .case import (
    IGNORE_INDEX,
    Case,
    CaseRef,
    DatasetFormatError,
    SegDataset,
    as_multilabel,
    fingerprint,
    multilabel_target,
    split_groups,
)
from .chaos import CHAOS_MR_VALUES, CHAOS_SEQUENCES, chaos_root, open_chaos
from .nifti_pairs import open_nifti_pairs
from .nnunet import (
    NNUNET_FILE_ENDING,
    NNUNET_IMAGES,
    NNUNET_JSON,
    NNUNET_LABELS,
    nnunet_image_relpath,
    nnunet_label_relpath,
    open_nnunet,
)
from .uwmgi import open_uwmgi

#: The one registry of layouts: name -> opener ``(root, class_names=None, **kwargs)``.
LAYOUTS = {
    "nnunet": lambda root, class_names=None, **kw: open_nnunet(root, class_names),
    "uwmgi": lambda root, class_names=None, **kw: open_uwmgi(root, **kw),
    "nifti-pairs": lambda root, class_names=None, **kw: open_nifti_pairs(root, class_names),
    "chaos": lambda root, class_names=None, sequences=None, **kw: open_chaos(root, class_names, sequences),
}
#: Options only some layouts take: option -> the layouts that accept it.
LAYOUT_OPTIONS = {"sequences": ("chaos",), "exclude": ("uwmgi",)}


def detect_layout(root: str | Path) -> str:
    """``"nnunet"``, ``"uwmgi"``, ``"nifti-pairs"`` or ``"chaos"``; raises :class:`DatasetFormatError`."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(f"{root}: not a folder")
    if (root / NNUNET_JSON).exists() and (root / NNUNET_LABELS).is_dir():
        return "nnunet"
    if (root / "train.csv").exists():
        return "uwmgi"
    if any(root.glob("image_*.nii*")):
        return "nifti-pairs"
    if chaos_root(root) is not None:
        return "chaos"
    raise DatasetFormatError(
        f"{root}: unknown dataset layout; expected nnU-Net v2 (dataset.json + imagesTr/labelsTr), "
        "UW-Madison (train.csv + train/caseN/...), image_<id>.nii.gz/label_<id>.nii.gz pairs, "
        "or CHAOS MR (<patient>/T2SPIR/DICOM_anon + Ground)"
    )


def open_dataset(root: str | Path, class_names: Sequence[str] | None = None, **kwargs) -> SegDataset:
    """Open a dataset folder of any supported layout (auto-detected).

    ``class_names``: foreground class names in label order, needed for NIfTI pairs
    without ``classes.json``. Extra keyword arguments go to the layout's opener
    (e.g. ``exclude=`` for UW-Madison).

    ``None`` values are dropped; an option the detected layout does not take
    (:data:`LAYOUT_OPTIONS`, e.g. ``sequences=`` for a NIfTI folder) is an error.

    Raises :class:`DatasetFormatError` naming the folder and the problem.
    """
    layout = detect_layout(root)
    kwargs = {k: v for k, v in kwargs.items() if v is not None and v != []}
    wrong = [k for k in kwargs if k in LAYOUT_OPTIONS and layout not in LAYOUT_OPTIONS[k]]
    if wrong:
        opts = ", ".join(f"{k} (layouts: {', '.join(LAYOUT_OPTIONS[k])})" for k in wrong)
        raise DatasetFormatError(f"{root}: the {layout} layout does not take {opts}")
    return LAYOUTS[layout](Path(root), class_names, **kwargs)


__all__ = [
    "IGNORE_INDEX",
    "Case",
    "CaseRef",
    "DatasetFormatError",
    "SegDataset",
    "as_multilabel",
    "multilabel_target",
    "fingerprint",
    "split_groups",
    "LAYOUTS",
    "detect_layout",
    "open_dataset",
    "open_nnunet",
    "open_nifti_pairs",
    "open_uwmgi",
    "open_chaos",
    "chaos_root",
    "CHAOS_MR_VALUES",
    "CHAOS_SEQUENCES",
    "LAYOUT_OPTIONS",
    "NNUNET_FILE_ENDING",
    "NNUNET_IMAGES",
    "NNUNET_JSON",
    "NNUNET_LABELS",
    "nnunet_image_relpath",
    "nnunet_label_relpath",
]
