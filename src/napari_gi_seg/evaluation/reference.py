"""Score a prediction against a reference, both given as files (no model, no dataset).

``napari-gi-seg evaluate --reference REF --prediction PRED [--image DICOM_DIR]`` calls
:func:`evaluate_reference`. REF and PRED are each

* a **label file** the package reads (:func:`napari_gi_seg.io.read_labels`: NIfTI, TIFF,
  DICOM-SEG, RTSTRUCT with ``--image``), on the image's grid; or
* a **folder of per-slice PNGs** (the CHAOS kit's format, e.g. ``T2SPIR/Ground``),
  stacked in natural sort order of the file names. With ``--image`` (a DICOM series
  folder) the ``i``-th PNG is the ``i``-th DICOM file in natural name order (the CHAOS
  convention: "the orientation of the slices is determined by the order of image
  names", organisers' evaluation code) and the stack is put into the series' slice
  order; the geometry (spacing) is the series'. Without ``--image`` the spacing is
  unknown and distances are in voxels (``spacing_source: "none"``).

Values are read by name:

* CHAOS MR values (0, 63 liver, 126 right kidney, 189 left kidney, 252 spleen, each
  within the kit's band, :data:`napari_gi_seg.datasets.chaos.CHAOS_MR_BANDS`) -> the
  four organs;
* binary masks (values {0, 1} or {0, 255}) -> one class ``foreground`` (``--classes
  liver`` names it, and pairs it with that organ of a CHAOS-valued counterpart);
* other integer labels 1..K -> the file's class names (``metadata["class_names"]``),
  else ``--classes`` in label order, else ``label_<k>``.

The metrics are :func:`napari_gi_seg.evaluation.metrics.evaluate_case`'s, CHAOS's
RAVD/ASSD/MSSD included (:mod:`napari_gi_seg.evaluation.chaos_metrics`).
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..datasets.case import _natural_key
from ..datasets.chaos import CHAOS_MR_BANDS, chaos_png_to_labels, dicom_slice_files, read_png_stack
from ..errors import InputError
from ..paths import public_path
from .metrics import SURFACE_DICE_TOLERANCE_MM, aggregate, evaluate_case

__all__ = ["read_label_source", "evaluate_reference"]

FOREGROUND = "foreground"


def _png_files(folder: Path) -> list[Path]:
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".png"), key=lambda p: _natural_key(p.name))
    if not files:
        raise InputError(f"{folder}: no .png files (expected one label PNG per slice)")
    return files


def _decode(values: np.ndarray, source: Path, class_names: Sequence[str] | None, file_names: dict | None):
    """``{name: bool mask}`` from a label array (module docstring: values by name)."""
    u = np.unique(values)
    if not file_names and (set(u.tolist()) <= {0, 1} or set(u.tolist()) <= {0, 255}):
        name = class_names[0] if class_names and len(class_names) == 1 else FOREGROUND
        return {name: values != 0}, "binary"
    in_band = np.zeros(u.shape, bool) | (u == 0)
    for lo, hi in CHAOS_MR_BANDS.values():
        in_band |= (u >= lo) & (u <= hi)
    if in_band.all() and u.max() > 50:
        names = list(CHAOS_MR_BANDS)
        lab = chaos_png_to_labels(values, names, source)
        return {n: lab == i + 1 for i, n in enumerate(names)}, "chaos"
    out = {}
    for v in (int(x) for x in u if x != 0):
        if file_names and (v in file_names or str(v) in file_names):
            name = str(file_names.get(v, file_names.get(str(v))))
        elif class_names and v <= len(class_names):
            name = class_names[v - 1]
        else:
            name = f"label_{v}"
        out[name] = values == v
    return out, "labels"


def read_label_source(path: str | Path, image=None, class_names: Sequence[str] | None = None):
    """Read REF or PRED (module docstring).

    Parameters
    ----------
    path
        A label file or a folder of per-slice PNGs.
    image
        The DICOM series folder (``str``/``Path``) the labels belong to, or ``(folder,
        Volume)`` when already read, or ``None``.
    class_names
        ``--classes``: names of integer labels 1..K, or the one name of a binary mask.

    Returns
    -------
    (masks, kind, spacing_mm, shape)
        ``masks``: ``{class name: (z, y, x) bool}``; ``kind``: ``"chaos"``, ``"binary"``
        or ``"labels"``; ``spacing_mm``: ``(z, y, x)`` or ``None`` (unknown); ``shape``.

    Raises
    ------
    InputError
        A missing path, a PNG count that differs from the series' images, a size that
        differs from the images', unreadable files (each error names the file).
    """
    from ..datasets.case import DatasetFormatError
    from ..io import read_image, read_labels

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    vol = None
    if isinstance(image, tuple):  # already read: (folder, Volume)
        image, vol = image
    elif image is not None:
        vols = read_image(image)
        if len(vols) != 1:
            raise InputError(f"{image}: {len(vols)} image series; give the folder of the one series the labels are for")
        vol = vols[0]
    try:
        if path.is_dir():
            files = _png_files(path)
            raw = read_png_stack(files)
            spacing = None
            if vol is not None:
                dcm = sorted(
                    (p for p in Path(image).iterdir() if p.suffix.lower() == ".dcm"), key=lambda p: _natural_key(p.name)
                )
                if len(dcm) != len(files):
                    raise InputError(f"{path}: {len(files)} PNGs but {len(dcm)} DICOM images in {image}")
                if raw.shape != vol.shape:
                    raise InputError(f"{path}: PNG stack {raw.shape} (z, y, x) differs from the series {vol.shape}")
                rank = {p.name: i for i, p in enumerate(dcm)}
                raw = raw[[rank[p.name] for p in dicom_slice_files(Path(image))]]
                spacing = tuple(float(s) for s in vol.spacing_mm)
            masks, kind = _decode(raw, path, class_names, None)
            return masks, kind, spacing, raw.shape
        lab = read_labels(path, like=vol)
    except DatasetFormatError as e:
        raise InputError(str(e)) from e
    data = np.asarray(lab.data)
    masks, kind = _decode(data, path, class_names, lab.metadata.get("class_names"))
    return masks, kind, tuple(float(s) for s in lab.spacing_mm), data.shape


def _pair(ref: dict, pred: dict, classes: Sequence[str] | None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, ref mask, pred mask)`` per scored class, matched by name."""
    if FOREGROUND in pred and len(pred) == 1 and FOREGROUND not in ref:
        if not classes or len(classes) != 1:
            raise InputError(
                f"the prediction is one binary mask; name the reference class it is (--classes one of {sorted(ref)})"
            )
        pred = {classes[0]: pred[FOREGROUND]}
    if FOREGROUND in ref and len(ref) == 1 and FOREGROUND not in pred:
        if not classes or len(classes) != 1:
            raise InputError(
                f"the reference is one binary mask; name the predicted class it is (--classes one of {sorted(pred)})"
            )
        ref = {classes[0]: ref[FOREGROUND]}
    names = [n for n in ref if n in pred]
    if classes:
        missing = [c for c in classes if c not in names]
        if missing:
            raise InputError(f"--classes {missing}: not in both reference {sorted(ref)} and prediction {sorted(pred)}")
        names = [n for n in names if n in classes]
    if not names:
        raise InputError(f"no class in both the reference {sorted(ref)} and the prediction {sorted(pred)}")
    return [(n, ref[n], pred[n]) for n in names]


