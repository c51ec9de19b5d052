"""DICOM series (a folder of single-frame image files) with pydicom.

Reading (:func:`read_dicom_folder`):

* every file under the folder (recursively) is tried; files that are not DICOM
  (no ``DICM`` preamble), have no pixel data or no image geometry are ignored
  (DICOMDIR, structured reports, ``README.txt``, ...);
* images are grouped by ``SeriesInstanceUID``; each series gives one :class:`Volume`;
* slices are sorted by their position along the slice normal,
  ``n = row_cosine x column_cosine`` (``ImageOrientationPatient``), position
  ``d = n . ImagePositionPatient``;
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
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .volume import InvalidInputError, Volume, check_claimed_size

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: Slice positions closer than this (mm) count as the same position.
POSITION_TOLERANCE_MM = 1e-3


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
    sop_instance_uids:
        ``SOPInstanceUID`` of each slice, in the volume's ``z`` order.
    positions:
        ``(z, 3)`` float64 ``ImagePositionPatient`` (LPS mm) of each slice, ``z`` order.
    orientation:
        ``ImageOrientationPatient``: row then column direction cosines (6 floats).
    pixel_spacing:
        ``PixelSpacing`` ``(between rows, between columns)`` in mm.
    rows, columns:
        Image size in pixels.
    slice_thickness:
        ``SliceThickness`` in mm, ``None`` when absent.
    modality:
        ``Modality`` of the images (e.g. ``"MR"``).
    patient_study:
        Values of :data:`REFERENCE_PATIENT_STUDY_TAGS` present in the series (strings).
    token:
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
    ``max_files`` files found (recursively). Never raises."""
    try:
        p = Path(path)
        if not p.is_dir():
            return False
        for n, f in enumerate(q for q in p.rglob("*") if q.is_file()):
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


def _headers(folder: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    for f in sorted(q for q in folder.rglob("*") if q.is_file()):
        if not looks_like_dicom(f):
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError):
            continue
        if "Rows" not in ds or "Columns" not in ds:  # not an image (DICOMDIR, SR, RT structure set, ...)
            continue
        if str(getattr(ds, "Modality", "") or "").upper() in LABEL_MODALITIES:  # a SEG beside its series
            continue
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise InvalidInputError(f, "multi-frame (enhanced) DICOM is not supported; export single-frame slices")
        yield f, ds


def read_dicom_folder(path: str | Path) -> list[Volume]:
    """Read every DICOM image series under ``path`` (recursively) into Volumes
    ``(z, y, x)``, float32, one per ``SeriesInstanceUID``, sorted by series description
    then UID hash. A single ``.dcm`` file reads the series it belongs to from its folder.

    Raises
    ------
    InvalidInputError
        No DICOM image in the folder; a series mixing image sizes (names the folder and
        the sizes) or orientations; several slices at one position (multi-echo or
        time series); missing ``PixelSpacing``/``ImagePositionPatient``; unreadable
        pixel data (e.g. a compressed transfer syntax without its decoder); a series
        larger than the reader cap (``Rows x Columns x files``, checked before any
        pixel data is decoded).
    """
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
    for f, ds in _headers(folder):
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        if only_uid is not None and uid != only_uid:
            continue
        groups[uid].append((f, ds))
    if not groups:
        raise InvalidInputError(folder, "no DICOM image files found")
    vols = [_series_volume(folder, uid, items) for uid, items in groups.items()]
    vols.sort(key=lambda v: (str(v.metadata.get("series_description", "")), v.metadata["series_instance_uid_hash"]))
    return vols


def _series_volume(folder: Path, uid: str, items: list) -> Volume:
    import pydicom

    label = f"series {series_uid_hash(uid)}"
    sizes = sorted({(int(ds.Rows), int(ds.Columns)) for _, ds in items})
    if len(sizes) > 1:
        txt = ", ".join(f"{c}x{r}" for r, c in sizes)
        raise InvalidInputError(folder, f"{label} mixes image sizes (columns x rows): {txt}")
    try:
        iops = np.array([[float(v) for v in ds.ImageOrientationPatient] for _, ds in items])
        ipps = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in items])
        pss = np.array([[float(v) for v in ds.PixelSpacing] for _, ds in items])
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
    items = [items[i] for i in order]
    if len(pos) > 1:
        gaps = np.diff(pos)
        if gaps.min() < POSITION_TOLERANCE_MM:
            raise InvalidInputError(
                folder,
                f"{label} has several images at the same slice position "
                "(multi-echo, multi-phase or time series?); split it into one series per volume",
            )
        dz = float(np.median(gaps))
        step = (ipps[-1] - ipps[0]) / (len(pos) - 1)
    else:
        ds0 = items[0][1]
        dz = float(getattr(ds0, "SpacingBetweenSlices", 0) or getattr(ds0, "SliceThickness", 0) or 1.0)
        step = normal * dz
    dy, dx = float(pss[0, 0]), float(pss[0, 1])
    check_claimed_size(folder, (len(items), *sizes[0]), 4)  # before any pixel data is decoded
    slices = []
    for f, _ in items:
        try:
            ds = pydicom.dcmread(f)
            arr = ds.pixel_array
        except MemoryError as e:
            raise InvalidInputError(f, "not enough memory to decode the pixel data") from e
        except Exception as e:  # decoder missing, truncated pixel data, ...
            raise InvalidInputError(f, f"cannot decode pixel data: {e}") from e
        if arr.ndim != 2:
            raise InvalidInputError(f, f"expected a grey 2D image, got pixel array shape {arr.shape}")
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        inter = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        slices.append(arr.astype(np.float32) * np.float32(slope) + np.float32(inter))
    data = np.stack(slices)
    affine = np.eye(4)
    affine[:3, 0] = row_cos * dx
    affine[:3, 1] = col_cos * dy
    affine[:3, 2] = step
    affine[:3, 3] = ipps[0]
    ds0 = items[0][1]
    md = {
        "source_path": str(folder),
        "format": "dicom",
        "modality": str(getattr(ds0, "Modality", "") or ""),
        "series_description": str(getattr(ds0, "SeriesDescription", "") or ""),
        "series_instance_uid_hash": series_uid_hash(uid),
        "is_labels": False,
        "coordinate_system": "LPS",
        "spacing_source": "PixelSpacing and slice positions",
    }
    ref = _reference(uid, items, ipps, iops[0], pss[0])
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
