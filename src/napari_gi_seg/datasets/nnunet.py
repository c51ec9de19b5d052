"""The nnU-Net v2 raw layout (``dataset.json``, ``imagesTr``, ``labelsTr``): what
exported corrections use and what nnU-Net itself reads.

A label named ``"ignore"`` in ``dataset.json`` (nnU-Net's ignore-label convention: it
must be the highest value) marks voxels nobody reviewed; it is mapped to
:data:`~.case.IGNORE_INDEX` and excluded from the loss.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..io.nifti import read_nifti
from .case import IGNORE_INDEX, Case, CaseRef, DatasetFormatError, SegDataset, _natural_key

# nnU-Net v2 raw layout: the one place it is spelled out (the exporter uses it too).
NNUNET_FILE_ENDING = ".nii.gz"
NNUNET_IMAGES, NNUNET_LABELS, NNUNET_JSON = "imagesTr", "labelsTr", "dataset.json"


def nnunet_image_relpath(case_id: str, file_ending: str = NNUNET_FILE_ENDING) -> Path:
    """``imagesTr/<case>_0000<ending>``: the single-channel (channel 0) image of a case."""
    return Path(NNUNET_IMAGES) / f"{case_id}_0000{file_ending}"


def nnunet_label_relpath(case_id: str, file_ending: str = NNUNET_FILE_ENDING) -> Path:
    """``labelsTr/<case><ending>``: the label volume of a case."""
    return Path(NNUNET_LABELS) / f"{case_id}{file_ending}"


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
        raise DatasetFormatError(
            f"{root / 'dataset.json'}: the ignore label must be the highest value ({len(fg) + 1}), got {ignore_value}"
        )
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
                raise DatasetFormatError(
                    f"{lab_dir / (cid + suffix)}: label shape {lab.shape} differs from image {img.shape}"
                )
            t = lab.data.astype(np.uint8)
            if ignore_value is not None:
                t[t == int(ignore_value)] = IGNORE_INDEX
            if (t[t != IGNORE_INDEX].max(initial=0)) > len(names):
                raise DatasetFormatError(f"{lab_dir / (cid + suffix)}: label values exceed the {len(names)} classes")
            return Case(cid, str(groups.get(cid, cid)), img, t)

        return load

    return SegDataset(
        root, "nnunet", names, [CaseRef(i, str(groups.get(i, i)), loader(i)) for i in ids], extra={"dataset_json": meta}
    )
