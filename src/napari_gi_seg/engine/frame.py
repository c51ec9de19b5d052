"""The model's frame: the one road every scan takes into the network and back.

Inference (:func:`napari_gi_seg.engine.inference.iter_segment`) and training
(:func:`case_to_model_frame`) both

1. reorient the ``(z, y, x)`` input into the model's orientation
   (:func:`napari_gi_seg.io.orientation.frame_map`, ``nibabel.orientations``; an exact
   permutation/flip of the voxels),
2. resample each slice in-plane to the model's target spacing, keeping the aspect
   ratio, and pad it (or, for training batches, crop it) to the network's size
   (:func:`napari_gi_seg.engine.preprocess.inplane_grid`);

inference then brings the class probabilities back through the exact inverse of the
pad, the resampling and the reorientation onto the input's own grid.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..io.orientation import FrameGuessWarning, FrameMap, frame_map
from ..io.volume import Volume
from ..models.spec import ModelSpec
from .preprocess import InplaneGrid, inplane_grid, normalise_intensity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FramePlan:
    """How one input reaches the network: ``frame`` (reorientation, :class:`FrameMap`)
    and ``grid`` (in-plane resampling and padding of a model-frame slice)."""

    frame: FrameMap
    grid: InplaneGrid


def plan_frame(volume: Volume | np.ndarray, spec: ModelSpec, fixed: bool = False, warn: bool = True) -> FramePlan:
    """The :class:`FramePlan` of ``volume`` for ``spec``'s frame.

    Parameters
    ----------
    volume
        A :class:`Volume` (its affine, axis order and ``metadata["coordinate_system"]``
        decide the reorientation; its ``spacing_mm`` the resampling), or a bare
        ``(z, y, x)`` array, which is taken as stored in the model's frame and squashed
        to ``spec.input_size`` (the behaviour before model frames; no spacing known).
    spec
        The model (:attr:`ModelSpec.frame`: axis codes and in-plane target spacing).
    fixed
        ``True`` for training batches: exactly ``spec.input_size`` (centre crop when
        larger); ``False`` for inference: padded, never cropped.
    warn
        Emit a :class:`~napari_gi_seg.io.orientation.FrameGuessWarning` (and a log
        line) when the input's orientation is assumed rather than read from the file.
    """
    frame_spec = spec.frame
    if not isinstance(volume, Volume):
        data = np.asarray(volume)
        if data.ndim != 3:
            raise ValueError(f"expected a 3D (z, y, x) volume, got shape {data.shape}")
        ident = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
        codes = tuple(reversed(frame_spec.axcodes))
        fm = FrameMap(ident, data.shape, (1.0, 1.0, 1.0), codes, codes, None)
        return FramePlan(fm, inplane_grid(data.shape[1:], None, None, spec.input_size))
    fm = frame_map(volume, frame_spec.axcodes)
    if fm.guess and warn:
        log.warning("%s: %s", volume.name, fm.guess)
        # one message per format (Python shows a repeated warning once per place):
        # a dataset of UW-Madison case-days warns once, the log names every volume
        warnings.warn(fm.guess, FrameGuessWarning, stacklevel=3)
    grid = inplane_grid(fm.model_shape[1:], fm.model_spacing_mm[1:], frame_spec.spacing_mm, spec.input_size, fixed)
    return FramePlan(fm, grid)


#: Default cap (bytes) on what the engine allocates for one input in the model's frame
#: (:func:`engine_bytes`): 4 GiB. ``$NAPARI_GI_SEG_MAX_ENGINE_BYTES`` overrides it.
DEFAULT_MAX_ENGINE_BYTES = 4 * 1024**3
#: Float32 feature maps per pixel of the network canvas counted for the network's own
#: activations (a U-Net decoder holds ~16-32 channels at full resolution).
ACTIVATION_CHANNELS = 32


def max_engine_bytes() -> int:
    """The engine cap (bytes): ``$NAPARI_GI_SEG_MAX_ENGINE_BYTES`` (a positive integer;
    a malformed value is ignored) or :data:`DEFAULT_MAX_ENGINE_BYTES`."""
    import os

    try:
        v = int(float(os.environ.get("NAPARI_GI_SEG_MAX_ENGINE_BYTES", "")))
    except ValueError:
        return DEFAULT_MAX_ENGINE_BYTES
    return v if v > 0 else DEFAULT_MAX_ENGINE_BYTES


def engine_bytes(plan: FramePlan, spec: ModelSpec, batch_size: int, return_probs: bool = False) -> int:
    """Bytes the engine will allocate for one input with ``plan`` (an estimate from the
    grid alone, before anything is allocated):

    ``batch x H x W x 4 x (in_channels + out_channels + ACTIVATION_CHANNELS)`` for a
    batch on the ``(H, W)`` network canvas (the slice resampled to the model's spacing and
    padded), plus ``out_channels x Z x Y x X x 4`` when the input's slice axis is not the
    model's (the whole probability volume is kept), plus ``out_channels x z x y x x x 2``
    (float16) with ``return_probs``.
    """
    H, W = (int(v) for v in plan.grid.padded)
    bs = max(1, int(batch_size))
    n = bs * H * W * 4 * (spec.in_channels + spec.out_channels + ACTIVATION_CHANNELS)
    vox = int(np.prod(plan.frame.model_shape, dtype=np.int64))
    if not plan.frame.slice_axis_kept:
        n += spec.out_channels * vox * 4
    if return_probs:
        n += spec.out_channels * vox * 2
    return int(n)


def check_engine_size(
    volume: Volume | np.ndarray, plan: FramePlan, spec: ModelSpec, batch_size: int, return_probs: bool = False
) -> int:
    """Refuse, before anything is allocated, an input whose grid in the model's frame
    would need more than :func:`max_engine_bytes` (:func:`engine_bytes`): e.g. a NIfTI
    whose header says 40 mm pixels (each slice resampled to ~8192 x 8192 at the model's
    1.25 mm) or a spacing in the wrong unit. Returns the estimate (bytes).

    Raises
    ------
    InvalidInputError
        Naming the input file, the resampled grid, the spacing and the cap.
    """
    from ..io.volume import InvalidInputError

    need = engine_bytes(plan, spec, batch_size, return_probs)
    cap = max_engine_bytes()
    if need > cap:
        src = volume.metadata.get("source_path", "input") if isinstance(volume, Volume) else "input"
        sp = plan.frame.model_spacing_mm
        raise InvalidInputError(
            src,
            f"in the model's frame each slice would be resampled from {plan.grid.shape[0]} x {plan.grid.shape[1]} "
            f"pixels of {sp[1]:g} x {sp[2]:g} mm to {plan.grid.resampled[0]} x {plan.grid.resampled[1]} pixels of "
            f"{spec.frame.spacing_mm[0]:g} x {spec.frame.spacing_mm[1]:g} mm, about {need / 1024**3:.1f} GiB for the "
            f"engine, above the {cap / 1024**3:.1f} GiB limit. Check the voxel spacing in the file (its units?); "
            "set NAPARI_GI_SEG_MAX_ENGINE_BYTES to raise the limit",
        )
    return need


def case_to_model_frame(image: Volume, target: np.ndarray, spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring a training case into the model's frame, exactly as inference sees a scan.

    Parameters
    ----------
    image
        The case's raw image :class:`Volume` ``(z, y, x)``.
    target
        ``(z, y, x)`` integer labels (with the ignore label) or ``(K, z, y, x)``
        multi-label masks on the image's grid.
    spec
        The model being trained (its frame, normalisation and ``input_size``).

    Returns
    -------
    image, target:
        ``(Z, H, W)`` float32 normalised image and ``(Z, H, W)`` (or
        ``(K, Z, H, W)``) labels in the model's frame, ``(H, W) = spec.input_size``:
        normalised per volume on the input grid, reoriented, resampled to the target
        spacing (bilinear / nearest) and centre-padded (background 0) or cropped.

    Raises
    ------
    ValueError
        When ``target``'s last three axes differ from the image's shape.
    """
    target = np.asarray(target)
    if tuple(target.shape[-3:]) != image.shape:
        raise ValueError(f"target shape {target.shape} does not end with the image's (z, y, x) {image.shape}")
    plan = plan_frame(image, spec, fixed=True)
    norm = normalise_intensity(image.data, spec.normalisation, spec.percentiles)
    fill = float(norm.min()) if norm.size else 0.0
    im = np.ascontiguousarray(plan.frame.to_model(norm))
    im_t = plan.grid.to_network(torch.from_numpy(im)[:, None], fill)[:, 0]
    tm = torch.from_numpy(np.ascontiguousarray(plan.frame.to_model(target)))
    if tm.ndim == 3:
        t_out = plan.grid.labels_to_network(tm)
    else:
        t_out = torch.stack([plan.grid.labels_to_network(tk) for tk in tm])
    return im_t, t_out
