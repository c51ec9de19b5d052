"""DICOM series (a folder of single-frame image files, or Enhanced multi-frame
files) with pydicom.

Reading (:func:`read_dicom_folder`):

* every file under the folder (recursively; folder links followed once, so
  ``loop -> .`` ends and ``alias -> seriesA`` adds nothing; a file reached by two
  names is read once) is tried (:mod:`.dicom_files`); files that are not DICOM (no
  ``DICM`` preamble and no DICOM suffix) or not images (DICOMDIR, structured reports,
  RTSTRUCT, SEG, ``README.txt``, ...) are ignored. A member that cannot be read (cut
  short, a damaged header or pixel data, a ``.dcm`` file without the preamble) is an
  :class:`InvalidInputError` naming the file; ``skip_unreadable=True`` skips it with a
  ``UserWarning`` naming it instead;
* images are grouped by ``SeriesInstanceUID``; a series that holds several volumes
  (echoes of a dual-echo/Dixon acquisition, such as the CHAOS T1-DUAL in- and
  opposed-phase images sharing one UID; magnitude/phase; time points) is split by
  the per-volume tags (``EchoTime``, ``EchoNumbers``, ``TemporalPositionIdentifier``,
  ``InversionTime``, ``ImageType``) and, last, by folder, as dcm2niix and 3D Slicer
  do: one :class:`Volume` each, ``metadata["volume_label"]`` ``e1``/``e2`` (the echo
  number) and ``metadata["echo_time_ms"]``;
* ``PhotometricInterpretation`` MONOCHROME1 (low values shown white, PS3.3
  C.7.6.3.1.2) is inverted within the series' value range (``max + min - v``), so
  that, as for MONOCHROME2, high values are bright;
* an Enhanced (multi-frame) image, e.g. Enhanced MR Image Storage as current
  scanners write it, contributes one slice per frame: position from each frame's
  ``PerFrameFunctionalGroupsSequence`` > ``PlanePositionSequence`` >
  ``ImagePositionPatient``, orientation (``PlaneOrientationSequence``), pixel spacing
  (``PixelMeasuresSequence``) and rescale (``PixelValueTransformationSequence``) from
  the per-frame groups or else the ``SharedFunctionalGroupsSequence`` (PS3.3 C.7.6.16);
* slices are sorted by their position along the slice normal,
  ``n = row_cosine x column_cosine`` (``ImageOrientationPatient``), position
  ``d = n . ImagePositionPatient``;
* the slice gaps must be even: a gap differing from the median gap by more than
  :data:`GAP_TOLERANCE` (a missing file, uneven spacing) is an
  :class:`InvalidInputError` naming the positions and the expected spacing. With
  ``allow_uneven=True`` it is a ``UserWarning`` instead and the slices are linearly
  interpolated along the normal onto an even grid at the median spacing (so the
  affine below is exact; a missing position is interpolated from its neighbours);
* voxel values = stored value x ``RescaleSlope`` + ``RescaleIntercept`` (float32);
* spacing ``(z, y, x)`` mm: ``z`` = median distance between consecutive slice
  positions, ``y`` = ``PixelSpacing[0]`` (between rows), ``x`` = ``PixelSpacing[1]``
  (between columns);
* affine (PS3.3 C.7.6.2.1.1, LPS world mm), in the source voxel order
  ``(column i, row j, slice k)`` = ``(x, y, z)`` (``index_order = (2, 1, 0)``)::

      [ X * dx   Y * dy   (P_last - P_first) / (n - 1)   P_first ]
      [   0        0                  0                     1    ]

  with ``X``/``Y`` the row/column direction cosines, ``dx = PixelSpacing[1]``,
  ``dy = PixelSpacing[0]``, ``P`` the slices' ``ImagePositionPatient``.
  ``metadata["coordinate_system"] = "LPS"``; NIfTI writers flip x and y to RAS.

Only non-identifying metadata is kept: ``modality``, ``series_description`` and a
sha256 hash of the ``SeriesInstanceUID``. Patient-module attributes (name, id, birth
date, ...) are never copied into :attr:`Volume.metadata` (see PS3.15 Annex E).

What DICOM outputs (RTSTRUCT, DICOM-SEG) must reference, i.e. the Study, Series, SOP
Instance and Frame of Reference UIDs, per-slice ``ImagePositionPatient`` and the
Patient/Study module values the standard requires an RT object to repeat, is kept in
the volume's private field ``Volume._dicom_ref`` (a :class:`DicomReference`), which is
never part of metadata, layer metadata, exports, sessions or logs.

RT Structure Sets and Segmentation objects (``Modality`` RTSTRUCT / SEG) are not image
series: the series reader skips them; :func:`dicom_object_kind` tells them apart.
"""

