"""Reading DICOM RT Structure Sets: contours -> a ``(z, y, x)`` label volume.

The contours are rasterised (pixel centres inside, contours of one ROI and slice
combined by XOR, so both keyholes and separate hole contours work) onto the grid of
``like`` or of the referenced series, found in the file's folder or its parent. ROI
names become the class names (label value = ROI order); where ROIs overlap the later
ROI wins. A structurally broken file (an ``ROIContourSequence`` item without
``ReferencedROINumber``, ``ContourData`` that is not (x, y, z) triplets, an ROI without
``ROINumber``) is an :class:`~.volume.InvalidInputError` naming the file and the item.
The structure set's ``FrameOfReferenceUID`` is kept as a hash
(``metadata["frame_of_reference_uid_hash"]``) for :func:`.frames.check_same_frame`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .volume import InvalidInputError, Volume


def find_referenced_series(path: str | Path, series_uid: str, max_files: int = 20000) -> Volume:
    """Read the image series ``series_uid`` that a DICOM label object at ``path``
    references, searching the file's folder and then its parent (recursively), as
    planning systems export them; at most ``max_files`` files are looked at.

    Raises
    ------
    InvalidInputError
        The series is not found there.
    """
    import pydicom

    from .dicom import looks_like_dicom, read_dicom_folder, series_uid_hash

    p = Path(path)
    seen = 0
    for folder in (p.parent, p.parent.parent):
        for f in folder.rglob("*"):
            if seen >= max_files:  # files looked at, so a structure set in a huge folder stays quick
                break
            if not f.is_file() or f == p:
                continue
            seen += 1
            if not looks_like_dicom(f):
                continue
            try:
                h = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "Modality"])
            except Exception:  # noqa: BLE001 - unreadable neighbours are skipped
                continue
            if str(getattr(h, "SeriesInstanceUID", "")) == series_uid and str(getattr(h, "Modality", "")) not in (
                "RTSTRUCT",
                "SEG",
            ):
                return read_dicom_folder(f)[0]
    raise InvalidInputError(
        p,
        f"the image series it references ({series_uid_hash(series_uid)}) is not in this folder or its parent; "
        "put the structure set beside its series",
    )


def _grid_lps(like: Volume) -> np.ndarray:
    """``like``'s voxel (source order) -> LPS mm matrix."""
    from . import nifti_affine

    if like.metadata.get("coordinate_system") == "LPS" or like.metadata.get("format") == "dicom":
        return like.affine
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ nifti_affine(like)


def rasterise_contours(contours_lps, like: Volume, tolerance: float = 0.25) -> np.ndarray:
    """Rasterise closed planar contours ``[(n, 3) LPS mm, ...]`` of one ROI onto the
    ``(z, y, x)`` grid of ``like``: pixel centres inside a contour are set; contours
    on the same slice are combined by XOR (holes, keyholes). Returns a bool mask.

    Raises
    ------
    ValueError
        A contour does not lie on one of ``like``'s slices (off-plane by more than
        ``tolerance`` slices, or outside the stack).
    """
    from skimage.draw import polygon

    inv = np.linalg.inv(_grid_lps(like))
    order = like.index_order
    out = np.zeros(like.shape, bool)
    for pts in contours_lps:
        src = (inv @ np.c_[pts, np.ones(len(pts))].T)[:3].T  # (n, 3) source-order voxel coords
        zyx = np.empty_like(src)
        for k in range(3):
            zyx[:, order[k]] = src[:, k]
        z = zyx[:, 0]
        zk = int(round(float(np.median(z))))
        if np.abs(z - zk).max() > tolerance or not 0 <= zk < like.shape[0]:
            raise ValueError(
                f"a contour lies off the image's slices (slice index {float(np.median(z)):.2f}); "
                "it was drawn on another grid"
            )
        rr, cc = polygon(zyx[:, 1], zyx[:, 2], shape=like.shape[1:])
        sl = np.zeros(like.shape[1:], bool)
        sl[rr, cc] = True
        out[zk] ^= sl
    return out


