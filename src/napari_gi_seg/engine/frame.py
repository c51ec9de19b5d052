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

from ..errors import InputError
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
            raise InputError(f"expected a 3D (z, y, x) volume, got shape {data.shape}")
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
        raise InputError(f"target shape {target.shape} does not end with the image's (z, y, x) {image.shape}")
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
