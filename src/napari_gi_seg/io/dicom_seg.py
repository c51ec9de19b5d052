"""DICOM Segmentation objects (SEG) with highdicom: label volume -> file, and back.

Writing (:func:`write_dicom_seg`): a BINARY Segmentation (one segment per class,
``SegmentLabel`` = class name, ``RecommendedDisplayCIELabValue`` from the class colour,
a SNOMED CT property type for the organs this project knows, else "Organ") built by
:class:`highdicom.seg.Segmentation`. ``SegmentAlgorithmType`` is AUTOMATIC for model
output (SEMIAUTOMATIC once a clinician corrected it), with an
``AlgorithmIdentificationSequence`` naming the model (name, version, family
"Artificial Intelligence"). The source images highdicom needs (Patient/Study modules,
Frame of Reference, per-slice UIDs and positions) are rebuilt from the image's private
:class:`~.dicom.DicomReference`, so the series' files need not be at hand. As for
RTSTRUCT, the Patient module is copied from the series into the SEG only (the standard
requires it), never into exported training data.

Reading (:func:`read_dicom_seg`): highdicom's
:meth:`~highdicom.seg.Segmentation.get_pixels_by_source_instance` on the slices of the
referenced series (``like``, or the series found in the file's folder or its parent),
in the series' ``z`` order; ``SegmentLabel`` values become class names (value = segment
number). Where segments overlap, the higher segment number wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .rtstruct import base_dataset, check_labels, colour_rgb, find_referenced_series, save_dataset
from .volume import InvalidInputError, Volume

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"

#: SNOMED CT codes of the organs this project segments (SegmentedPropertyTypeCodeSequence).
_SCT_ORGANS = {
    "liver": ("10200004", "Liver"),
    "spleen": ("78961009", "Spleen"),
    "right_kidney": ("9846003", "Right kidney"),
    "left_kidney": ("18639004", "Left kidney"),
    "kidney": ("64033007", "Kidney"),
    "stomach": ("69695003", "Stomach"),
    "small_bowel": ("30315005", "Small intestine"),
    "small_intestine": ("30315005", "Small intestine"),
    "large_bowel": ("14742008", "Large intestine"),
    "large_intestine": ("14742008", "Large intestine"),
    "colon": ("71854001", "Colon"),
    "duodenum": ("38848004", "Duodenum"),
    "pancreas": ("15776009", "Pancreas"),
}


def _property_type(name: str):
    from pydicom.sr.coding import Code

    code = _SCT_ORGANS.get(name.strip().lower().replace(" ", "_").replace("-", "_"))
    return Code(code[0], "SCT", code[1]) if code else Code("91772007", "SCT", "Organ")


def _source_images(ref, study_uid: str) -> list:
    """Minimal image datasets (no pixel data) of the referenced series, from the reference.

    Every Type 2 Patient/Study attribute is present: the series' value, or empty where
    the series had it empty or absent (normal after anonymisation, e.g. every CHAOS
    series: PatientID, PatientBirthDate, AccessionNumber), as PS3.3 allows for Type 2.
    ``study_uid``: the SEG's StudyInstanceUID (the series', or one generated when it
    had none)."""
    from pydicom.dataset import Dataset

    from .rtstruct import _TYPE2_PATIENT_STUDY, format_ds

    n = len(ref.sop_instance_uids)
    thickness = float(np.linalg.norm(ref.positions[-1] - ref.positions[0])) / (n - 1) if n > 1 else 1.0
    out = []
    for k, uid in enumerate(ref.sop_instance_uids):
        ds = Dataset()
        for tag in _TYPE2_PATIENT_STUDY:
            setattr(ds, tag, "")
        for tag, v in ref.patient_study.items():
            setattr(ds, tag, v)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID, ds.SOPClassUID, ds.SOPInstanceUID = ref.series_instance_uid, ref.sop_class_uid, uid
        ds.Modality = ref.modality or "MR"
        ds.FrameOfReferenceUID = ref.frame_of_reference_uid
        ds.Rows, ds.Columns = ref.rows, ref.columns
        ds.PixelSpacing = [format_ds(v) for v in ref.pixel_spacing]
        ds.ImageOrientationPatient = [format_ds(v) for v in ref.orientation]
        ds.ImagePositionPatient = [format_ds(v) for v in ref.positions[k]]
        ds.SliceThickness = format_ds(ref.slice_thickness or thickness)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        out.append(ds)
    return out


def write_dicom_seg(
    path: str | Path,
    labels: np.ndarray,
    like: Volume,
    class_names: Mapping[int, str],
    colours: Mapping[int, object] | None = None,
    *,
    model_name: str = "napari-gi-seg",
    model_version: str = "",
    generation: str = "AUTOMATIC",
) -> Path:
    """Write ``labels`` as a DICOM Segmentation referencing ``like``'s DICOM series.

    Parameters
    ----------
    path
        Output file (conventionally ``*.seg.dcm``); written to a temp name and renamed.
    labels
        ``(z, y, x)`` integer labels on ``like``'s grid, values 0..K.
    like
        The image, read from a DICOM series (carries the private DICOM reference).
    class_names
        ``{label value: name}`` for values 1..K: one segment each (``SegmentNumber`` =
        value, ``SegmentLabel`` = name).
    colours
        ``{value: "#rrggbb" or RGB}`` display colours (optional).
    model_name, model_version:
        ``AlgorithmIdentificationSequence`` name and version (from the model spec).
    generation
        ``SegmentAlgorithmType``: ``"AUTOMATIC"`` or ``"SEMIAUTOMATIC"``.

    Returns
    -------
    The path written.

    Raises
    ------
    ValueError
        ``like`` is not a DICOM image, shape mismatch, class values not 1..K, a
        label value without a class name, or a series without a Frame of Reference UID.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ref, arr, classes = check_labels(path, labels, like, class_names, "a SEG")
    values = [k for k, _ in classes]
    if values != list(range(1, len(values) + 1)):
        raise ValueError(f"{path}: class values must be 1..K for a DICOM-SEG, got {values}")
    extra = sorted(set(np.unique(arr).tolist()) - {0, *values})
    if extra:
        raise ValueError(f"{path}: label values {extra} have no class name")
    algo = hd.AlgorithmIdentificationSequence(
        name=model_name[:64], family=codes.cid7162.ArtificialIntelligence, version=str(model_version or "1")[:64]
    )
    colours = dict(colours or {})
    descs = []
    for value, name in classes:
        d = hd.seg.SegmentDescription(
            segment_number=value,
            segment_label=name[:64],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=_property_type(name),
            algorithm_type=generation,
            algorithm_identification=algo,
            display_color=hd.color.CIELabColor.from_rgb(*colour_rgb(colours[value])) if value in colours else None,
        )
        descs.append(d)
    base = base_dataset(ref, SEG_SOP_CLASS_UID, "SEG", "GI-Seg segmentation", model_name)
    seg = hd.seg.Segmentation(
        source_images=_source_images(ref, str(base.StudyInstanceUID)),
        pixel_array=arr.astype(np.uint8 if len(values) < 256 else np.uint16),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs,
        series_instance_uid=base.SeriesInstanceUID,
        series_number=int(base.SeriesNumber),
        sop_instance_uid=base.SOPInstanceUID,
        instance_number=1,
        manufacturer=base.Manufacturer,
        manufacturer_model_name=base.ManufacturerModelName,
        software_versions=str(base.SoftwareVersions),
        device_serial_number="0",
        series_description=base.SeriesDescription,
        content_label="GISEG",
        content_description="organ segmentation"[:64],
        omit_empty_frames=bool(arr.any()),  # highdicom needs at least one frame
    )
    for tag in ("PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        if tag not in seg:
            setattr(seg, tag, getattr(base, tag))
    return save_dataset(seg, path)


def read_dicom_seg(path: str | Path, like: Volume | None = None) -> Volume:
    """Read a DICOM Segmentation as a ``(z, y, x)`` label :class:`Volume` on the grid of
    its referenced series.

    Parameters
    ----------
    path
        The SEG file.
    like
        The referenced image (read from the DICOM series the SEG was made on);
        default: that series, found in the file's folder or its parent.

    Returns
    -------
    Labels (value = segment number, later segments win where they overlap),
    ``metadata["class_names"]`` ``{number: SegmentLabel}``, ``"format": "dicom-seg"``.

    Raises
    ------
    InvalidInputError
        Not a readable SEG; the referenced series is not found; ``like`` is not the
        series the SEG references (a :class:`~.frames.FrameOfReferenceError` when its
        ``FrameOfReferenceUID`` differs).
    """
    import highdicom as hd

    from .dicom import series_uid_hash
    from .frames import FrameOfReferenceError, frame_uid_mismatch

    p = Path(path)
    try:
        seg = hd.seg.segread(p)
    except Exception as e:  # noqa: BLE001
        raise InvalidInputError(p, f"not a readable DICOM Segmentation: {e}") from e
    if like is None:
        try:
            uid = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
        except (AttributeError, IndexError) as e:
            raise InvalidInputError(p, "names no referenced image series; open it with its image") from e
        like = find_referenced_series(p, uid)
    ref = getattr(like, "_dicom_ref", None)
    if ref is None:
        raise InvalidInputError(p, "a DICOM-SEG opens only on the DICOM series it was made on")
    for_uid = str(getattr(seg, "FrameOfReferenceUID", "") or "")
    for_hash = series_uid_hash(for_uid) if for_uid else ""
    why = frame_uid_mismatch(like.metadata.get("frame_of_reference_uid_hash", ""), for_hash)
    if why is not None:
        raise FrameOfReferenceError(p, f"labels refused for this scan: {why}")
    numbers = [int(n) for n in seg.segment_numbers]
    try:
        px = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=list(ref.sop_instance_uids),
            segment_numbers=numbers,
            combine_segments=False,
            assert_missing_frames_are_empty=True,
        )  # (z, y, x, segments)
    except (ValueError, KeyError, RuntimeError) as e:
        raise InvalidInputError(p, f"does not match the referenced series' slices: {e}") from e
    labels = np.zeros(like.shape, np.uint8 if max(numbers, default=0) < 256 else np.uint16)
    for i, n in enumerate(numbers):
        labels[px[..., i] > 0] = n
    names = {n: str(seg.get_segment_description(n).segment_label) for n in numbers}
    extra = {"frame_of_reference_uid_hash": for_hash} if for_hash else {}
    return like.with_data(labels, is_labels=True, class_names=names, format="dicom-seg", source_path=str(p), **extra)


__all__ = ["write_dicom_seg", "read_dicom_seg", "SEG_SOP_CLASS_UID"]