def read_rtstruct(path: str | Path, like: Volume | None = None) -> Volume:
    """Read an RT Structure Set as a ``(z, y, x)`` uint8/uint16 label :class:`Volume`.

    Parameters
    ----------
    path
        The RTSTRUCT file.
    like
        The grid to rasterise on (any image whose world frame is the structure set's);
        default the referenced series, found in the file's folder or its parent.

    Returns
    -------
    Labels on the grid (``like.with_data``: its geometry and DICOM reference), with
    ``metadata["class_names"]`` ``{value: ROI name}`` in ROI order (value = position
    1..K) and ``"format": "rtstruct"``.

    Raises
    ------
    InvalidInputError
        Not a readable RT Structure Set, the referenced series is not found, or a
        contour is not on the grid's slices.
    """
    import pydicom

    from .dicom import series_uid_hash

    p = Path(path)
    try:
        ds = pydicom.dcmread(p)
    except Exception as e:  # noqa: BLE001
        raise InvalidInputError(p, f"not a readable DICOM file: {e}") from e
    if str(getattr(ds, "Modality", "")) != "RTSTRUCT" or "StructureSetROISequence" not in ds:
        raise InvalidInputError(p, "not an RT Structure Set (Modality RTSTRUCT with StructureSetROISequence)")
    if like is None:
        try:
            uid = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
            uid = str(uid.SeriesInstanceUID)
        except (AttributeError, IndexError) as e:
            raise InvalidInputError(p, "names no referenced image series; open it with its image") from e
        like = find_referenced_series(p, uid)
    names, rois = _roi_names(p, ds), _roi_contours(p, ds)
    numbers = list(names)
    value_of = {num: i + 1 for i, num in enumerate(numbers)}
    labels = np.zeros(like.shape, np.uint8 if len(numbers) < 255 else np.uint16)
    for num, pts in rois:
        if num not in value_of:
            continue
        try:
            mask = rasterise_contours(pts, like)
        except ValueError as e:
            raise InvalidInputError(p, f"ROI {names[num]!r}: {e}") from e
        labels[mask] = value_of[num]
    for_uid = structure_set_frame_uid(ds)
    extra = {"frame_of_reference_uid_hash": series_uid_hash(for_uid)} if for_uid else {}
    return like.with_data(
        labels,
        is_labels=True,
        class_names={value_of[n]: names[n] for n in numbers},
        format="rtstruct",
        source_path=str(p),
        **extra,
    )


def structure_set_frame_uid(ds) -> str:
    """The ``FrameOfReferenceUID`` a structure set's contours are in
    (``ReferencedFrameOfReferenceSequence``, else the ROIs' ``ReferencedFrameOfReferenceUID``),
    ``""`` when it names none."""
    for item in getattr(ds, "ReferencedFrameOfReferenceSequence", None) or []:
        uid = str(getattr(item, "FrameOfReferenceUID", "") or "")
        if uid:
            return uid
    for roi in getattr(ds, "StructureSetROISequence", None) or []:
        uid = str(getattr(roi, "ReferencedFrameOfReferenceUID", "") or "")
        if uid:
            return uid
    return ""


def _roi_names(p: Path, ds) -> dict[int, str]:
    """``{ROINumber: ROIName}`` of ``StructureSetROISequence`` (errors name the file)."""
    names = {}
    for i, r in enumerate(ds.StructureSetROISequence, start=1):
        try:
            num = int(r.ROINumber)
        except (AttributeError, TypeError, ValueError) as e:
            raise InvalidInputError(p, f"StructureSetROISequence item {i} has no valid ROINumber ({e})") from e
        names[num] = str(getattr(r, "ROIName", "") or f"roi{num}")
    return names


def _roi_contours(p: Path, ds) -> list[tuple[int, list[np.ndarray]]]:
    """``(ReferencedROINumber, [(n, 3) LPS mm closed planar contours])`` of each
    ``ROIContourSequence`` item; a structural fault is an :class:`InvalidInputError`
    naming the file, the item and the problem."""
    out = []
    for i, rc in enumerate(getattr(ds, "ROIContourSequence", None) or [], start=1):
        try:
            num = int(rc.ReferencedROINumber)
        except (AttributeError, TypeError, ValueError):
            raise InvalidInputError(
                p, f"ROIContourSequence item {i} has no valid ReferencedROINumber (the ROI its contours belong to)"
            ) from None
        pts = []
        for j, c in enumerate(getattr(rc, "ContourSequence", None) or [], start=1):
            if str(getattr(c, "ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
                continue
            try:
                xyz = np.asarray(c.ContourData, float).ravel()
            except (AttributeError, TypeError, ValueError) as e:
                raise InvalidInputError(
                    p, f"ROI number {num}, contour {j}: missing or non-numeric ContourData ({e})"
                ) from None
            if xyz.size % 3 or not np.all(np.isfinite(xyz)):
                raise InvalidInputError(
                    p,
                    f"ROI number {num}, contour {j}: ContourData holds {xyz.size} values"
                    + (", not (x, y, z) triplets" if xyz.size % 3 else " with NaN or infinity"),
                )
            if xyz.size >= 9:
                pts.append(xyz.reshape(-1, 3))
        out.append((num, pts))
    return out


__all__ = ["read_rtstruct", "rasterise_contours", "find_referenced_series", "structure_set_frame_uid"]
