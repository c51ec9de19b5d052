"""Reading and writing MRI stacks and label volumes: one entry point per direction.

* :func:`read_image` — any supported image file or folder -> ``list[Volume]``;
* :func:`read_labels` — a label file (NIfTI, TIFF, UW-Madison CSV, DICOM RTSTRUCT or
  SEG) -> ``Volume``;
* :func:`write_labels` — a ``(z, y, x)`` label array next to its image, format by
  file extension;
* :func:`is_supported` — cheap check used by the napari reader hook (never raises).

Formats (details and geometry conventions in ``docs/data-formats.md`` and in each
module): NIfTI (:mod:`.nifti`), DICOM series (:mod:`.dicom`), TIFF stacks
(:mod:`.tiff`), UW-Madison GI Tract case-days and RLE CSV (:mod:`.uwmgi`,
:mod:`.rle`), DICOM RT Structure Sets (:mod:`.rtstruct`) and Segmentations
(:mod:`.dicom_seg`) on the grid of the DICOM series they reference. All readers return :class:`~.volume.Volume` with ``(z, y, x)`` data;
all problems with an input are :class:`~.volume.InvalidInputError` naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .nifti import nifti_affine
from .volume import InvalidInputError, Volume, volume_from_layer_metadata

#: File suffixes :func:`write_labels` understands.
LABEL_WRITE_SUFFIXES = (".nii.gz", ".nii", ".tif", ".tiff", ".csv", ".seg.dcm", ".dcm")
#: Output format of each suffix (``.dcm`` is an RT Structure Set, ``.seg.dcm`` a DICOM-SEG).
LABEL_FORMATS = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".csv": "uwmgi-csv",
    ".seg.dcm": "dicom-seg",
    ".dcm": "rtstruct",
}


def _kind(path: str | Path) -> str | None:
    """``"nifti" | "tiff" | "csv" | "dicom" | "rtstruct" | "seg" | "uwmgi" | None``
    (cheap, never raises)."""
    from .dicom import DICOM_SUFFIXES, dicom_object_kind, is_dicom_folder, looks_like_dicom
    from .nifti import is_nifti
    from .tiff import is_tiff
    from .uwmgi import is_uwmgi_csv, is_uwmgi_folder

    try:
        p = Path(path)
        if p.is_dir():
            if is_uwmgi_folder(p):
                return "uwmgi"
            if is_dicom_folder(p):
                return "dicom"
            return None
        if not p.is_file():
            return None
        name = p.name.lower()
        if is_nifti(name):
            return "nifti"
        if is_tiff(name):
            return "tiff"
        if name.endswith(".csv"):
            return "csv" if is_uwmgi_csv(p) else None
        if name.endswith(DICOM_SUFFIXES) or looks_like_dicom(p):
            obj = dicom_object_kind(p)
            return {"rtstruct": "rtstruct", "seg": "seg", "image": "dicom"}.get(obj or "")
    except (OSError, ValueError):
        return None
    return None


def is_supported(path: str | Path) -> bool:
    """True if :func:`read_image` or :func:`read_labels` can try ``path``: a NIfTI or
    TIFF file, a UW-Madison ``id,class,segmentation`` CSV, a DICOM file (image,
    RTSTRUCT or SEG), a folder with DICOM files, or a UW-Madison case-day / case
    folder. Never raises."""
    return _kind(path) is not None


def read_image(
    path: str | Path,
    slice_spacing_mm: float | None = None,
    *,
    skip_unreadable: bool = False,
    allow_uneven: bool = False,
) -> list[Volume]:
    """Read the image volume(s) at ``path``.

    * ``.nii``/``.nii.gz`` -> one Volume (label-like files are flagged
      ``metadata["is_labels"]``, see :func:`.nifti.looks_like_labels`);
    * ``.tif``/``.tiff`` -> one Volume;
    * a DICOM folder (recursive) or file -> one Volume per series (per echo of a
      multi-echo series; :func:`.dicom.read_dicom_folder`, which ``skip_unreadable`` and
      ``allow_uneven`` are passed to). NIfTI and TIFF images in the same folder are read
      too, after the series (never dropped silently); label files there are left out
      with a ``UserWarning`` naming them;
    * a UW-Madison case-day folder -> one Volume; a ``caseN`` folder -> one per day.
      ``slice_spacing_mm`` overrides the 3 mm default of that format.

    Raises
    ------
    InvalidInputError
        Unsupported path, or a broken input (names the file and the problem).
    FileNotFoundError
        ``path`` does not exist.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    kind = _kind(p)
    if kind == "nifti":
        from .nifti import read_nifti

        return [read_nifti(p)]
    if kind == "tiff":
        from .tiff import read_tiff

        return [read_tiff(p)]
    if kind == "dicom":
        from .dicom import read_dicom_folder

        vols = read_dicom_folder(p, allow_uneven=allow_uneven, skip_unreadable=skip_unreadable)
        return vols + (_other_images(p) if p.is_dir() else [])
    if kind == "uwmgi":
        from .uwmgi import DEFAULT_SLICE_SPACING_MM, case_day_folders, read_uwmgi_case_day

        dz = DEFAULT_SLICE_SPACING_MM if slice_spacing_mm is None else slice_spacing_mm
        return [read_uwmgi_case_day(f, dz) for f in case_day_folders(p)]
    if kind == "csv":
        raise InvalidInputError(p, "a UW-Madison label CSV holds labels, not an image; use read_labels")
    if kind in ("rtstruct", "seg"):
        raise InvalidInputError(p, f"a DICOM {kind.upper()} holds labels, not an image; use read_labels")
    raise InvalidInputError(
        p,
        "unsupported input; expected NIfTI (.nii/.nii.gz), TIFF stack, DICOM series folder "
        "or UW-Madison case-day folder (scans/slice_NNNN_W_H_pw_ph.png)",
    )