from __future__ import annotations

import hashlib
import secrets
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .volume import InvalidInputError, Volume, check_claimed_size

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: Slice positions closer than this (mm) count as the same position.
POSITION_TOLERANCE_MM = 1e-3
#: A slice gap may differ from the median gap by ``max(absolute mm, relative x median)``.
GAP_TOLERANCE = {"absolute_mm": 0.05, "relative": 0.02}
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"


#: Patient and General Study module attributes repeated in RTSTRUCT/SEG outputs (the
#: standard requires an RT object to carry the same Patient and Study as its images).
#: Kept only in :class:`DicomReference`, never in metadata.
REFERENCE_PATIENT_STUDY_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)
#: ``Modality`` values of DICOM label objects (not image series).
LABEL_MODALITIES = ("RTSTRUCT", "SEG")


@dataclass(frozen=True, eq=False)
class DicomReference:
    """What an RTSTRUCT or DICOM-SEG written for a series must reference.

    Private to the volume (``Volume._dicom_ref``): its ``repr`` shows no UID or patient
    value, it is never put into metadata, and layers carry only :attr:`token`.

    Attributes
    ----------
    series_instance_uid, frame_of_reference_uid, sop_class_uid:
        Of the image series (``FrameOfReferenceUID`` may be ``""`` when absent).
    sop_instance_uids
        ``SOPInstanceUID`` of each slice, in the volume's ``z`` order.
    positions
        ``(z, 3)`` float64 ``ImagePositionPatient`` (LPS mm) of each slice, ``z`` order.
    orientation
        ``ImageOrientationPatient``: row then column direction cosines (6 floats).
    pixel_spacing
        ``PixelSpacing`` ``(between rows, between columns)`` in mm.
    rows, columns:
        Image size in pixels.
    slice_thickness
        ``SliceThickness`` in mm, ``None`` when absent.
    modality
        ``Modality`` of the images (e.g. ``"MR"``).
    patient_study
        Values of :data:`REFERENCE_PATIENT_STUDY_TAGS` present in the series (strings).
    token
        Random hex token under which layers find this reference in the current process.
    """

    series_instance_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    sop_instance_uids: tuple[str, ...]
    positions: np.ndarray
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    slice_thickness: float | None = None
    modality: str = ""
    patient_study: dict[str, str] = field(default_factory=dict)
    token: str = field(default_factory=lambda: secrets.token_hex(8))

    def __repr__(self) -> str:  # never show UIDs or patient values
        return f"DicomReference({len(self.sop_instance_uids)} slices, {self.rows}x{self.columns})"

    __str__ = __repr__

    @property
    def study_instance_uid(self) -> str:
        """``StudyInstanceUID`` of the series."""
        return self.patient_study.get("StudyInstanceUID", "")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(z, y, x)`` = (slices, rows, columns) of the series."""
        return (len(self.sop_instance_uids), int(self.rows), int(self.columns))

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal ``row cosine x column cosine`` (LPS)."""
        o = np.asarray(self.orientation, float)
        n = np.cross(o[:3], o[3:])
        return n / np.linalg.norm(n)


def _reference(uid: str, items: list, ipps: np.ndarray, iop: np.ndarray, ps: np.ndarray) -> DicomReference:
    """The :class:`DicomReference` of a series whose ``items`` ``(path, header)`` are in z order."""
    ds0 = items[0][1]
    ps_tags = {}
    for tag in REFERENCE_PATIENT_STUDY_TAGS:
        v = getattr(ds0, tag, None)
        if v is not None and str(v) != "":
            ps_tags[tag] = str(v)
    thick = getattr(ds0, "SliceThickness", None)
    return DicomReference(
        series_instance_uid=str(uid),
        frame_of_reference_uid=str(getattr(ds0, "FrameOfReferenceUID", "") or ""),
        sop_class_uid=str(getattr(ds0, "SOPClassUID", "") or ""),
        sop_instance_uids=tuple(str(getattr(ds, "SOPInstanceUID", "") or "") for _, ds in items),
        positions=np.asarray(ipps, dtype=np.float64).copy(),
        orientation=tuple(float(v) for v in iop),
        pixel_spacing=(float(ps[0]), float(ps[1])),
        rows=int(ds0.Rows),
        columns=int(ds0.Columns),
        slice_thickness=float(thick) if thick not in (None, "") else None,
        modality=str(getattr(ds0, "Modality", "") or ""),
        patient_study=ps_tags,
    )


