"""UW-Madison GI Tract (Kaggle 2022) scans and labels.

Layout (Kaggle's ``train/`` tree)::

    <root>/train.csv                                   id,class,segmentation (RLE)
    <root>/train/case123/case123_day20/scans/slice_0001_266_266_1.50_1.50.png
                                                ...     16-bit grayscale PNG per slice

Geometry
--------
* A case-day is one MR series: its PNGs are stacked in slice-number order into
  ``(z, y, x)``, ``z`` = slice (1-based number in the file name -> index ``z``, recorded in
  ``metadata["slice_numbers"]``), ``y`` = PNG row (``H``), ``x`` = PNG column (``W``).
* In-plane spacing comes from the file name (``slice_NNNN_W_H_pw_ph.png``: ``pw`` in x,
  ``ph`` in y, mm). The file names carry no slice spacing; the dataset paper (Lee S.L.
  et al., *Data in Brief* 57 (2024) 111159) gives a 3 mm slice thickness, so
  ``slice_spacing_mm`` defaults to :data:`DEFAULT_SLICE_SPACING_MM` = 3.0 and can be
  overridden.
* PNGs carry no orientation: ``affine`` is ``diag(sx, sy, sz, 1)`` in NIfTI voxel order
  ``(x, y, z)`` (``index_order = (2, 1, 0)``, ``coordinate_system = "none"``).
* Frame assumption (documented, never silent): the dataset's acquisition frame as the
  paper describes and shows it (Lee et al. 2024: axial MR-Linac slices, displayed
  radiologically): rows run anterior -> posterior, columns the patient's right -> left,
  slice numbers increase toward the feet (in every case-day of ``train.csv`` the
  stomach lies at lower slice numbers than the large bowel, in the anterior half of
  the rows and in the columns' patient-left half). Axis codes ``("L", "P", "I")`` in
  (x, y, z) (:data:`napari_gi_seg.io.orientation.ASSUMED_AXCODES`). The engine and the
  NIfTI writer use it and emit a
  :class:`~napari_gi_seg.io.orientation.FrameGuessWarning` when they do.

Labels
------
The classes of the format are :data:`UWMGI_CLASSES` (large_bowel, small_bowel,
stomach). Organs may overlap in ``train.csv`` (a pixel can be in two masks), so

* :func:`read_uwmgi_labels` gives one ``(z, y, x)`` uint8 volume with values
  1 = large_bowel, 2 = small_bowel, 3 = stomach where **the later class wins**
  (stomach over small bowel over large bowel) — lossy where organs overlap;
* :func:`read_uwmgi_multilabel` gives ``(K, z, y, x)`` uint8 0/1 masks, one per class,
  lossless (for multi-label / sigmoid training).

:func:`write_uwmgi_csv` writes the Kaggle format back, byte-identical RLE
(:mod:`napari_gi_seg.io.rle`).
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._atomic import atomic_path
from ..errors import InputError
from .rle import case_day_of, infer_mask_shape, parse_scan_name, parse_uwmgi_id, rle_decode, rle_encode
from .volume import InvalidInputError, Volume

#: The format's classes in ``train.csv`` row order; label value = position + 1.
UWMGI_CLASSES: tuple[str, ...] = ("large_bowel", "small_bowel", "stomach")
#: Slice spacing (mm) of the UW-Madison MRI: 3 mm slice thickness (Lee et al., Data in Brief 2024).
DEFAULT_SLICE_SPACING_MM = 3.0
CSV_HEADER = ("id", "class", "segmentation")

_CASE_DAY = re.compile(r"^case(\d+)_day(\d+)$")
_CASE = re.compile(r"^case(\d+)$")


def uwmgi_class_names() -> dict[int, str]:
    """``{1: "large_bowel", 2: "small_bowel", 3: "stomach"}`` (label value -> class)."""
    return {i + 1: n for i, n in enumerate(UWMGI_CLASSES)}


# ----------------------------------------------------------------------------- train.csv


@dataclass
class UwmgiCsv:
    """A parsed ``train.csv``: ``rles[case_day][slice_number][class] = rle`` (``""`` = empty).

    ``classes`` lists the class names in first-seen order.
    """

    path: str
    rles: dict[str, dict[int, dict[str, str]]] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)

    @property
    def case_days(self) -> list[str]:
        """Case-day ids, e.g. ``["case2_day1", ...]`` (file order)."""
        return list(self.rles)

    def mask_shape(self, case_day: str) -> tuple[int, int] | None:
        """``(H, W)`` inferred from the RLE alone (:func:`~napari_gi_seg.io.rle.infer_mask_shape`)."""
        return infer_mask_shape(r for s in self.rles.get(case_day, {}).values() for r in s.values())


def is_uwmgi_csv(path: str | Path) -> bool:
    """True when ``path`` is a ``.csv`` whose header is ``id,class,segmentation``. Never raises."""
    try:
        p = Path(path)
        if p.suffix.lower() != ".csv" or not p.is_file():
            return False
        with open(p, newline="", encoding="utf-8") as f:
            first = f.readline().strip().lstrip("\ufeff")
        return tuple(c.strip() for c in first.split(",")) == CSV_HEADER
    except (OSError, UnicodeDecodeError):
        return False


def load_train_csv(path: str | Path) -> UwmgiCsv:
    """Parse a UW-Madison ``train.csv`` (``id,class,segmentation``); cached.

    The cache key is the resolved path with its size and modification time, so an
    edited file is re-read. The full Kaggle file (25 MB, 115,488 rows) parses in
    ~0.3 s and is kept once in memory (at most 2 files are cached).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    InvalidInputError
        Wrong header, a malformed id or a row with the wrong number of fields.
    """
    p = Path(path).resolve()
    st = p.stat()
    return _load_train_csv_cached(str(p), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _load_train_csv_cached(path: str, size: int, mtime_ns: int) -> UwmgiCsv:
    out = UwmgiCsv(path)
    classes: dict[str, None] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip().lstrip("\ufeff") for h in header) != CSV_HEADER:
            raise InvalidInputError(path, f"not a UW-Madison label CSV: header {header} != {list(CSV_HEADER)}")
        for lineno, row in enumerate(reader, start=2):
            if len(row) != 3:
                raise InvalidInputError(
                    path, f"line {lineno}: expected 3 fields (id,class,segmentation), got {len(row)}"
                )
            sid, cls, seg = row
            try:
                case, day, sl = parse_uwmgi_id(sid)
            except ValueError as e:
                raise InvalidInputError(path, f"line {lineno}: {e}") from e
            out.rles.setdefault(f"case{case}_day{day}", {}).setdefault(sl, {})[cls] = seg
            classes.setdefault(cls, None)
    out.classes = list(classes)
    return out


def find_train_csv(folder: str | Path, levels: int = 4) -> Path | None:
    """Look for ``train.csv`` in ``folder`` and up to ``levels`` parents (a case-day
    folder sits at ``<root>/train/caseN/caseN_dayM``). Never raises."""
    try:
        p = Path(folder).resolve()
        for cand in [p, *list(p.parents)[:levels]]:
            f = cand / "train.csv"
            if f.is_file() and is_uwmgi_csv(f):
                return f
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------- scans


def _scan_pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("slice_*.png") if p.is_file())


def scans_folder(path: str | Path) -> Path | None:
    """The ``scans/`` folder of a case-day (``caseN_dayM/`` or its ``scans/``), or
    ``None`` if ``path`` is not one. Never raises."""
    try:
        p = Path(path)
        if not p.is_dir():
            return None
        for cand in (p / "scans", p):
            if cand.is_dir() and any(_valid_scan_name(q.name) for q in cand.glob("slice_*.png")):
                return cand
    except OSError:
        pass
    return None


def case_day_folders(path: str | Path) -> list[Path]:
    """Case-day folders under ``path``: itself if it is one, else its ``caseN_dayM``
    children (a ``caseN`` folder). Sorted by day. Never raises."""
    p = Path(path)
    if scans_folder(p) is not None:
        return [p]
    try:
        kids = [k for k in p.iterdir() if k.is_dir() and _CASE_DAY.match(k.name) and scans_folder(k)]
    except OSError:
        return []
    return sorted(kids, key=lambda k: int(_CASE_DAY.match(k.name).group(2)))


def is_uwmgi_folder(path: str | Path) -> bool:
    """True for a UW-Madison case-day folder (or its ``scans/``) or a ``caseN`` folder."""
    return bool(case_day_folders(path))


def _valid_scan_name(name: str) -> bool:
    try:
        parse_scan_name(name)
        return True
    except ValueError:
        return False


def _case_day_id(folder: Path, scans: Path) -> str | None:
    for cand in (folder, scans.parent, scans):
        if _CASE_DAY.match(cand.name):
            return cand.name
    return None


def read_uwmgi_case_day(path: str | Path, slice_spacing_mm: float = DEFAULT_SLICE_SPACING_MM) -> Volume:
    """Read one case-day's scans into a :class:`Volume` ``(z, y, x)`` of the PNGs' dtype
    (uint16 for the Kaggle 16-bit PNGs).

    Parameters
    ----------
    path: ``caseN_dayM/`` folder or its ``scans/`` folder.
    slice_spacing_mm: distance between slices (mm); default 3.0 (see module docstring).

    Raises
    ------
    InvalidInputError
        No scans, slices with different W x H (names the sizes), a PNG whose pixel size
        differs from its file name, an RGB/palette PNG (names the file), an unreadable
        PNG, or two files with the same slice number.
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(path)
    scans = scans_folder(folder)
    if scans is None:
        raise InvalidInputError(folder, "no UW-Madison scans (scans/slice_NNNN_W_H_pw_ph.png) found")
    if not slice_spacing_mm or slice_spacing_mm <= 0:
        raise InputError(f"slice_spacing_mm must be positive, got {slice_spacing_mm}")
    files = [(parse_scan_name(p.name), p) for p in _scan_pngs(scans) if _valid_scan_name(p.name)]
    files.sort(key=lambda t: t[0].slice_index)
    numbers = [s.slice_index for s, _ in files]
    if len(set(numbers)) != len(numbers):
        dup = sorted({n for n in numbers if numbers.count(n) > 1})
        raise InvalidInputError(scans, f"several files for slice number(s) {dup[:5]}")
    geoms = {(s.height, s.width, s.spacing_y_mm, s.spacing_x_mm) for s, _ in files}
    if len(geoms) > 1:
        sizes = sorted({f"{w}x{h} @ {px}x{py} mm" for h, w, py, px in geoms})
        raise InvalidInputError(
            scans,
            f"slices differ in size/pixel spacing (W x H): {', '.join(sizes)}; "
            "all slices of a case-day must share one geometry",
        )
    h, w, py, px = geoms.pop()
    slices = []
    for _s, p in files:
        try:
            with Image.open(p) as im:
                mode = im.mode
                arr = np.asarray(im)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise InvalidInputError(p, f"cannot read PNG: {e}") from e
        if arr.ndim != 2 or mode not in ("I;16", "I;16B", "I;16L", "I", "L"):
            raise InvalidInputError(
                p,
                f"expected a grayscale (16-bit) PNG, got mode {mode} with shape {arr.shape}"
                " (RGB/palette scans are not supported)",
            )
        if arr.shape != (h, w):
            raise InvalidInputError(
                p, f"pixel size {arr.shape[1]}x{arr.shape[0]} (W x H) differs from the file name's {w}x{h}"
            )
        slices.append(arr)
    data = np.stack(slices)
    spacing = (float(slice_spacing_mm), float(py), float(px))
    cd = _case_day_id(folder, scans)
    md = {
        "source_path": str(folder),
        "format": "uwmgi",
        "modality": "MR",
        "is_labels": False,
        "slice_numbers": numbers,
        "coordinate_system": "none",
        "spacing_source": f"file names (in-plane); slice spacing {slice_spacing_mm:g} mm "
        "(Lee et al., Data in Brief 2024)",
    }
    if cd:
        case, day = (int(g) for g in _CASE_DAY.match(cd).groups())
        md.update(case_id=f"case{case}", day=day)
    return Volume(data, spacing, np.diag([px, py, float(slice_spacing_mm), 1.0]), (2, 1, 0), md)