def _other_images(folder: Path) -> list[Volume]:
    """The NIfTI and TIFF images under a DICOM ``folder`` (label files are left out,
    with one ``UserWarning`` naming them)."""
    import warnings

    from .dicom_files import iter_files
    from .nifti import is_nifti, read_nifti
    from .tiff import is_tiff, read_tiff

    vols, labels = [], []
    for f in sorted(iter_files(folder)):
        if is_nifti(f.name) or is_tiff(f.name):
            v = read_nifti(f) if is_nifti(f.name) else read_tiff(f)
            (labels if v.metadata.get("is_labels") else vols).append(v if not v.metadata.get("is_labels") else f)
    if labels:
        names = ", ".join(str(f.relative_to(folder)) for f in labels[:5])
        warnings.warn(
            f"{folder}: label file(s) beside the DICOM series not opened as images: {names}"
            + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")
            + " (open them as labels of the series)",
            UserWarning,
            stacklevel=3,
        )
    return vols


def _check_like(path, labels: Volume, like: Volume | None) -> Volume:
    if like is None:
        return labels
    if labels.shape != like.shape:
        raise InvalidInputError(path, f"labels shape (z, y, x) {labels.shape} differs from the image's {like.shape}")
    if not np.allclose(labels.spacing_mm, like.spacing_mm, rtol=1e-3, atol=1e-3) and not labels.metadata.get(
        "spacing_assumed"
    ):
        raise InvalidInputError(
            path, f"labels spacing {labels.spacing_mm} mm differs from the image's {like.spacing_mm} mm"
        )
    return labels


