"""What a model was trained on, and whether an input looks like it.

:func:`training_frame` records, when a model is trained, the range of voxel spacing,
field of view and intensity profile of its training volumes in the model's frame
(:class:`~napari_gi_seg.models.spec.ModelFrame`). :func:`input_warnings` compares an
input with those ranges and returns human-readable warnings (a warning, never a
refusal): the CLI prints them, the engine logs them, the Segment widget shows them.

Tolerances (an input inside the training range widened by these is quiet):
spacing and field of view :data:`RELATIVE_TOLERANCE` (25 %) of the range's ends;
intensity profile :data:`INTENSITY_TOLERANCE` (0.1 on the [0, 1] normalised scale).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import numpy as np

from ..io.orientation import frame_map
from ..io.volume import Volume
from ..models.spec import ModelFrame, ModelSpec

log = logging.getLogger(__name__)

#: Relative widening of the spacing and field-of-view ranges before an input is flagged.
RELATIVE_TOLERANCE = 0.25
#: Absolute widening of the intensity-profile ranges (normalised [0, 1] scale).
INTENSITY_TOLERANCE = 0.1
#: Percentiles (0..100) of the intensity profile.
PROFILE_PERCENTILES = (25, 50, 75)
#: Normalised intensity above which a voxel counts as body (not air).
BODY_THRESHOLD = 0.05


def intensity_profile(data: np.ndarray, percentiles: Sequence[float] = (0.5, 99.5)) -> dict[str, float]:
    """The contrast fingerprint of an MR volume, independent of its intensity unit.

    The ``(z, y, x)`` volume is clipped to its ``percentiles`` (low, high) and scaled to
    [0, 1] (the models' percentile normalisation); the profile is the
    :data:`PROFILE_PERCENTILES` of the body voxels (normalised value >
    :data:`BODY_THRESHOLD`): ``{"p25": .., "p50": .., "p75": ..}``. On CHAOS T2-SPIR
    (fat suppressed) the median is 0.14-0.28; on a T1-like scan, with bright fat, 0.43.
    """
    x = np.asarray(data, dtype=np.float32)
    lo, hi = np.percentile(x, percentiles)
    if hi <= lo:
        hi = lo + 1.0
    n = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    body = n[n > BODY_THRESHOLD]
    if body.size == 0:
        body = n.ravel()
    q = np.percentile(body, PROFILE_PERCENTILES)
    return {f"p{p}": float(v) for p, v in zip(PROFILE_PERCENTILES, q)}


def volume_geometry(volume: Volume, frame: ModelFrame) -> dict[str, dict[str, float]]:
    """Spacing ``{"z", "y", "x"}`` and in-plane field of view ``{"y", "x"}`` (mm) of
    ``volume`` in the model's frame (after reorientation)."""
    fm = frame_map(volume, frame.axcodes)
    sp, shp = fm.model_spacing_mm, fm.model_shape
    return {
        "spacing_mm": {"z": sp[0], "y": sp[1], "x": sp[2]},
        "fov_mm": {"y": sp[1] * shp[1], "x": sp[2] * shp[2]},
    }


def training_frame(images: Sequence[Volume], spec: ModelSpec, keep_frame: bool = False) -> ModelFrame:
    """The :class:`ModelFrame` of a model trained on ``images``.

    Parameters
    ----------
    images
        The training cases' images.
    spec
        The model being trained: its current frame and ``input_size``.
    keep_frame
        ``True`` when fine-tuning: the orientation and target spacing stay the base
        model's (the weights expect them) and the ranges become the union of the base's
        and these images'. ``False`` (a new model): the orientation is the most common
        one among the images (:func:`napari_gi_seg.io.orientation.array_axcodes`), the
        target spacing the median in-plane field of view divided by ``input_size``.

    Returns
    -------
    ModelFrame
        With ``spacing_range_mm``, ``fov_range_mm`` and ``intensity_range`` measured
        on ``images`` (unchanged when ``images`` is empty).
    """
    from ..io.orientation import array_axcodes

    frame = spec.frame
    if not images:
        return frame
    if not keep_frame:
        codes = Counter(tuple(reversed(array_axcodes(im, frame.axcodes)[0])) for im in images).most_common(1)[0][0]
        frame = ModelFrame(codes, frame.spacing_mm)
        geo = [volume_geometry(im, frame) for im in images]
        fy = float(np.median([g["fov_mm"]["y"] for g in geo])) / spec.input_size[0]
        fx = float(np.median([g["fov_mm"]["x"] for g in geo])) / spec.input_size[1]
        frame = ModelFrame(codes, (fy, fx))
    geo = [volume_geometry(im, frame) for im in images]
    prof = [intensity_profile(im.data) for im in images]

    def rng(values, old):
        lo, hi = float(min(values)), float(max(values))
        if keep_frame and old is not None:
            lo, hi = min(lo, old[0]), max(hi, old[1])
        return [round(lo, 4), round(hi, 4)]

    def old(name, key):
        d = getattr(spec.frame, name) if keep_frame else None
        return None if d is None else d.get(key)

    return ModelFrame(
        frame.axcodes,
        frame.spacing_mm,
        {k: rng([g["spacing_mm"][k] for g in geo], old("spacing_range_mm", k)) for k in ("z", "y", "x")},
        {k: rng([g["fov_mm"][k] for g in geo], old("fov_range_mm", k)) for k in ("y", "x")},
        {k: rng([p[k] for p in prof], old("intensity_range", k)) for k in prof[0]},
    )


def _outside(value: float, lo: float, hi: float, rel: float | None, abs_: float | None) -> bool:
    if rel is not None:
        return value < lo * (1 - rel) or value > hi * (1 + rel)
    return value < lo - abs_ or value > hi + abs_


def _by_how_much(value: float, lo: float, hi: float) -> str:
    return f"{value / hi:.2g}x the largest" if value > hi else f"{value / lo:.2g}x the smallest"


def input_warnings(volume: Volume | np.ndarray, spec: ModelSpec) -> list[str]:
    """Human-readable warnings when ``volume`` falls outside what ``spec`` was trained on.

    Parameters
    ----------
    volume
        The input :class:`Volume` (``(z, y, x)``), or a bare array (then only the
        intensity profile can be checked).
    spec
        The model; its :attr:`ModelSpec.frame` ranges (``None`` ranges are not checked:
        format-1 specs and specs built in code have none).

    Returns
    -------
    list[str]
        One sentence per difference, naming what differs, the input's value, the
        training range and by how much, e.g. ``"in-plane pixel spacing (x) 3 mm is
        outside the training range 1.25-1.25 mm (2.4x the largest)"``. Empty when the
        input looks like the training data.
    """
    frame = spec.frame
    out: list[str] = []
    if isinstance(volume, Volume):
        geo = volume_geometry(volume, frame)
        names = {"z": "slice spacing", "y": "in-plane pixel spacing (y)", "x": "in-plane pixel spacing (x)"}
        for k, (lo, hi) in (frame.spacing_range_mm or {}).items():
            v = geo["spacing_mm"].get(k)
            if v is not None and _outside(v, lo, hi, RELATIVE_TOLERANCE, None):
                out.append(
                    f"{names.get(k, k)} {v:.3g} mm is outside the training range {lo:.3g}-{hi:.3g} mm "
                    f"({_by_how_much(v, lo, hi)})"
                )
        for k, (lo, hi) in (frame.fov_range_mm or {}).items():
            v = geo["fov_mm"].get(k)
            if v is not None and _outside(v, lo, hi, RELATIVE_TOLERANCE, None):
                out.append(
                    f"field of view ({k}) {v:.0f} mm is outside the training range {lo:.0f}-{hi:.0f} mm "
                    f"({_by_how_much(v, lo, hi)})"
                )
        data = volume.data
    else:
        data = np.asarray(volume)
    if frame.intensity_range:
        prof = intensity_profile(data)
        bad = [
            (k, prof[k], lo, hi)
            for k, (lo, hi) in frame.intensity_range.items()
            if k in prof and _outside(prof[k], lo, hi, None, INTENSITY_TOLERANCE)
        ]
        if bad:
            txt = "; ".join(
                f"{k} {v:.2f} vs {lo:.2f}-{hi:.2f} ({v - (hi if v > hi else lo):+.2f})" for k, v, lo, hi in bad
            )
            out.append(
                "intensity profile differs from the training scans (percentiles of the normalised body "
                f"intensity: {txt}): another MR contrast or sequence?"
            )
    return out


def log_input_warnings(volume: Volume | np.ndarray, spec: ModelSpec) -> list[str]:
    """:func:`input_warnings`, each also logged (``logging.WARNING``); returns them."""
    ws = input_warnings(volume, spec)
    name = volume.name if isinstance(volume, Volume) else "input"
    for w in ws:
        log.warning("%s: %s (model %s)", name, w, spec.key)
    return ws