def volume_case_day(volume: Volume) -> str | None:
    """``"caseN_dayM"`` of a volume read by :func:`read_uwmgi_case_day`, else ``None``."""
    c, d = volume.metadata.get("case_id"), volume.metadata.get("day")
    return f"{c}_day{d}" if c is not None and d is not None else None


# ----------------------------------------------------------------------------- labels


def _resolve_geometry(
    table: UwmgiCsv, case_day: str, shape: Sequence[int] | None, slice_numbers: Sequence[int] | None
) -> tuple[tuple[int, int, int], list[int]]:
    if case_day not in table.rles:
        raise InvalidInputError(table.path, f"no rows for case-day {case_day!r}")
    rows = table.rles[case_day]
    if slice_numbers is None:
        if shape is not None:
            slice_numbers = list(range(1, int(shape[0]) + 1))
        else:
            slice_numbers = list(range(1, max(rows) + 1))
    slice_numbers = [int(s) for s in slice_numbers]
    if shape is None:
        hw = table.mask_shape(case_day)
        if hw is None:
            raise InvalidInputError(
                table.path, f"{case_day}: cannot infer the slice size (H, W) from the RLE; pass shape"
            )
        shape = (len(slice_numbers), *hw)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape[0] != len(slice_numbers):
        raise InputError(f"shape {shape} must be (z, H, W) with z = {len(slice_numbers)} slices")
    return shape, slice_numbers  # type: ignore[return-value]