def evaluate_reference(
    reference: str | Path,
    prediction: str | Path,
    image: str | Path | None = None,
    classes: Sequence[str] | None = None,
) -> dict:
    """Score PRED against REF (module docstring) and return the summary.

    Returns
    -------
    dict
        ``reference``, ``prediction``, ``image`` (folder names only), ``classes``,
        ``spacing_mm``, ``spacing_source``, ``mean_dice`` (and ``mean_<metric>``),
        ``per_class.<name>.{dice, iou, precision, recall, hd95_mm, surface_dice, msd_mm,
        apl_mm, ravd, assd_mm, mssd_mm, ref_voxels, pred_voxels}``, ``per_case``
        (the one case), ``n_cases`` (1), ``model`` (``None``), ``seconds``; the shape
        :func:`napari_gi_seg.evaluation.evaluate.write_json` and ``format_table`` take.

    Raises
    ------
    InputError
        Unreadable inputs, different shapes, no common class.
    """
    from ..io import read_image

    t0 = time.time()
    img = None
    if image is not None:
        if not Path(image).exists():
            raise InputError(f"{image}: no such file or folder")
        vols = read_image(image)
        if len(vols) != 1:
            raise InputError(f"{image}: {len(vols)} image series; give the folder of the one series the labels are for")
        img = (image, vols[0])
    ref, rkind, rsp, rshape = read_label_source(reference, img, classes)
    pred, pkind, psp, pshape = read_label_source(prediction, img, classes)
    if rshape != pshape:
        raise InputError(f"{prediction}: shape (z, y, x) {pshape} differs from the reference's {rshape}")
    spacing = rsp or psp
    if rsp and psp and not np.allclose(rsp, psp, rtol=1e-3, atol=1e-3):
        raise InputError(f"{prediction}: spacing {psp} mm differs from the reference's {rsp} mm")
    pairs = _pair(ref, pred, classes)
    names = [n for n, _, _ in pairs]
    r = np.stack([rm for _, rm, _ in pairs]).astype(np.uint8)
    p = np.stack([pm for _, _, pm in pairs]).astype(np.uint8)
    res = evaluate_case(p, r, spacing or (1.0, 1.0, 1.0), names, ignore_index=None, kaggle=False)
    case = Path(reference).name or "reference"
    agg = aggregate({case: res})
    return {
        "model": None,
        "reference": public_path(reference),
        "prediction": public_path(prediction),
        "image": public_path(image) if image else None,
        "reference_values": rkind,
        "prediction_values": pkind,
        "classes": names,
        "spacing_mm": list(spacing) if spacing else None,
        "spacing_source": ("DICOM series" if image else "label file") if spacing else "none (distances in voxels)",
        "surface_dice_tolerance_mm": SURFACE_DICE_TOLERANCE_MM,
        "n_cases": 1,
        **{k: v for k, v in agg.items() if k != "per_class"},
        "per_class": agg["per_class"],
        "per_case": {case: res},
        "seconds": round(time.time() - t0, 2),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
