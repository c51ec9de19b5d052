"""The files of a DICOM series folder and the volumes inside one series.

* :func:`walk_files`: every regular file under a folder once, following folder links
  but never into a folder already visited (``loop -> .``), and listing a file reached
  through two names (``alias -> seriesA``, a hard link) once, by its real identity
  (``st_dev``, ``st_ino``).
* :func:`read_members`: the image headers of a folder's DICOM files. A file that is a
  member of the series but cannot be read (cut short, a damaged header, a ``.dcm`` file
  without the DICOM preamble, an image SOP class file without pixel data) is an
  :class:`~.volume.InvalidInputError` naming it; with ``skip_unreadable=True`` it is
  skipped with a ``UserWarning`` naming it instead. Two files with one
  ``SOPInstanceUID`` (a copy) count once.
* :func:`split_volumes`: one ``SeriesInstanceUID`` may hold several volumes: the
  in- and opposed-phase echoes of a Dixon/dual-echo acquisition (the CHAOS T1-DUAL
  series), magnitude and phase images, dynamic time points. As dcm2niix and 3D Slicer
  do, the series is split by the per-volume attributes :data:`PER_VOLUME_TAGS`
  (``EchoTime``, ``EchoNumbers``, ``TemporalPositionIdentifier``, ``InversionTime``,
  ``ImageType``) that take more than one value in it (when no images share a slice
  position, only into volumes of at least :data:`MIN_SPLIT_IMAGES` images, so a tag
  that drifts from slice to slice never shreds a series), and, only where images still
  share a slice position, by their folder. Each volume gets a short label that names
  it: ``e1``, ``e2`` (the echo number, dcm2niix's ``_e1``/``_e2``), ``t3`` (temporal
  position), ``ti800`` (inversion time, ms), the differing ``ImageType`` value
  (``m``, ``p``), or the folder name.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import defaultdict
from pathlib import Path

from .volume import InvalidInputError

#: Suffixes of files that are DICOM by name (a member even if its preamble is missing).
DICOM_NAME_SUFFIXES = (".dcm", ".dicom", ".ima")
#: Attributes that tell the volumes of one series apart (see the module docstring).
PER_VOLUME_TAGS = ("EchoTime", "EchoNumbers", "TemporalPositionIdentifier", "InversionTime", "ImageType")
_LABEL_MODALITIES = ("RTSTRUCT", "SEG")


def iter_files(folder: str | Path):
    """Every regular file under ``folder`` (recursively, folders in name order), each
    real file once; folder links are followed but a folder is never entered twice
    (symlink loops end, an alias of a sibling folder adds nothing). Unreadable folders
    are skipped. A generator, so a caller may stop early."""
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()
    stack = [Path(folder)]
    while stack:
        d = stack.pop()
        try:
            st = d.stat()
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            continue
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for e in entries:
            try:
                if e.is_dir():  # follows links; the visited set ends loops
                    subdirs.append(Path(e.path))
                elif e.is_file():
                    fst = e.stat()
                    fkey = (fst.st_dev, fst.st_ino)
                    if fkey not in seen_files:
                        seen_files.add(fkey)
                        yield Path(e.path)
            except OSError:
                continue
        # real folders before links to them, so a file is listed under its own name
        subdirs.sort(key=lambda p: (p.is_symlink(), p.name))
        stack.extend(reversed(subdirs))


def walk_files(folder: str | Path) -> list[Path]:
    """:func:`iter_files` of ``folder``, sorted by path."""
    return sorted(iter_files(folder))


def _is_image_storage(sop_class_uid: str) -> bool:
    import pydicom

    try:
        return "Image Storage" in pydicom.uid.UID(str(sop_class_uid)).name
    except Exception:  # noqa: BLE001 - an unknown UID is not an image class we know
        return False


def _unreadable(f: Path, why: str, skip: bool, skipped: list[str]) -> None:
    if not skip:
        raise InvalidInputError(
            f,
            f"{why}; this file of the DICOM series cannot be read (open the series with skip_unreadable / "
            "--skip-unreadable to leave it out with a warning)",
        )
    skipped.append(f"{f.name} ({why})")


def read_members(folder: Path, files: list[Path] | None = None, skip_unreadable: bool = False) -> list[tuple]:
    """``(path, header)`` of every DICOM image file under ``folder`` (pixel data not
    read), skipping non-DICOM files, non-image objects (DICOMDIR, SR, RTSTRUCT, SEG)
    and duplicate ``SOPInstanceUID`` s.

    Raises
    ------
    InvalidInputError
        A member that cannot be read (see the module docstring), naming the file,
        unless ``skip_unreadable`` (then one ``UserWarning`` lists the skipped files).
    """
    import pydicom

    from .dicom import looks_like_dicom

    skipped: list[str] = []
    out, uids = [], set()
    for f in walk_files(folder) if files is None else files:
        named = f.name.lower().endswith(DICOM_NAME_SUFFIXES)
        if not looks_like_dicom(f):
            if named:
                _unreadable(
                    f, "no DICOM preamble ('DICM' at byte 128): truncated or not DICOM", skip_unreadable, skipped
                )
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as e:  # noqa: BLE001 - any parse failure of a member is reported
            _unreadable(f, f"unreadable DICOM header ({type(e).__name__}: {e})", skip_unreadable, skipped)
            continue
        sop_class = str(getattr(ds, "SOPClassUID", "") or getattr(ds.file_meta, "MediaStorageSOPClassUID", "") or "")
        if "Rows" not in ds or "Columns" not in ds:
            if _is_image_storage(sop_class):  # an image file whose header ends early: cut short
                _unreadable(f, "an image file without Rows/Columns: truncated", skip_unreadable, skipped)
            continue  # not an image (DICOMDIR, SR, RT structure set, ...)
        if str(getattr(ds, "Modality", "") or "").upper() in _LABEL_MODALITIES:  # a SEG beside its series
            continue
        uid = str(getattr(ds, "SOPInstanceUID", "") or "")
        if uid and uid in uids:  # the same instance twice (a copy): once
            continue
        uids.add(uid)
        out.append((f, ds))
    if skipped:
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(
            f"{folder}: skipped {len(skipped)} unreadable DICOM file(s): {'; '.join(skipped[:5])}{more}",
            UserWarning,
            stacklevel=3,
        )
    return out


def _tag_value(ds, tag: str):
    v = getattr(ds, tag, None)
    if v is None or v == "":
        return None
    if tag in ("EchoTime", "InversionTime"):
        try:
            return round(float(v), 2)
        except (TypeError, ValueError):
            return str(v)
    if tag == "ImageType":
        return tuple(str(x).upper() for x in ([v] if isinstance(v, str) or not hasattr(v, "__iter__") else v))
    if tag in ("EchoNumbers", "TemporalPositionIdentifier"):
        try:
            return int(v[0] if hasattr(v, "__len__") and not isinstance(v, str) else v)
        except (TypeError, ValueError):
            return str(v)
    return str(v)


def _safe(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", str(s).lower())[:12]


def _labels_for(tag: str, values: list) -> list[str]:
    """Short labels of the distinct ``values`` of one per-volume ``tag``."""
    if tag in ("EchoTime", "EchoNumbers"):
        return [f"e{i + 1}" for i in range(len(values))]  # replaced by EchoNumbers below when they differ
    if tag == "TemporalPositionIdentifier":
        return [f"t{v}" for v in values]
    if tag == "InversionTime":
        return [f"ti{v:g}" if isinstance(v, float) else f"ti{_safe(v)}" for v in values]
    # ImageType: the first component in which the values differ
    tuples = [v if isinstance(v, tuple) else (str(v),) for v in values]
    n = max(len(t) for t in tuples)
    for k in range(n):
        comp = [t[k] if k < len(t) else "" for t in tuples]
        if len(set(comp)) == len(comp):
            return [_safe(c) or f"v{i + 1}" for i, c in enumerate(comp)]
    return [f"v{i + 1}" for i in range(len(values))]


#: Without images sharing a slice position, a series is split only into volumes of at
#: least this many images (a tag that drifts from slice to slice must not shred a series).
MIN_SPLIT_IMAGES = 3


def split_volumes(items: list[tuple], shared_positions: bool = True) -> list[tuple[str, dict, list[tuple]]]:
    """The volumes of one series' ``(path, header)`` ``items``: a list of ``(label,
    info, items)``, ``label`` ``""`` when the series is one volume; ``info`` holds
    ``echo_time_ms`` and ``echo_number`` where the split was by echo. See the module
    docstring for the tags and labels. ``shared_positions``: whether some images share
    a slice position; if not, the series is split only when every volume has at least
    :data:`MIN_SPLIT_IMAGES` images."""
    varying = [t for t in PER_VOLUME_TAGS if len({_tag_value(ds, t) for _, ds in items}) > 1]
    if "EchoTime" in varying and "EchoNumbers" in varying:
        varying.remove("EchoNumbers")  # one echo, one label
    groups: dict[tuple, list] = defaultdict(list)
    for f, ds in items:
        groups[tuple(_tag_value(ds, t) for t in varying)].append((f, ds))
    if not shared_positions and any(len(g) < MIN_SPLIT_IMAGES for g in groups.values()):
        return [("", {}, items)]
    labelled = []
    keys = sorted(groups, key=lambda k: tuple((v is None, str(v) if not isinstance(v, (int, float)) else v) for v in k))
    per_tag = []
    for i, t in enumerate(varying):
        vals = sorted({k[i] for k in keys}, key=lambda v: (v is None, v if isinstance(v, (int, float)) else str(v)))
        names = dict(zip(vals, _labels_for(t, vals)))
        if t == "EchoTime":  # the echo number where it tells the echoes apart (dcm2niix's _e1, _e2)
            nums = {v: {_tag_value(ds, "EchoNumbers") for k in keys if k[i] == v for _, ds in groups[k]} for v in vals}
            flat = [next(iter(n)) for n in nums.values() if len(n) == 1]
            if len(flat) == len(vals) and len(set(flat)) == len(vals) and all(isinstance(x, int) for x in flat):
                names = {v: f"e{next(iter(nums[v]))}" for v in vals}
        per_tag.append(names)
    for k in keys:
        label = "_".join(per_tag[i][v] for i, v in enumerate(k))
        info = {}
        ds0 = groups[k][0][1]
        if "EchoTime" in varying or "EchoNumbers" in varying:
            te = _tag_value(ds0, "EchoTime")
            if isinstance(te, float):
                info["echo_time_ms"] = te
            en = _tag_value(ds0, "EchoNumbers")
            if isinstance(en, int):
                info["echo_number"] = en
        labelled.append((label, info, groups[k]))
    return labelled


def split_by_folder(label: str, items: list[tuple]) -> list[tuple[str, list[tuple]]]:
    """``items`` split by parent folder (the last resort for images that share a slice
    position and every per-volume tag), labels ``<label>_<folder name>``."""
    by_dir: dict[Path, list] = defaultdict(list)
    for f, ds in items:
        by_dir[Path(f).parent].append((f, ds))
    if len(by_dir) < 2:
        return [(label, items)]
    return [("_".join(x for x in (label, _safe(d.name) or "dir") if x), by_dir[d]) for d in sorted(by_dir)]


__all__ = ["iter_files", "walk_files", "read_members", "split_volumes", "split_by_folder", "PER_VOLUME_TAGS"]