def read_uwmgi_multilabel(
    train_csv: str | Path | UwmgiCsv,
    case_day: str,
    shape: Sequence[int] | None = None,
    slice_numbers: Sequence[int] | None = None,
    classes: Sequence[str] = UWMGI_CLASSES,
) -> np.ndarray:
    """Masks of one case-day as ``(K, z, y, x)`` uint8 0/1, ``K = len(classes)`` (lossless).

    Parameters
    ----------
    train_csv: path of ``train.csv`` (or an already loaded :class:`UwmgiCsv`).
    case_day: e.g. ``"case123_day20"``.
    shape: ``(z, H, W)``; default: ``z`` from ``slice_numbers`` (or the largest slice
        number in the CSV), ``(H, W)`` inferred from the RLE.
    slice_numbers: slice number (1-based, as in the ids) of each ``z``; default
        ``1..z``. Slices missing from the CSV stay empty.
    classes: class names -> channel order.

    Raises
    ------
    InvalidInputError
        Unknown case-day, or an RLE that does not fit ``(H, W)`` (names the slice id).
    """
    table = train_csv if isinstance(train_csv, UwmgiCsv) else load_train_csv(train_csv)
    shape, numbers = _resolve_geometry(table, case_day, shape, slice_numbers)
    out = np.zeros((len(classes), *shape), dtype=np.uint8)
    rows = table.rles[case_day]
    for z, sl in enumerate(numbers):
        per_class = rows.get(sl, {})
        for k, cls in enumerate(classes):
            rle = per_class.get(cls, "")
            if rle:
                try:
                    out[k, z] = rle_decode(rle, shape[1:])
                except ValueError as e:
                    raise InvalidInputError(table.path, f"{case_day}_slice_{sl:04d} {cls}: {e}") from e
    return out