def dicom_object_kind(path: str | Path) -> str | None:
    """``"rtstruct"`` or ``"seg"`` for a DICOM RT Structure Set / Segmentation file,
    ``"image"`` for any other DICOM file, ``None`` if not DICOM. Never raises."""
    if not looks_like_dicom(path):
        return None
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality", "SOPClassUID"])
    except Exception:  # noqa: BLE001 - a detector never raises
        return "image"
    mod = str(getattr(ds, "Modality", "") or "").upper()
    sop = str(getattr(ds, "SOPClassUID", "") or "")
    if mod == "RTSTRUCT" or sop == "1.2.840.10008.5.1.4.1.1.481.3":
        return "rtstruct"
    if mod == "SEG" or sop == "1.2.840.10008.5.1.4.1.1.66.4":
        return "seg"
    return "image"


def looks_like_dicom(path: str | Path) -> bool:
    """True if the file has the DICOM Part 10 preamble (``DICM`` at byte 128). Never raises."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_folder(path: str | Path, max_files: int = 200) -> bool:
    """True if ``path`` is a folder with at least one DICOM file among the first
    ``max_files`` files found (recursively, symlink loops cut:
    :func:`.dicom_files.iter_files`). Never raises."""
    from .dicom_files import iter_files

    try:
        p = Path(path)
        if not p.is_dir():
            return False
        for n, f in enumerate(iter_files(p)):
            if n >= max_files:
                break
            if looks_like_dicom(f):
                return True
    except OSError:
        pass
    return False


def series_uid_hash(uid: str) -> str:
    """First 16 hex digits of the sha256 of a ``SeriesInstanceUID`` (non-identifying key)."""
    return hashlib.sha256(str(uid).encode()).hexdigest()[:16]


def read_dicom_folder(path: str | Path, allow_uneven: bool = False, skip_unreadable: bool = False) -> list[Volume]:
    """Read every DICOM image series under ``path`` (recursively) into Volumes
    ``(z, y, x)``, float32: one per ``SeriesInstanceUID``, or one per echo (time point,
    ...) where a series holds several volumes (:func:`.dicom_files.split_volumes`;
    ``metadata["volume_label"]`` ``"e1"``, ``"e2"``, ... and ``"echo_time_ms"``), sorted
    by series description, UID hash, then label. A single ``.dcm`` file reads the series
    it belongs to from its folder. Single-frame slices and Enhanced multi-frame files
    are both read (module docstring).

    Parameters
    ----------
    path
        A folder (searched recursively; folder links followed once, symlink loops cut,
        one file reached by two names read once) or one DICOM file.
    allow_uneven
        Read series with uneven slice gaps (a missing slice, variable spacing) with a
        ``UserWarning``, interpolating them onto an even grid at the median spacing,
        instead of refusing them.
    skip_unreadable
        Leave out, with a ``UserWarning`` naming them, member files that cannot be read
        (truncated, damaged header or pixel data) instead of refusing the series. A gap
        they leave is then refused like any uneven gap unless ``allow_uneven``.

    Returns
    -------
    list[Volume]
        ``metadata["coordinate_system"] = "LPS"``; affine in LPS mm, source voxel order
        ``(column, row, slice)``. MONOCHROME1 images are inverted (module docstring).

    Raises
    ------
    InvalidInputError
        No DICOM image in the folder; an unreadable or truncated member (names the file)
        unless ``skip_unreadable``; a series mixing image sizes (names the folder and
        the sizes) or orientations; several slices at one position that no per-volume
        tag or folder tells apart; uneven slice gaps (names the positions and the
        expected spacing) unless ``allow_uneven``; missing
        ``PixelSpacing``/``ImagePositionPatient``; unreadable pixel data (e.g. a
        compressed transfer syntax without its decoder); a series larger than the
        reader cap (``Rows x Columns x slices``, checked before any pixel data is
        decoded).
    """
    from .dicom_files import read_members, split_volumes

    path = Path(path)
    only_uid = None
    if path.is_file():
        import pydicom

        try:
            only_uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
        except Exception as e:
            raise InvalidInputError(path, f"not a readable DICOM file: {e}") from e
        folder = path.parent
    else:
        folder = path
    if not folder.is_dir():
        raise InvalidInputError(folder, "not a folder")
    groups: dict[str, list] = defaultdict(list)
    for f, ds in read_members(folder, skip_unreadable=skip_unreadable):
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        if only_uid is not None and uid != only_uid:
            continue
        groups[uid].append((f, ds))
    if not groups:
        raise InvalidInputError(folder, "no DICOM image files found")
    vols = []
    for uid, items in groups.items():
        for label, info, members in split_volumes(items, _has_duplicate_positions(items)):
            vols.extend(_volumes_of(folder, uid, members, label, info, allow_uneven, skip_unreadable))
    vols.sort(
        key=lambda v: (
            str(v.metadata.get("series_description", "")),
            v.metadata["series_instance_uid_hash"],
            str(v.metadata.get("volume_label", "")),
        )
    )
    return vols


def _volumes_of(folder, uid, items, label, info, allow_uneven, skip) -> list[Volume]:
    """The volume(s) of one labelled group: split by folder where images still share a
    slice position (CHAOS-like layouts with no differing tag)."""
    from .dicom_files import split_by_folder

    parts = [(label, items)]
    if _has_duplicate_positions(items):
        parts = split_by_folder(label, items)
    return [_series_volume(folder, uid, its, allow_uneven, skip, lab, info) for lab, its in parts]


def _has_duplicate_positions(items) -> bool:
    try:
        pos = sorted(
            tuple(round(float(v), 3) for v in fr["ipp"]) for f, ds in items for fr in _frames(f, ds) if fr["ipp"]
        )
    except (TypeError, ValueError, InvalidInputError):
        return False
    return len(pos) != len(set(pos))


def _first(seq_owner, name: str):
    """Item 0 of the sequence ``name`` in ``seq_owner`` (a functional group), or None."""
    seq = getattr(seq_owner, name, None) if seq_owner is not None else None
    return seq[0] if seq else None


def _group_attr(per_frame, shared, seq: str, attr: str):
    """``attr`` of functional group ``seq``: per-frame first, then shared (PS3.3 C.7.6.16)."""
    for owner in (per_frame, shared):
        item = _first(owner, seq)
        if item is not None and attr in item:
            return getattr(item, attr)
    return None


def _frames(f: Path, ds) -> list[dict]:
    """One dict per image plane of a file: ``ipp``, ``iop``, ``ps`` (floats), ``slope``,
    ``inter``, ``path`` and ``frame`` (index into a multi-frame file, or None)."""
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if n <= 1 and "PerFrameFunctionalGroupsSequence" not in ds:
        return [
            {
                "path": f,
                "frame": None,
                "ds": ds,
                "ipp": getattr(ds, "ImagePositionPatient", None),
                "iop": getattr(ds, "ImageOrientationPatient", None),
                "ps": getattr(ds, "PixelSpacing", None),
                "slope": getattr(ds, "RescaleSlope", None),
                "inter": getattr(ds, "RescaleIntercept", None),
            }
        ]
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per = list(getattr(ds, "PerFrameFunctionalGroupsSequence", []) or [])
    if len(per) != n:
        raise InvalidInputError(f, f"multi-frame image with {n} frames has {len(per)} per-frame functional groups")
    out = []
    for i, pf in enumerate(per):
        out.append(
            {
                "path": f,
                "frame": i,
                "ipp": _group_attr(pf, shared, "PlanePositionSequence", "ImagePositionPatient"),
                "iop": _group_attr(pf, shared, "PlaneOrientationSequence", "ImageOrientationPatient"),
                "ps": _group_attr(pf, shared, "PixelMeasuresSequence", "PixelSpacing"),
                "slope": _group_attr(pf, shared, "PixelValueTransformationSequence", "RescaleSlope")
                or getattr(ds, "RescaleSlope", None),
                "inter": _group_attr(pf, shared, "PixelValueTransformationSequence", "RescaleIntercept")
                or getattr(ds, "RescaleIntercept", None),
            }
        )
    return out


def _check_gaps(folder: Path, label: str, pos: np.ndarray, allow_uneven: bool) -> float:
    """The even slice spacing (median gap, mm) of sorted positions ``pos``; uneven gaps
    raise :class:`InvalidInputError` (or warn with ``allow_uneven``)."""
    gaps = np.diff(pos)
    dz = float(np.median(gaps))
    tol = max(GAP_TOLERANCE["absolute_mm"], GAP_TOLERANCE["relative"] * dz)
    bad = np.flatnonzero(np.abs(gaps - dz) > tol)
    if bad.size:
        txt = "; ".join(
            f"{gaps[i]:.2f} mm between slices {i} and {i + 1} (positions {pos[i]:.2f} and {pos[i + 1]:.2f} mm"
            f"{', about ' + str(round(gaps[i] / dz) - 1) + ' missing' if gaps[i] > 1.5 * dz else ''})"
            for i in bad[:3]
        )
        more = f" and {bad.size - 3} more" if bad.size > 3 else ""
        msg = (
            f"{label} has uneven slice gaps along the slice normal: {txt}{more}; expected {dz:.2f} mm "
            "(the median gap). A missing file or variable spacing would misplace later slices"
        )
        if not allow_uneven:
            raise InvalidInputError(folder, msg + "; read it with allow_uneven=True to interpolate onto an even grid")
        warnings.warn(f"{folder}: {msg}; interpolated onto an even {dz:.2f} mm grid", UserWarning, stacklevel=4)
    return dz


def _even_grid(data: np.ndarray, pos: np.ndarray, dz: float) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of ``(n, y, x)`` slices at sorted positions ``pos`` onto
    ``pos[0] + k * dz``; returns the new slices and positions."""
    n = int(round((pos[-1] - pos[0]) / dz)) + 1
    new = pos[0] + dz * np.arange(n)
    i = np.clip(np.searchsorted(pos, new, side="right") - 1, 0, len(pos) - 2)
    w = np.clip((new - pos[i]) / (pos[i + 1] - pos[i]), 0.0, 1.0).astype(np.float32)[:, None, None]
    return (1 - w) * data[i] + w * data[i + 1], new


