"""DICOM RT Structure Sets (RTSTRUCT): label volume -> contours -> file, and back.

Writing (:func:`write_rtstruct`) needs the image's :class:`~.dicom.DicomReference`
(kept privately by the DICOM reader in ``Volume._dicom_ref``):

* one ROI per class (``ROIName`` = the class name, ``ROIDisplayColor`` = its colour,
  ``RTROIInterpretedType`` ``ORGAN``), numbered like the label values, so a structure
  set read back gives the same label values;
* per slice and class, one ``CLOSED_PLANAR`` contour per connected island
  (8-connected). Contours are marching-squares iso-lines at 0.5
  (:func:`skimage.measure.find_contours`) of the island with its holes filled: they
  pass half-way between inside and outside pixel centres, so a rasteriser that tests
  pixel centres (as planning systems and plastimatch do) gets the mask back exactly.
  Holes are joined to their island's outline by a zero-width cut ("keyhole"), so the
  result is right whether a reader ORs or XORs the contours of a slice;
* points are converted to patient coordinates (LPS mm) with the slice's
  ``ImagePositionPatient``, ``ImageOrientationPatient`` and ``PixelSpacing``
  (PS3.3 C.7.6.2.1.1); every Decimal String is written with at most 16 characters
  (:func:`format_ds`, PS3.5 6.2);
* every contour references its slice's ``SOPInstanceUID``; the structure set references
  the Frame of Reference, Study and Series (``ReferencedFrameOfReferenceSequence``).

Patient data: the standard requires a structure set to carry the same Patient and
Study modules as the images it outlines (a planning system files it under that
patient). These values are therefore copied from the source series into the RTSTRUCT,
the one object that goes back to the planning system, and nowhere else.

Reading (:func:`read_rtstruct`, in :mod:`.rtstruct_read`): the contours are
rasterised (pixel centres inside, contours of one ROI and slice combined by XOR, so
both keyholes and separate hole contours work) onto the grid of ``like`` or of the
referenced series, found in the file's folder or its parent. ROI names become the
class names (label value = ROI order); where ROIs overlap the later ROI wins.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .._atomic import atomic_path
from .rtstruct_read import find_referenced_series, rasterise_contours, read_rtstruct, structure_set_frame_uid
from .volume import Volume

RTSTRUCT_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.481.3"
#: Study Component Management SOP Class, conventionally referenced by RTReferencedStudySequence.
_STUDY_SOP_CLASS_UID = "1.2.840.10008.3.1.2.3.1"
_FALLBACK_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c")
#: Type 2 Patient/Study attributes: present (maybe empty) in every RT object.
_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


# ----------------------------------------------------------------- small helpers
def format_ds(value: float) -> str:
    """A Decimal String (DS) of at most 16 characters for ``value``: fixed point with
    3 decimals (1 µm) when that fits, else pydicom's 16-character formatting.

    Raises ``ValueError`` for NaN or infinity.
    """
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"cannot write {v} as a DICOM Decimal String")
    s = f"{v:.3f}".rstrip("0").rstrip(".")
    if s in ("-0", ""):
        s = "0"
    if len(s) > 16:
        from pydicom.valuerep import format_number_as_ds

        s = format_number_as_ds(v)
    return s


def colour_rgb(colour) -> list[int]:
    """``"#rrggbb"`` or an RGB triple (0-255 ints or 0-1 floats) -> ``[r, g, b]`` ints."""
    if isinstance(colour, str):
        c = colour.lstrip("#")
        if len(c) >= 6:
            return [int(c[i : i + 2], 16) for i in (0, 2, 4)]
        raise ValueError(f"colour {colour!r} is not #rrggbb")
    vals = [float(v) for v in list(colour)[:3]]
    if max(vals) <= 1.0:
        vals = [v * 255 for v in vals]
    return [int(round(min(255, max(0, v)))) for v in vals]


def save_dataset(ds, path: str | Path) -> Path:
    """Write a pydicom dataset as a DICOM Part 10 file, temp-then-rename.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The dataset, with its ``file_meta``.
    path : str or Path
        The output file; written through :func:`napari_gi_seg._atomic.atomic_path`.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    OSError
        From the file system, naming ``path`` (nothing is left at ``path``).
    """
    import pydicom

    path = Path(path)
    with atomic_path(path) as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return path


def require_reference(like: Volume, path) -> object:
    """``like._dicom_ref`` or a ``ValueError`` naming ``path`` (the image is not a DICOM series)."""
    ref = getattr(like, "_dicom_ref", None)
    if ref is None:
        raise ValueError(
            f"{path}: RTSTRUCT and DICOM-SEG need an image read from a DICOM series "
            "(its UIDs and slice positions); save NIfTI for other images"
        )
    if tuple(ref.shape) != tuple(like.shape):
        raise ValueError(f"{path}: the image {like.shape} no longer matches its DICOM series {ref.shape}")
    return ref


def check_labels(
    path, labels: np.ndarray, like: Volume, class_names: Mapping[int, str], kind: str
) -> tuple[object, np.ndarray, list[tuple[int, str]]]:
    """The checks shared by the RTSTRUCT and DICOM-SEG writers, before anything is built.

    Parameters
    ----------
    path : str or Path
        The output file (named in the errors).
    labels : np.ndarray
        ``(z, y, x)`` integer labels on ``like``'s grid.
    like : Volume
        The image, read from a DICOM series.
    class_names : Mapping[int, str]
        ``{label value: name}``; value 0 (background) is dropped.
    kind : str
        The object written, as the error says it (``"an RTSTRUCT"``, ``"a SEG"``).

    Returns
    -------
    ref : DicomReference
        ``like``'s DICOM reference (see :func:`require_reference`).
    arr : np.ndarray
        ``labels`` as an array (not copied).
    classes : list of (int, str)
        ``(value, name)`` of the classes other than 0, by value.

    Raises
    ------
    ValueError
        ``like`` is not a DICOM image, the shapes differ, the labels are not
        non-negative integers, or the series has no Frame of Reference UID.
    """
    ref = require_reference(like, path)
    arr = np.asarray(labels)
    if arr.shape != like.shape:
        raise ValueError(f"{path}: labels shape {arr.shape} differs from the image's (z, y, x) {like.shape}")
    if arr.dtype.kind not in "biu" or (arr.size and arr.min() < 0):
        raise ValueError(f"{path}: labels must be non-negative integers, got {arr.dtype}")
    if not ref.frame_of_reference_uid:
        raise ValueError(f"{path}: the image series has no FrameOfReferenceUID; {kind} cannot reference it")
    classes = sorted((int(k), str(v)) for k, v in class_names.items() if int(k) != 0)
    return ref, arr, classes


# ----------------------------------------------------------------- mask -> contours
def _simplify(poly: np.ndarray) -> np.ndarray:
    """Drop repeated points and points in the middle of straight runs (same direction)."""
    keep = np.ones(len(poly), bool)
    d = np.diff(np.vstack([poly, poly[:1]]), axis=0)
    keep &= np.abs(d).sum(1) > 1e-9  # drop duplicates of the next point
    poly = poly[keep]
    if len(poly) < 4:
        return poly
    prev = poly - np.roll(poly, 1, axis=0)
    nxt = np.roll(poly, -1, axis=0) - poly
    cross = prev[:, 0] * nxt[:, 1] - prev[:, 1] * nxt[:, 0]
    dot = (prev * nxt).sum(1)
    return poly[~((np.abs(cross) < 1e-9) & (dot > 0))]


def _closed(contours: list[np.ndarray]) -> np.ndarray:
    """The longest contour without its repeated closing point."""
    c = max(contours, key=len)
    return c[:-1] if len(c) > 1 and np.allclose(c[0], c[-1]) else c


def mask_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed planar contours of a 2D boolean mask ``(y, x)``.

    One polygon per 8-connected island, ``(n, 2)`` float ``(row, column)`` pixel
    coordinates (pixel centres at integers), not repeating the first point. Each
    polygon runs half-way between inside and outside pixel centres (marching squares
    at 0.5, :func:`skimage.measure.find_contours`); the island's holes (4-connected
    background regions) are spliced in through zero-width cuts (keyholes), which leave
    the even-odd and the non-zero winding interior unchanged. Testing pixel centres
    against the polygons gives ``mask`` back exactly.
    """
    from scipy import ndimage
    from skimage import measure

    mask = np.asarray(mask, bool)
    islands, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    out = []
    for i, sl in enumerate(ndimage.find_objects(islands), start=1):
        r0, c0 = sl[0].start - 1, sl[1].start - 1
        comp = np.pad(islands[sl] == i, 1)
        filled = ndimage.binary_fill_holes(comp)
        poly = _closed(measure.find_contours(filled.astype(np.uint8), 0.5, fully_connected="high"))
        holes, nh = ndimage.label(filled & ~comp)
        for h in range(1, nh + 1):
            hole = _closed(measure.find_contours((holes == h).astype(np.uint8), 0.5, fully_connected="low"))
            d = ((poly[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
            a, b = np.unravel_index(int(np.argmin(d)), d.shape)
            hole_loop = np.vstack([hole[b:], hole[: b + 1]])
            poly = np.vstack([poly[: a + 1], hole_loop, poly[a:]])
        out.append(_simplify(poly) + [r0, c0])
    return out


def contour_to_patient(rc: np.ndarray, position, orientation, pixel_spacing) -> np.ndarray:
    """``(n, 2)`` (row, column) pixel coordinates of one slice -> ``(n, 3)`` LPS mm:
    ``P = IPP + column * dx * row_cosine + row * dy * column_cosine`` with
    ``dy, dx = PixelSpacing`` (PS3.3 C.7.6.2.1.1)."""
    o = np.asarray(orientation, float)
    dy, dx = float(pixel_spacing[0]), float(pixel_spacing[1])
    return np.asarray(position, float)[None, :] + rc[:, 1:2] * dx * o[None, :3] + rc[:, 0:1] * dy * o[None, 3:]


# ----------------------------------------------------------------- writer
def _seq(items):
    from pydicom.sequence import Sequence

    return Sequence(list(items))


def _item(**kw):
    from pydicom.dataset import Dataset

    ds = Dataset()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def base_dataset(ref, sop_class_uid: str, modality: str, series_description: str, software: str):
    """A dataset with the file meta, SOP Common, Patient, General Study, series and
    General Equipment attributes shared by RTSTRUCT and SEG outputs of a series."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from .. import __version__

    now = _dt.datetime.now()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class_uid, meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for tag in _TYPE2_PATIENT_STUDY:
        setattr(ds, tag, ref.patient_study.get(tag, ""))
    ds.StudyInstanceUID = ref.study_instance_uid or generate_uid()
    if ref.patient_study.get("StudyDescription"):
        ds.StudyDescription = ref.patient_study["StudyDescription"]
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 901 if modality == "RTSTRUCT" else 902
    ds.SeriesDate, ds.SeriesTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.SeriesDescription = series_description[:64]
    ds.Manufacturer = "napari-gi-seg"
    ds.ManufacturerModelName = (software or "napari-gi-seg")[:64]
    ds.SoftwareVersions = __version__
    ds.InstanceNumber = 1
    return ds


def write_rtstruct(
    path: str | Path,
    labels: np.ndarray,
    like: Volume,
    class_names: Mapping[int, str],
    colours: Mapping[int, object] | None = None,
    *,
    generation: str = "AUTOMATIC",
    description: str = "",
    label: str = "GI-Seg",
) -> Path:
    """Write ``labels`` as an RT Structure Set referencing ``like``'s DICOM series.

    Parameters
    ----------
    path
        Output file (conventionally ``*.dcm``); written to a temp name and renamed.
    labels
        ``(z, y, x)`` integer labels on ``like``'s grid; value ``v`` is class ``v``.
    like
        The image, read from a DICOM series (it carries the private
        :class:`~.dicom.DicomReference`).
    class_names
        ``{label value: name}``; one ROI per value >= 1 (0/background skipped), even
        when the class is absent (an ROI without contours), so values survive a round trip.
    colours
        ``{label value: "#rrggbb" or RGB}`` for ``ROIDisplayColor``; default a fixed palette.
    generation
        ``ROIGenerationAlgorithm``: ``"AUTOMATIC"`` (model output) or
        ``"SEMIAUTOMATIC"`` (corrected by a clinician).
    description
        ``ROIGenerationDescription``, e.g. the model key (at most 64 characters).
    label
        ``StructureSetLabel`` (at most 16 characters).

    Returns
    -------
    The path written.

    Raises
    ------
    ValueError
        ``like`` is not a DICOM image, its series has no Frame of Reference UID, the
        shape differs, or the labels are not non-negative integers.
    """
    ref, arr, classes = check_labels(path, labels, like, class_names, "an RTSTRUCT")
    colours = dict(colours or {})
    ds = base_dataset(ref, RTSTRUCT_SOP_CLASS_UID, "RTSTRUCT", "GI-Seg structures", description)
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = ref.frame_of_reference_uid  # Frame of Reference module (same frame as the images)
    ds.PositionReferenceIndicator = ""
    ds.StructureSetLabel = label[:16]
    ds.StructureSetName = label[:64]
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime

    def image_ref(k):
        return _item(ReferencedSOPClassUID=ref.sop_class_uid, ReferencedSOPInstanceUID=ref.sop_instance_uids[k])

    series = _item(
        SeriesInstanceUID=ref.series_instance_uid, ContourImageSequence=_seq(map(image_ref, range(arr.shape[0])))
    )
    study = _item(
        ReferencedSOPClassUID=_STUDY_SOP_CLASS_UID,
        ReferencedSOPInstanceUID=ds.StudyInstanceUID,
        RTReferencedSeriesSequence=_seq([series]),
    )
    ds.ReferencedFrameOfReferenceSequence = _seq(
        [_item(FrameOfReferenceUID=ref.frame_of_reference_uid, RTReferencedStudySequence=_seq([study]))]
    )
    rois, contours, observations = [], [], []
    for n, (value, name) in enumerate(classes, start=1):
        roi = _item(ROINumber=value, ReferencedFrameOfReferenceUID=ref.frame_of_reference_uid, ROIName=name[:64])
        roi.ROIGenerationAlgorithm = generation
        if description:
            roi.ROIGenerationDescription = description[:64]
        rois.append(roi)
        colour = colours.get(value) or _FALLBACK_COLOURS[(value - 1) % len(_FALLBACK_COLOURS)]
        roi_contour = _item(ROIDisplayColor=colour_rgb(colour), ReferencedROINumber=value)
        items = []
        for k in np.flatnonzero((arr == value).reshape(arr.shape[0], -1).any(1)):
            for poly in mask_contours(arr[k] == value):
                pts = contour_to_patient(poly, ref.positions[k], ref.orientation, ref.pixel_spacing)
                c = _item(ContourImageSequence=_seq([image_ref(int(k))]), ContourGeometricType="CLOSED_PLANAR")
                c.NumberOfContourPoints = len(pts)
                c.ContourNumber = len(items) + 1
                c.ContourData = [format_ds(v) for v in pts.ravel()]
                items.append(c)
        if items:
            roi_contour.ContourSequence = _seq(items)
        contours.append(roi_contour)
        obs = _item(ObservationNumber=n, ReferencedROINumber=value, ROIObservationLabel=name[:16])
        obs.RTROIInterpretedType, obs.ROIInterpreter = "ORGAN", ""
        observations.append(obs)
    ds.StructureSetROISequence = _seq(rois)
    ds.ROIContourSequence = _seq(contours)
    ds.RTROIObservationsSequence = _seq(observations)
    ds.ApprovalStatus = "UNAPPROVED"
    return save_dataset(ds, path)


__all__ = [
    "write_rtstruct",
    "read_rtstruct",
    "mask_contours",
    "rasterise_contours",
    "format_ds",
    "find_referenced_series",
    "structure_set_frame_uid",
    "RTSTRUCT_SOP_CLASS_UID",
]