def flatten_multilabel(masks: np.ndarray) -> np.ndarray:
    """``(K, z, y, x)`` 0/1 masks -> ``(z, y, x)`` uint8 labels, value ``k + 1`` for
    channel ``k``, later channels win where masks overlap."""
    out = np.zeros(masks.shape[1:], dtype=np.uint8)
    for k in range(masks.shape[0]):
        out[masks[k] != 0] = k + 1
    return out


def read_uwmgi_labels(
    train_csv: str | Path | UwmgiCsv,
    case_day: str,
    shape: Sequence[int] | None = None,
    slice_numbers: Sequence[int] | None = None,
) -> np.ndarray:
    """Labels of one case-day as ``(z, y, x)`` uint8: 0 background, 1 large_bowel,
    2 small_bowel, 3 stomach; where organs overlap the later class wins (stomach >
    small_bowel > large_bowel). See :func:`read_uwmgi_multilabel` for arguments and
    errors, and for the lossless variant."""
    return flatten_multilabel(read_uwmgi_multilabel(train_csv, case_day, shape, slice_numbers))


def uwmgi_csv_rows(
    labels: np.ndarray,
    case_day: str,
    class_names: Mapping[int, str] | None = None,
    slice_numbers: Sequence[int] | None = None,
) -> list[tuple[str, str, str]]:
    """``(id, class, segmentation)`` rows for a case-day, slice by slice, classes in
    label-value order (Kaggle's order for the default classes).

    ``labels``: ``(z, y, x)`` label volume (class = value) or ``(K, z, y, x)`` 0/1 masks
    (class = channel + 1; lossless for overlapping organs). ``class_names``: label value
    -> class name, default :func:`uwmgi_class_names`.
    """
    labels = np.asarray(labels)
    names = dict(class_names) if class_names else uwmgi_class_names()
    names = {int(k): str(v) for k, v in names.items() if int(k) != 0}
    if labels.ndim not in (3, 4):
        raise InputError(f"labels must be (z, y, x) or (K, z, y, x), got shape {labels.shape}")
    nz = labels.shape[-3]
    numbers = list(range(1, nz + 1)) if slice_numbers is None else [int(s) for s in slice_numbers]
    if len(numbers) != nz:
        raise InputError(f"{len(numbers)} slice numbers for {nz} slices")
    if labels.ndim == 4 and max(names) > labels.shape[0]:
        raise InputError(f"class values {sorted(names)} exceed the {labels.shape[0]} mask channels")
    rows = []
    for z, sl in enumerate(numbers):
        sid = f"{case_day}_slice_{sl:04d}"
        for v in sorted(names):
            m = labels[v - 1, z] if labels.ndim == 4 else labels[z] == v
            rows.append((sid, names[v], rle_encode(m)))
    return rows