def read_labels(path: str | Path, like: Volume | None = None) -> Volume:
    """Read a label volume ``(z, y, x)`` uint8/uint16.

    * NIfTI / TIFF: the file's own geometry; with ``like`` the shape (and spacing)
      must match the image.
    * UW-Madison CSV (``id,class,segmentation``): the case-day of ``like``
      (``metadata["case_id"]``/``["day"]``, slice numbers from the scans) on ``like``'s
      grid; without ``like`` the CSV must hold exactly one case-day, whose (H, W) is
      inferred from the RLE (spacing then unknown: 3 x 1 x 1 mm, flagged
      ``spacing_assumed``). Values 1 large_bowel, 2 small_bowel, 3 stomach, later
      class wins where organs overlap (:func:`.uwmgi.read_uwmgi_labels`).
    * UW-Madison case-day folder: its labels from the ``train.csv`` found up the tree.
    * DICOM RTSTRUCT: contours rasterised on ``like``'s grid (any image in the
      structure set's world frame) or, without ``like``, on the referenced series found
      in the file's folder or its parent; ROI names become class names
      (:func:`.rtstruct.read_rtstruct`).
    * DICOM-SEG: on the referenced series (``like`` must be that series); segment
      labels become class names (:func:`.dicom_seg.read_dicom_seg`).

    ``metadata["class_names"]`` (value -> name) is set where the format names classes.

    Raises
    ------
    InvalidInputError
        Unsupported file, non-integer/negative labels, a shape mismatch with ``like``,
        a CSV without the case-day or with several case-days and no ``like``.
    """
    from . import uwmgi

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    kind = _kind(p)
    if kind == "nifti":
        from .nifti import read_nifti

        return _check_like(p, read_nifti(p, as_labels=True), like)
    if kind == "tiff":
        from .tiff import read_tiff

        return _check_like(p, read_tiff(p, as_labels=True), like)
    if kind == "uwmgi":
        csv_path = uwmgi.find_train_csv(p)
        if csv_path is None:
            raise InvalidInputError(p, "no train.csv found in this folder or up to 4 levels above")
        if like is None:
            vols = read_image(p)
            if len(vols) != 1:
                raise InvalidInputError(p, f"{len(vols)} case-days here; open one caseN_dayM folder")
            like = vols[0]
        p, kind = csv_path, "csv"
    if kind == "csv":
        table = uwmgi.load_train_csv(p)
        if like is not None:
            cd = uwmgi.volume_case_day(like)
            if cd is None:
                raise InvalidInputError(p, "the image has no UW-Madison case/day; cannot pick rows of the CSV")
            if cd not in table.rles:
                raise InvalidInputError(p, f"no rows for case-day {cd}")
            lab = uwmgi.read_uwmgi_labels(table, cd, like.shape, like.metadata.get("slice_numbers"))
            return like.with_data(
                lab, is_labels=True, class_names=uwmgi.uwmgi_class_names(), source_path=str(p), format="uwmgi-csv"
            )
        if len(table.rles) != 1:
            raise InvalidInputError(
                p,
                f"holds {len(table.rles)} case-days; open a case-day folder (caseN_dayM with scans/) "
                "below this CSV, or pass the image as `like`",
            )
        cd = table.case_days[0]
        lab = uwmgi.read_uwmgi_labels(table, cd)
        case, day = cd[4:].split("_day")
        return Volume(
            lab,
            (uwmgi.DEFAULT_SLICE_SPACING_MM, 1.0, 1.0),
            np.diag([1.0, 1.0, uwmgi.DEFAULT_SLICE_SPACING_MM, 1.0]),
            (2, 1, 0),
            {
                "source_path": str(p),
                "format": "uwmgi-csv",
                "is_labels": True,
                "case_id": f"case{case}",
                "day": int(day),
                "class_names": uwmgi.uwmgi_class_names(),
                "coordinate_system": "none",
                "spacing_assumed": True,
                "spacing_source": "none in the CSV; in-plane 1 mm assumed",
            },
        )
    if kind == "rtstruct":
        from .rtstruct import read_rtstruct

        return read_rtstruct(p, like)
    if kind == "seg":
        from .dicom_seg import read_dicom_seg

        return read_dicom_seg(p, like)
    if kind == "dicom":
        raise InvalidInputError(p, "a DICOM image, not a label object (RTSTRUCT or SEG)")
    raise InvalidInputError(
        p, "unsupported label file; expected .nii/.nii.gz, .tif/.tiff, a UW-Madison CSV, a DICOM RTSTRUCT or SEG"
    )


def label_suffix(path: str | Path) -> str | None:
    """The :data:`LABEL_WRITE_SUFFIXES` entry ``path`` ends with (lower case), else ``None``."""
    n = str(path).lower()
    return next((s for s in LABEL_WRITE_SUFFIXES if n.endswith(s)), None)


#: The suffix :func:`write_labels` dispatches on for each output format.
FORMAT_SUFFIX = {"nifti": ".nii.gz", "tiff": ".tif", "uwmgi-csv": ".csv", "rtstruct": ".dcm", "dicom-seg": ".seg.dcm"}


def resolve_label_suffix(path: str | Path, fmt: str | None = None) -> str:
    """The :data:`LABEL_WRITE_SUFFIXES` entry that decides how ``path`` is written:
    its own suffix, or, with an explicit ``fmt``, that format's where the name allows
    it (an explicit DICOM format wins for any ``.dcm`` name).

    Raises
    ------
    ValueError
        Unknown extension or format, or a ``fmt`` whose files cannot have this name
        (e.g. ``fmt="nifti"`` for ``x.dcm``), naming the file.
    """
    suffix = label_suffix(path)
    if suffix is None:
        raise ValueError(
            f"{path}: cannot write labels with this extension; use one of {', '.join(LABEL_WRITE_SUFFIXES)}"
        )
    if fmt is None or LABEL_FORMATS[suffix] == fmt:
        return suffix
    if fmt not in FORMAT_SUFFIX:
        raise ValueError(f"{path}: unknown label format {fmt!r}; one of {', '.join(FORMAT_SUFFIX)}")
    if fmt in ("rtstruct", "dicom-seg") and suffix in (".dcm", ".seg.dcm"):
        return FORMAT_SUFFIX[fmt]
    raise ValueError(
        f"{path}: format {fmt} writes {FORMAT_SUFFIX[fmt]} files, not {suffix}; name the output *{FORMAT_SUFFIX[fmt]}"
    )


