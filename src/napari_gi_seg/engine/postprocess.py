"""Post-processing of a predicted label volume: the one step shared by the widget,
the CLI, ``evaluate`` and training validation.

:func:`postprocess_labels` is that step. :func:`napari_gi_seg.engine.inference.segment_volume`
(used by the CLI's ``segment``, ``evaluate``, the trainer's validation and the
headless demo) applies it after a whole-stack run; the Segment widget's worker
applies it to the same whole-stack output and writes the removed voxels through
napari's undo history, so the widget shows the CLI's labels voxel for voxel.
"""

from __future__ import annotations

import numpy as np

from ..models.spec import ModelSpec

__all__ = ["postprocess_labels", "keep_largest_components"]


def keep_largest_components(labels: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """For each class with ``single_component=True`` keep only its largest 3D
    connected component (26-connectivity) in a ``(z, y, x)`` label volume; the
    removed voxels become background.

    Following nnU-Net's post-processing (Isensee et al., Nature Methods 2021), which
    applies it per class when it improves validation Dice.

    Parameters
    ----------
    labels
        ``(z, y, x)`` integer label volume (class indices of ``spec``).
    spec
        The model spec; its classes' ``single_component`` flags choose the classes.

    Returns
    -------
    A new ``(z, y, x)`` array of ``labels``' dtype.
    """
    from scipy import ndimage

    out = labels.copy()
    for c in spec.classes:
        if not c.single_component:
            continue
        mask = labels == c.index
        if not mask.any():
            continue
        comp, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            out[(comp != int(sizes.argmax())) & mask] = 0
    return out


def postprocess_labels(labels: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The project's one post-processing step for a whole-stack prediction.

    Today: :func:`keep_largest_components` for the spec's single-component organs
    (liver, kidneys, spleen; never bowel). It only ever sets voxels to background.

    Parameters
    ----------
    labels
        ``(z, y, x)`` uint8 labels of the whole stack, as the model predicted them.
    spec
        The model spec that produced them.

    Returns
    -------
    A new ``(z, y, x)`` uint8 array.
    """
    return keep_largest_components(np.asarray(labels), spec).astype(np.uint8, copy=False)
