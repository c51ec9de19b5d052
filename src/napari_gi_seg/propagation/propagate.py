"""Yesterday's contours onto today's scan: :func:`propagate`.

The previous scan is registered to today's (:func:`.registration.register`), and the
previous labels are carried through the transform onto today's grid, per structure
(:func:`.warp.warp_labels`). The labels must belong to the previous scan
(:func:`check_labels_belong`); the result says how good the transform looks (final
metric, folded fraction) and how long it took.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io.volume import Volume
from ..progress import CancelCallback, ProgressCallback, emit
from .registration import RegistrationSettings, register

__all__ = [
    "propagate",
    "PropagationResult",
    "LabelsMismatchError",
    "check_labels_belong",
    "read_previous_labels",
    "default_settings",
    "same_frame_of_reference",
]

#: Largest difference (mm) between two grids' voxel -> world matrices that still counts as one grid.
GRID_TOLERANCE_MM = 0.05


class LabelsMismatchError(InputError):
    """The labels do not belong to the previous scan (another grid or frame of reference)."""


@dataclass
class PropagationResult:
    """What :func:`propagate` returns.

    Attributes
    ----------
    labels
        Label :class:`~napari_gi_seg.io.volume.Volume` on today's grid (today's geometry
        and DICOM reference), ``(z, y, x)``, the previous labels' dtype; ``metadata``
        ``class_names`` as the previous labels had them.
    metric
        Final Mattes mutual information of the last stage (negative; lower is better),
        ``None`` without registration.
    folded_fraction
        Fraction of today's body voxels where the transform's Jacobian determinant is <= 0.
    seconds, cpu_seconds
        Wall time of the whole call (s; ``stage_seconds`` per stage) and the CPU time of
        this process and its child processes (the elastix backend runs in one), s, all
        threads; on a busy machine wall time overstates the work.
    stages
        Stages that ran (``()`` when cancelled before any).
    cancelled
        ``True`` when ``cancel()`` stopped the call (the labels then follow the stages
        that finished).
    transform
        The SimpleITK transform (today's LPS mm -> previous scan's LPS mm).
    stage_labels
        With ``stage_labels=True``: ``{"none": ..., "rigid": ..., "affine": ...}`` the
        ``(z, y, x)`` labels each earlier stage alone gives ("none": scanner coordinates).
    """

    labels: Volume
    metric: float | None
    folded_fraction: float
    seconds: float
    cpu_seconds: float = 0.0
    stages: tuple[str, ...] = ()
    stage_seconds: dict[str, float] = field(default_factory=dict)
    cancelled: bool = False
    transform: Any = None
    stage_labels: dict[str, np.ndarray] = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready figures (no transform)."""
        return {
            "metric": self.metric,
            "folded_fraction": self.folded_fraction,
            "seconds": round(self.seconds, 2),
            "cpu_seconds": round(self.cpu_seconds, 2),
            "stages": list(self.stages),
            "stage_seconds": {k: round(v, 2) for k, v in self.stage_seconds.items()},
            "cancelled": self.cancelled,
        }