def _decode(fr: dict, pixels: dict):
    """The 2D stored pixel array of one frame (``pixels``: the one file kept decoded)."""
    import pydicom

    f = fr["path"]
    try:
        if f not in pixels:
            pixels.clear()
            pixels[f] = pydicom.dcmread(f).pixel_array  # one file in memory at a time
        arr = pixels[f] if fr["frame"] is None else pixels[f][fr["frame"]]
    except MemoryError as e:
        raise InvalidInputError(f, "not enough memory to decode the pixel data") from e
    except Exception as e:  # decoder missing, truncated pixel data, ...
        raise InvalidInputError(f, f"cannot decode pixel data: {e}") from e
    if arr.ndim != 2:
        raise InvalidInputError(f, f"expected a grey 2D image, got pixel array shape {arr.shape}")
    return arr


def _series_volume(
    folder: Path, uid: str, items: list, allow_uneven: bool = False, skip: bool = False, vlabel: str = "", info=None
) -> Volume:
    label = f"series {series_uid_hash(uid)}" + (f" volume {vlabel}" if vlabel else "")
    sizes = sorted({(int(ds.Rows), int(ds.Columns)) for _, ds in items})
    if len(sizes) > 1:
        txt = ", ".join(f"{c}x{r}" for r, c in sizes)
        raise InvalidInputError(folder, f"{label} mixes image sizes (columns x rows): {txt}")
    frames = [fr for f, ds in items for fr in _frames(f, ds)]
    try:
        iops = np.array([[float(v) for v in fr["iop"]] for fr in frames])
        ipps = np.array([[float(v) for v in fr["ipp"]] for fr in frames])
        pss = np.array([[float(v) for v in fr["ps"]] for fr in frames])
    except (AttributeError, TypeError, ValueError) as e:
        raise InvalidInputError(
            folder, f"{label}: missing or malformed ImageOrientationPatient, ImagePositionPatient or PixelSpacing ({e})"
        ) from e
    if np.abs(iops - iops[0]).max() > 1e-4:
        raise InvalidInputError(folder, f"{label} mixes slice orientations (ImageOrientationPatient)")
    if np.abs(pss - pss[0]).max() > 1e-4:
        raise InvalidInputError(folder, f"{label} mixes pixel spacings: {sorted({tuple(p) for p in pss.tolist()})}")
    row_cos, col_cos = iops[0, :3], iops[0, 3:]
    normal = np.cross(row_cos, col_cos)
    pos = ipps @ normal
    order = np.argsort(pos, kind="stable")
    pos, ipps = pos[order], ipps[order]
    frames = [frames[i] for i in order]
    if len(pos) > 1 and np.diff(pos).min() < POSITION_TOLERANCE_MM:
        raise InvalidInputError(
            folder,
            f"{label} has several images at the same slice position that neither EchoTime, EchoNumbers, "
            "TemporalPositionIdentifier, InversionTime, ImageType nor their folder tell apart (a repeated "
            "acquisition or duplicate files?)",
        )
    check_claimed_size(folder, (len(frames), *sizes[0]), 4)  # before any pixel data is decoded
    slices, pixels, kept, skipped = [], {}, [], []
    for i, fr in enumerate(frames):
        try:
            arr = _decode(fr, pixels)
        except InvalidInputError as e:
            if not skip:
                raise
            skipped.append(f"{Path(fr['path']).name} ({e.problem})")
            continue
        slope = float(fr["slope"] if fr["slope"] not in (None, "") else 1.0)
        inter = float(fr["inter"] if fr["inter"] not in (None, "") else 0.0)
        slices.append(arr.astype(np.float32) * np.float32(slope) + np.float32(inter))
        kept.append(i)
    if skipped:
        warnings.warn(f"{folder}: skipped unreadable pixel data: {'; '.join(skipped[:5])}", UserWarning, stacklevel=4)
        if not kept:
            raise InvalidInputError(folder, f"{label}: no readable image left")
        frames, pos, ipps = [frames[i] for i in kept], pos[kept], ipps[kept]
    uneven = False
    if len(pos) > 1:
        dz = _check_gaps(folder, label, pos, allow_uneven)
        gaps = np.diff(pos)
        uneven = bool(np.abs(gaps - dz).max() > max(GAP_TOLERANCE["absolute_mm"], GAP_TOLERANCE["relative"] * dz))
    else:
        ds0 = items[0][1]
        dz = float(getattr(ds0, "SpacingBetweenSlices", 0) or getattr(ds0, "SliceThickness", 0) or 1.0)
    dy, dx = float(pss[0, 0]), float(pss[0, 1])
    data = np.stack(slices)
    ds0 = items[0][1]
    inverted = str(getattr(ds0, "PhotometricInterpretation", "") or "").upper() == "MONOCHROME1"
    if inverted:  # low values are white: flip within the series' range, so high = bright (PS3.3 C.7.6.3.1.2)
        data = np.float32(data.max() + data.min()) - data
    if uneven:
        data, new_pos = _even_grid(data, pos, dz)
        # in-plane drift of the positions (sheared stacks) follows the first-to-last line
        step = (ipps[-1] - ipps[0]) / (pos[-1] - pos[0]) * dz
    elif len(pos) > 1:
        step = (ipps[-1] - ipps[0]) / (len(pos) - 1)
    else:
        step = normal * dz
    affine = np.eye(4)
    affine[:3, 0] = row_cos * dx
    affine[:3, 1] = col_cos * dy
    affine[:3, 2] = step
    affine[:3, 3] = ipps[0]
    for_uid = str(getattr(ds0, "FrameOfReferenceUID", "") or "")
    md = {
        "source_path": str(folder),
        "format": "dicom",
        "modality": str(getattr(ds0, "Modality", "") or ""),
        "series_description": str(getattr(ds0, "SeriesDescription", "") or ""),
        "series_instance_uid_hash": series_uid_hash(uid),
        "is_labels": False,
        "coordinate_system": "LPS",
        "spacing_source": "PixelSpacing and slice positions"
        + (" (uneven gaps interpolated onto an even grid)" if uneven else ""),
        **({"frame_of_reference_uid_hash": series_uid_hash(for_uid)} if for_uid else {}),
        **({"volume_label": vlabel} if vlabel else {}),
        **(info or {}),
        **({"photometric": "MONOCHROME1 (inverted)"} if inverted else {}),
    }
    # (0028,0301) YES: identifiers may be burned into the pixels (segment warns, export refuses)
    md["burned_in_annotation"] = str(getattr(ds0, "BurnedInAnnotation", "") or "").strip().upper() == "YES"
    # RTSTRUCT / DICOM-SEG references need one SOP instance per slice: a classic,
    # evenly spaced single-frame series (not an Enhanced multi-frame file, not slices
    # interpolated onto an even grid)
    ref = None
    if not uneven and all(fr["frame"] is None for fr in frames):
        ref = _reference(uid, [(fr["path"], fr["ds"]) for fr in frames], ipps, iops[0], pss[0])
    return Volume(data, (dz, dy, dx), affine, (2, 1, 0), md, _dicom_ref=ref)


__all__ = [
    "read_dicom_folder",
    "is_dicom_folder",
    "looks_like_dicom",
    "dicom_object_kind",
    "series_uid_hash",
    "DicomReference",
    "DICOM_SUFFIXES",
]
