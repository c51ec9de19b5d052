"""Post-processing of a predicted label volume: the one step shared by the widget,
the CLI, ``evaluate`` and training validation.

:func:`postprocess_labels` is that step. :func:`napari_gi_seg.engine.inference.segment_volume`
(used by the CLI's ``segment``, ``evaluate``, the trainer's validation and the
headless demo) applies it after a whole-stack run; the Segment widget's worker
applies it to the same whole-stack output and writes the changed voxels through
napari's undo history, so the widget shows the CLI's labels voxel for voxel.
"""

from __future__ import annotations

import numpy as np

from ..models.spec import ModelSpec

__all__ = ["postprocess_labels", "keep_largest_components", "reassign_fragments", "FRAGMENT_SHARE"]

#: A fragment (a connected component of a single-component organ other than its
#: largest) joins the neighbouring organ whose largest component covers more than
#: this share of the fragment's outer boundary. 0.2 from the CHAOS MR cross-validation
#: in docs/benchmarks.md ("Fragments reassigned"): 0.1 and 0.2 gave the same Dice,
#: 0.35 and 0.5 less, 0 (any contact) cost T2-SPIR 0.004.
FRAGMENT_SHARE = 0.2

_S26 = np.ones((3, 3, 3), bool)


def _largest(mask: np.ndarray) -> tuple[np.ndarray, int, int]:
    """``(components, n, index of the largest)`` of a boolean ``(z, y, x)`` mask (26-connectivity)."""
    from scipy import ndimage

    comp, n = ndimage.label(mask, structure=_S26)
    if n < 2:
        return comp, n, 1
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    return comp, n, int(sizes.argmax())


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
    out = labels.copy()
    for c in spec.classes:
        if not c.single_component:
            continue
        mask = labels == c.index
        if not mask.any():
            continue
        comp, n, big = _largest(mask)
        if n > 1:
            out[(comp != big) & mask] = 0
    return out


def reassign_fragments(labels: np.ndarray, spec: ModelSpec, share: float = FRAGMENT_SHARE) -> np.ndarray:
    """Keep each single-component organ's largest 3D component, and give each of its
    other components (fragments) to the neighbouring organ that surrounds it, or to
    background.

    A fragment of organ A whose outer boundary (the voxels 26-adjacent to it, not in
    it) lies more than ``share`` in the largest component of another single-component
    organ B becomes B (the B with most boundary voxels); any other fragment becomes
    background, as in :func:`keep_largest_components`. This mends the typical error of
    a 2.5D network on a contrast it knows less well: part of an organ painted as its
    neighbour (on CHAOS T1: the lower spleen as liver, a kidney's pole as the other
    kidney), which plain largest-component removal would delete. Classes that are not
    single-component (bowel) are neither changed nor given fragments. Every organ stays
    one 3D component: a fragment given to B touches B's largest component. One
    connected-component labelling per organ, as :func:`keep_largest_components`.

    Parameters
    ----------
    labels
        ``(z, y, x)`` integer label volume (class indices of ``spec``).
    spec
        The model spec; its classes' ``single_component`` flags choose the classes.
    share
        Fraction of a fragment's boundary in ``[0, 1]`` (default :data:`FRAGMENT_SHARE`).

    Returns
    -------
    A new ``(z, y, x)`` array of ``labels``' dtype.
    """
    from scipy import ndimage

    single = [c.index for c in spec.classes if c.single_component]
    out = np.array(labels, copy=True)
    frags = []  # (organ, padded bounding box, fragment mask inside it)
    for a in single:
        mask = labels == a
        if not mask.any():
            continue
        comp, n, big = _largest(mask)
        del mask
        for j, box in enumerate(ndimage.find_objects(comp) if n > 1 else [], start=1):
            if j == big or box is None:
                continue
            sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
            frag = comp[sl] == j
            out[sl][frag] = 0
            frags.append((a, sl, frag))
        del comp
    # ``out`` is now keep_largest_components(labels): decide every fragment on it, then write
    moves = []
    for a, sl, frag in frags:
        ring = ndimage.binary_dilation(frag, structure=_S26) & ~frag
        nb = out[sl][ring]
        nb = nb[(nb != a) & np.isin(nb, single)]
        if nb.size and nb.size > share * int(ring.sum()):
            moves.append((sl, frag, int(np.bincount(nb).argmax())))
    # a fragment given to B touches B's largest component (its boundary does), so every
    # organ stays one 26-connected component
    for sl, frag, b in moves:
        out[sl][frag] = b
    return out


def postprocess_labels(labels: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The project's one post-processing step for a whole-stack prediction.

    :func:`reassign_fragments` for the spec's single-component organs (liver,
    kidneys, spleen; never bowel): each keeps its largest 3D component, and its other
    fragments go to the neighbouring organ around them or to background.

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
    return reassign_fragments(np.asarray(labels), spec).astype(np.uint8, copy=False)