def _frame_of_reference_of(path: str | Path) -> str | None:
    """The ``FrameOfReferenceUID`` an RTSTRUCT or SEG file says its contours are in, else ``None``."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - not DICOM: no frame of reference to compare
        return None
    if str(getattr(ds, "Modality", "")) == "RTSTRUCT":
        seq = getattr(ds, "ReferencedFrameOfReferenceSequence", None) or []
        uids = {str(getattr(it, "FrameOfReferenceUID", "") or "") for it in seq} - {""}
        return next(iter(uids)) if len(uids) == 1 else None
    return str(getattr(ds, "FrameOfReferenceUID", "") or "") or None


def check_labels_belong(prev_volume: Volume, labels, labels_path: str | Path | None = None) -> None:
    """Refuse labels that were not drawn on ``prev_volume``.

    Checked: the ``(z, y, x)`` shape; for a label :class:`Volume` with an anatomical
    frame, its voxel -> world matrix (within :data:`GRID_TOLERANCE_MM`); for a DICOM
    RTSTRUCT/SEG file, its Frame of Reference UID against the previous series' (when both
    have one).

    Raises
    ------
    LabelsMismatchError
        Naming ``labels_path`` (or "the labels") and what differs.
    """
    from ..io.orientation import world_frame
    from ._sitk import world_zyx_affine

    who = str(labels_path) if labels_path is not None else "the labels"
    arr = labels.data if isinstance(labels, Volume) else np.asarray(labels)
    if tuple(arr.shape) != tuple(prev_volume.shape):
        raise LabelsMismatchError(
            f"{who}: labels (z, y, x) {tuple(arr.shape)} are not on the previous scan's grid {prev_volume.shape}; "
            "give the labels drawn on the previous scan"
        )
    if (
        isinstance(labels, Volume)
        and world_frame(labels) in ("RAS", "LPS")
        and world_frame(prev_volume) in ("RAS", "LPS")
    ):
        d = np.abs(world_zyx_affine(labels) - world_zyx_affine(prev_volume))
        extent = np.r_[np.asarray(prev_volume.shape, float) - 1, 1.0]
        err = float((d * extent[None, :]).sum(axis=1).max())  # worst corner displacement (mm)
        if err > GRID_TOLERANCE_MM:
            raise LabelsMismatchError(
                f"{who}: the labels' grid lies up to {err:.1f} mm from the previous scan's; "
                "they were not drawn on that scan"
            )
    ref = getattr(prev_volume, "_dicom_ref", None)
    if labels_path is not None and ref is not None and ref.frame_of_reference_uid:
        for_uid = _frame_of_reference_of(labels_path) if Path(labels_path).is_file() else None
        if for_uid and for_uid != ref.frame_of_reference_uid:
            raise LabelsMismatchError(
                f"{who}: the structures are in another Frame of Reference than the previous scan "
                "(FrameOfReferenceUID differs); give the structure set drawn on that scan"
            )


def read_previous_labels(path: str | Path, prev_volume: Volume) -> Volume:
    """Read labels (NIfTI, TIFF, RTSTRUCT, DICOM-SEG: :func:`napari_gi_seg.io.read_labels`)
    drawn on ``prev_volume`` and check they belong to it (:func:`check_labels_belong`).

    Raises
    ------
    LabelsMismatchError
        Another grid or Frame of Reference.
    InvalidInputError
        An unreadable label file (from the readers).
    """
    from ..io import _kind, read_labels

    p = Path(path)
    kind = _kind(p) if p.exists() else None
    if kind in ("rtstruct", "seg"):
        check_labels_belong(prev_volume, np.zeros(prev_volume.shape, np.uint8), p)  # frame first, then rasterise
        labels = read_labels(p, like=prev_volume)
    else:
        labels = read_labels(p)
    check_labels_belong(prev_volume, labels, p)
    return labels


def same_frame_of_reference(a: Volume, b: Volume) -> bool:
    """``True`` when both scans are DICOM series with one ``FrameOfReferenceUID`` (two
    sequences of one session: the scanner coordinates already align them)."""
    ra, rb = getattr(a, "_dicom_ref", None), getattr(b, "_dicom_ref", None)
    fa = getattr(ra, "frame_of_reference_uid", "") if ra is not None else ""
    fb = getattr(rb, "frame_of_reference_uid", "") if rb is not None else ""
    return bool(fa) and fa == fb


def default_settings(prev_volume: Volume, today_volume: Volume, **kw) -> RegistrationSettings:
    """The registration :func:`propagate` runs when given no settings.

    Two scans of one Frame of Reference (:func:`same_frame_of_reference`, e.g. T2 and T1
    of one session, two contrasts and two breath-holds) run rigid -> affine -> B-spline
    with **itk-elastix** when it is installed (``backend="elastix"``), and are not
    registered otherwise: the labels are carried by scanner coordinates (``stages=()``),
    because SimpleITK's chain made those pairs worse. Any other pair (another day,
    another patient) runs SimpleITK's rigid -> affine -> B-spline. Measured on CHAOS
    T2-SPIR -> T1 in-phase of one session, all 16 patients (docs/benchmarks.md,
    "Propagation"): scanner coordinates mean Dice 0.660; SimpleITK rigid 0.563, affine
    0.533 (mutual information sent the rigid stage off in 4 of 16 patients, e.g. 0.916 ->
    0.160); elastix's chain 0.795 (above the floor in 13 of 16
    patients, 21-60 s per pair on one thread). ``kw`` go to :class:`RegistrationSettings`
    (e.g. ``threads``; ``backend="simpleitk"`` keeps the old rule).
    """
    if same_frame_of_reference(prev_volume, today_volume):
        from .elastix import elastix_available

        backend = kw.setdefault("backend", "elastix" if elastix_available() else "simpleitk")
        if backend == "simpleitk":
            kw.setdefault("stages", ())
    return RegistrationSettings(**kw)


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the elastix backend's process)."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


def _body_mask(img):
    """Today's body: Otsu foreground of the (smoothed) image, holes closed (uint8 SimpleITK)."""
    import SimpleITK as sitk

    m = sitk.OtsuThreshold(sitk.SmoothingRecursiveGaussian(img, 2.0), 0, 1)
    return sitk.BinaryMorphologicalClosing(m, [3, 3, 1])