def write_labels(
    path: str | Path,
    labels: np.ndarray,
    like: Volume,
    class_names: Mapping[int, str] | None = None,
    *,
    colours: Mapping[int, object] | None = None,
    model_key: str | None = None,
    generation: str = "AUTOMATIC",
    fmt: str | None = None,
) -> Path:
    """Write a label volume aligned with the image ``like``; format by extension, or
    by ``fmt`` where given.

    * ``.nii``/``.nii.gz``: :func:`.nifti.write_nifti` with ``like``'s geometry (its
      affine in RAS: the writer converts a DICOM source's LPS affine itself), transposed
      back to the source axis order, so the labels overlay the image in 3D Slicer /
      ITK-SNAP;
    * ``.tif``/``.tiff``: ImageJ TIFF, uint8, with ``like``'s spacing;
    * ``.csv``: UW-Madison ``id,class,segmentation`` RLE for ``like``'s case-day;
      ``labels`` may also be ``(K, z, y, x)`` 0/1 masks (lossless for overlaps).
      ``class_names`` (value -> name) defaults to the image's ``metadata["class_names"]``
      or large_bowel/small_bowel/stomach.
    * ``.dcm``: a DICOM RT Structure Set, ``.seg.dcm``: a DICOM-SEG; both need ``like``
      read from a DICOM series and reference it (:func:`.rtstruct.write_rtstruct`,
      :func:`.dicom_seg.write_dicom_seg`); one ROI/segment per ``class_names`` entry
      with ``colours`` (value -> ``#rrggbb``); ``model_key`` (``"name:version"``) names
      the algorithm; ``generation`` is ``"AUTOMATIC"`` or ``"SEMIAUTOMATIC"``.

    ``fmt`` (``"nifti"``, ``"tiff"``, ``"uwmgi-csv"``, ``"rtstruct"``, ``"dicom-seg"``)
    wins over the extension where the extension allows it: any ``.dcm`` name takes
    ``"rtstruct"`` or ``"dicom-seg"`` (``seg.dcm`` as a DICOM-SEG), while a NIfTI, TIFF
    or CSV format needs its own extension.

    Files are written to a temp name and renamed. Returns the path written.

    Raises
    ------
    ValueError
        Unknown extension, a ``fmt`` the extension cannot hold, shape differing from
        ``like``, non-integer labels, or a CSV for an image without a UW-Madison case-day.
    """
    from . import uwmgi
    from .nifti import write_nifti
    from .tiff import write_tiff_labels

    p = Path(path)
    suffix = resolve_label_suffix(p, fmt)
    arr = np.asarray(labels)
    if arr.dtype.kind not in "biu":
        if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)) or np.any(np.mod(arr, 1)):
            raise ValueError(f"{p}: labels must be integers, got {arr.dtype}")
        arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{p}: labels must be non-negative (min {arr.min()})")
    multi = suffix == ".csv" and arr.ndim == 4
    if tuple(arr.shape[-3:] if multi else arr.shape) != like.shape:
        raise ValueError(f"{p}: labels shape {arr.shape} differs from the image's (z, y, x) {like.shape}")
    if suffix in (".nii", ".nii.gz"):
        return write_nifti(like, p, arr)
    if suffix in (".tif", ".tiff"):
        return write_tiff_labels(p, arr, like.spacing_mm)
    if suffix in (".dcm", ".seg.dcm"):
        names = dict(class_names or like.metadata.get("class_names") or {})
        names = {int(k): str(v) for k, v in names.items() if int(k) != 0}
        if not names:
            names = {int(v): f"label_{int(v)}" for v in np.unique(arr) if v != 0}
        if suffix == ".dcm":
            from .rtstruct import write_rtstruct

            return write_rtstruct(p, arr, like, names, colours, generation=generation, description=str(model_key or ""))
        from .dicom_seg import write_dicom_seg

        key = str(model_key or "napari-gi-seg")
        name, version = key.rsplit(":", 1) if ":" in key else (key, "")
        return write_dicom_seg(
            p, arr, like, names, colours, model_name=name, model_version=version, generation=generation
        )
    cd = uwmgi.volume_case_day(like)
    if cd is None:
        raise ValueError(f"{p}: the image has no UW-Madison case/day (metadata case_id, day); cannot name the rows")
    names = class_names or like.metadata.get("class_names") or uwmgi.uwmgi_class_names()
    return uwmgi.write_uwmgi_csv(p, arr, cd, names, like.metadata.get("slice_numbers"))


__all__ = [
    "InvalidInputError",
    "Volume",
    "volume_from_layer_metadata",
    "is_supported",
    "read_image",
    "read_labels",
    "write_labels",
    "nifti_affine",
    "label_suffix",
    "resolve_label_suffix",
    "FORMAT_SUFFIX",
    "LABEL_WRITE_SUFFIXES",
    "LABEL_FORMATS",
]