def write_uwmgi_csv(
    path: str | Path,
    labels: np.ndarray,
    case_day: str,
    class_names: Mapping[int, str] | None = None,
    slice_numbers: Sequence[int] | None = None,
) -> Path:
    """Write labels of one case-day as a UW-Madison ``id,class,segmentation`` CSV
    (Kaggle RLE, byte-identical encoding; ``\\n`` line ends). Written to a temp file
    then renamed, so no half-written CSV is left. See :func:`uwmgi_csv_rows`.

    Raises ``ValueError`` for a malformed ``case_day`` or label array.
    """
    if not _CASE_DAY.match(case_day):
        raise InputError(f"case_day must look like 'case123_day20', got {case_day!r}")
    rows = uwmgi_csv_rows(labels, case_day, class_names, slice_numbers)
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CSV_HEADER)
        w.writerows(rows)
    return path


__all__ = [
    "UWMGI_CLASSES",
    "DEFAULT_SLICE_SPACING_MM",
    "UwmgiCsv",
    "uwmgi_class_names",
    "is_uwmgi_csv",
    "load_train_csv",
    "find_train_csv",
    "scans_folder",
    "case_day_folders",
    "is_uwmgi_folder",
    "read_uwmgi_case_day",
    "volume_case_day",
    "read_uwmgi_multilabel",
    "read_uwmgi_labels",
    "flatten_multilabel",
    "uwmgi_csv_rows",
    "write_uwmgi_csv",
    "case_day_of",
]