def _roi_mask(labels_img, margin_mm: float):
    """The previous structures dilated by ``margin_mm`` (uint8 SimpleITK, their grid)."""
    import SimpleITK as sitk

    fg = sitk.Cast(labels_img > 0, sitk.sitkUInt8)
    d = sitk.SignedMaurerDistanceMap(fg, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return sitk.Cast(d <= margin_mm, sitk.sitkUInt8)


def propagate(
    prev_volume: Volume,
    prev_labels: Volume | np.ndarray,
    today_volume: Volume,
    *,
    settings: RegistrationSettings | None = None,
    interpolation: str = "distance",
    roi_margin_mm: float | None = 30.0,
    class_names: Mapping[int, str] | None = None,
    stage_labels: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> PropagationResult:
    """Carry the previous scan's labels onto today's scan by image registration.

    Parameters
    ----------
    prev_volume, today_volume
        Image :class:`~napari_gi_seg.io.volume.Volume` s, ``(z, y, x)``, any spacing,
        orientation and contrast (mutual information), in one world frame (both DICOM,
        both NIfTI, or mixed: each reader's frame is converted to LPS).
    prev_labels
        ``(z, y, x)`` integer labels drawn on ``prev_volume`` (a Volume or an array of its
        shape; 0 background).
    settings
        :class:`~napari_gi_seg.propagation.registration.RegistrationSettings`: stages,
        working spacing, seed, threads; ``None``: :func:`default_settings` (scanner
        coordinates only for two scans of one Frame of Reference, else rigid -> affine
        -> B-spline).
    interpolation
        ``"distance"`` (signed-distance maps, default) or ``"nearest"``.
    roi_margin_mm
        The metric looks at the previous structures plus this margin (mm) and today's
        body; ``None``: the whole body.
    class_names
        ``{value: name}`` for the result (default: the labels' ``metadata["class_names"]``).
    stage_labels
        Also warp the labels with the transform of each earlier stage, and with none
        (benchmarks compare them from one run; see :attr:`PropagationResult.stage_labels`).
    progress, cancel
        The package's progress protocol (:mod:`napari_gi_seg.progress`): stage
        ``"propagate"``, one unit per registration stage plus one for the labels.

    Returns
    -------
    PropagationResult
        Labels on today's grid and the transform's figures.

    Raises
    ------
    LabelsMismatchError
        ``prev_labels`` are not on ``prev_volume``'s grid.
    ValueError
        Labels that are not non-negative integers.
    """
    import SimpleITK as sitk

    from ._sitk import sitk_threads, to_sitk, world_zyx_affine
    from .warp import folded_fraction, warp_labels

    t0, c0 = time.perf_counter(), _cpu_seconds()
    check_labels_belong(prev_volume, prev_labels)
    lab = np.asarray(prev_labels.data if isinstance(prev_labels, Volume) else prev_labels)
    if lab.dtype.kind not in "biu" or (lab.size and lab.min() < 0):
        raise InputError(f"labels must be non-negative integers, got {lab.dtype}")
    lab = lab.astype(np.uint16 if lab.max(initial=0) > 255 else np.uint8)
    names = class_names
    if names is None and isinstance(prev_labels, Volume):
        names = prev_labels.metadata.get("class_names")
    s = settings or default_settings(prev_volume, today_volume)
    total = len(s.stages) + 1
    with sitk_threads(s.threads):
        prev_aff, today_aff = world_zyx_affine(prev_volume), world_zyx_affine(today_volume)
        moving = to_sitk(prev_volume.data, prev_aff, np.float32)
        fixed = to_sitk(today_volume.data, today_aff, np.float32)
        labels_img = to_sitk(lab, prev_aff)
        fmask = _body_mask(fixed)
        mmask = _roi_mask(labels_img, roi_margin_mm) if roi_margin_mm is not None and lab.any() else None

        def on_stage(name, k, n):
            emit(progress, "propagate", k, total, f"registering: {name}")

        reg = register(fixed, moving, s, fmask, mmask, on_stage=on_stage, cancel=cancel)
        cancelled = bool(cancel is not None and cancel())
        emit(progress, "propagate", len(reg.stages), total, "carrying the labels")
        out = warp_labels(labels_img, fixed, reg.transform, interpolation)
        extra = {}
        if stage_labels:
            extra["none"] = warp_labels(labels_img, fixed, sitk.Euler3DTransform(), interpolation)
            for x in reg.stages[:-1]:
                if x.name in reg.stage_transforms:  # elastix runs its stages in one call: the last only
                    extra[x.name] = warp_labels(labels_img, fixed, reg.stage_transforms[x.name], interpolation)
        work_mask = sitk.Resample(fmask, reg.fixed, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        folded = (
            folded_fraction(reg.transform, reg.fixed, work_mask) if "bspline" in [x.name for x in reg.stages] else 0.0
        )
    md: dict[str, Any] = {"is_labels": True}
    if names:
        md["class_names"] = {int(k): str(v) for k, v in dict(names).items()}
    result = PropagationResult(
        labels=today_volume.with_data(out, **md),
        metric=reg.metric,
        folded_fraction=folded,
        seconds=time.perf_counter() - t0,
        cpu_seconds=_cpu_seconds() - c0,
        stages=tuple(x.name for x in reg.stages),
        stage_seconds={x.name: x.seconds for x in reg.stages},
        cancelled=cancelled,
        transform=reg.transform,
        stage_labels=extra,
    )
    emit(progress, "done", total, total, "propagated", **result.summary())
    return result
