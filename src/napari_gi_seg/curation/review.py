"""Slice review bookkeeping and model-uncertainty guidance (GUI-free).

A clinician reviews a volume slice by slice. :class:`ReviewTracker` remembers the
state of each slice (``z`` index of a ``(z, y, x)`` volume); only REVIEWED slices are
exported for training, every other slice becomes the ignore label (see
:mod:`napari_gi_seg.curation.export`). :func:`slice_uncertainty` ranks slices so the
clinician looks first where the model is least sure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import IntEnum

import numpy as np

from ..errors import InputError, OutOfRangeError
from ..evaluation.metrics import dice

__all__ = ["SliceState", "ReviewTracker", "slice_uncertainty", "correction_dice_per_slice"]


class SliceState(IntEnum):
    """State of one slice. Stored as int8 in :attr:`ReviewTracker.states`."""

    UNSEEN = 0  #: nothing predicted or drawn yet
    PREDICTED = 1  #: labels come from the model, not yet looked at
    EDITED = 2  #: the clinician changed it but has not confirmed it
    REVIEWED = 3  #: the clinician confirmed the slice (exported for training)


_KEYS = {s: s.name.lower() for s in SliceState}


class ReviewTracker:
    """Per-slice review state of a volume with ``n_slices`` slices.

    Transitions (documented policy):

    * :meth:`mark_predicted` sets PREDICTED on the given slices, whatever they were:
      new model output replaces the labels there, so an earlier review of the old
      labels no longer applies.
    * :meth:`mark_edited` sets EDITED, **also on REVIEWED slices**: an edit after a
      review invalidates it and the clinician has to confirm the slice again.
    * :meth:`mark_reviewed` sets REVIEWED.

    Attributes
    ----------
    states: ``(z,)`` int8 array of :class:`SliceState` values.
    """

    def __init__(self, n_slices: int):
        n = int(n_slices)
        if n <= 0:
            raise InputError(f"n_slices must be positive, got {n_slices}")
        self.states = np.zeros(n, dtype=np.int8)

    # -- basics ---------------------------------------------------------------------
    @property
    def n_slices(self) -> int:
        """Number of slices."""
        return int(self.states.shape[0])

    def __len__(self) -> int:
        return self.n_slices

    def __repr__(self) -> str:
        return f"ReviewTracker({self.n_slices} slices, {self.counts()})"

    def _zs(self, zs: int | Iterable[int]) -> list[int]:
        if isinstance(zs, (int, np.integer)):
            zs = [int(zs)]
        out = [int(z) for z in zs]
        bad = [z for z in out if not 0 <= z < self.n_slices]
        if bad:
            raise OutOfRangeError(f"slice(s) {bad} out of range 0..{self.n_slices - 1}")
        return out

    def state(self, z: int) -> SliceState:
        """The :class:`SliceState` of slice ``z``."""
        return SliceState(int(self.states[self._zs(z)[0]]))

    def mark(self, z: int | Iterable[int], state: SliceState | int) -> None:
        """Set slice(s) ``z`` to ``state``. Raises ``IndexError`` out of range and
        ``ValueError`` for an unknown state."""
        s = SliceState(int(state))
        self.states[self._zs(z)] = int(s)

    def mark_predicted(self, zs: int | Iterable[int]) -> None:
        """Slices now hold model output (see class docstring)."""
        self.mark(zs, SliceState.PREDICTED)

    def mark_edited(self, zs: int | Iterable[int]) -> None:
        """Slices were changed by the clinician; a REVIEWED slice drops to EDITED."""
        self.mark(zs, SliceState.EDITED)

    def mark_reviewed(self, z: int | Iterable[int]) -> None:
        """The clinician confirmed slice(s) ``z``."""
        self.mark(z, SliceState.REVIEWED)

    # -- queries --------------------------------------------------------------------
    def reviewed_slices(self) -> list[int]:
        """Ascending indices of REVIEWED slices."""
        return [int(z) for z in np.nonzero(self.states == SliceState.REVIEWED)[0]]

    def protected_slices(self, overwrite: bool = False) -> set[int]:
        """Slices new model output must not replace: EDITED and REVIEWED ones (the
        clinician's work), or none when ``overwrite`` is True.

        This is the one "edited or reviewed" rule that every writer of model output
        follows (Segment, Adapt to this scan, and any tool that re-segments).

        Parameters
        ----------
        overwrite : bool
            The user chose to replace the clinician's slices too.

        Returns
        -------
        set of int
            Slice indices ``z``.
        """
        if overwrite:
            return set()
        keep = (self.states == SliceState.EDITED) | (self.states == SliceState.REVIEWED)
        return {int(z) for z in np.flatnonzero(keep)}

    def counts(self) -> dict[str, int]:
        """``{'unseen': n, 'predicted': n, 'edited': n, 'reviewed': n}``."""
        return {_KEYS[s]: int(np.count_nonzero(self.states == s)) for s in SliceState}

    def next_unreviewed(self, from_z: int, wrap: bool = True) -> int | None:
        """The first slice after ``from_z`` (``from_z + 1``, ``from_z + 2``, ...) that is
        not REVIEWED. With ``wrap`` the search continues at slice 0 and ends with
        ``from_z`` itself. ``None`` when no such slice exists."""
        n = self.n_slices
        from_z = int(np.clip(from_z, -1, n - 1))
        order = list(range(from_z + 1, n))
        if wrap:
            order += list(range(0, from_z + 1))
        for z in order:
            if self.states[z] != SliceState.REVIEWED:
                return z
        return None

    def least_confident_unreviewed(self, uncertainty: Sequence[float] | np.ndarray) -> int | None:
        """The not-REVIEWED slice with the highest ``uncertainty`` (``(z,)``, e.g. from
        :func:`slice_uncertainty`); ties -> lowest ``z``; NaN counts as lowest.
        ``None`` when every slice is reviewed. Raises ``ValueError`` on a length
        mismatch."""
        u = np.asarray(uncertainty, dtype=np.float64).ravel()
        if u.shape[0] != self.n_slices:
            raise InputError(f"uncertainty has {u.shape[0]} values for {self.n_slices} slices")
        open_ = self.states != SliceState.REVIEWED
        if not open_.any():
            return None
        score = np.where(open_, np.nan_to_num(u, nan=-np.inf), -np.inf)
        cand = np.nonzero(open_)[0]
        return int(cand[np.argmax(score[cand])])

    # -- persistence ----------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-able ``{"n_slices": n, "states": [int, ...]}``."""
        return {"n_slices": self.n_slices, "states": [int(s) for s in self.states]}

    @classmethod
    def from_dict(cls, d: dict) -> ReviewTracker:
        """Inverse of :meth:`to_dict`. Raises ``ValueError`` for inconsistent data."""
        try:
            states = [int(s) for s in d["states"]]
            n = int(d.get("n_slices", len(states)))
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"not a review record: {e}") from e
        if n != len(states):
            raise InputError(f"review record has {len(states)} states for {n} slices")
        valid = {int(s) for s in SliceState}
        if not set(states) <= valid:
            raise InputError(f"review record has unknown states {sorted(set(states) - valid)}")
        t = cls(n)
        t.states[:] = states
        return t


def slice_uncertainty(probs: np.ndarray, activation: str = "softmax") -> np.ndarray:
    """Per-slice model uncertainty: the mean normalised Shannon entropy over voxels
    predicted as foreground.

    Parameters
    ----------
    probs
        ``(C, z, y, x)`` float16/float32 probabilities as returned by
        :func:`napari_gi_seg.engine.inference.segment_volume` (``return_probs=True``).
        ``softmax``: ``C`` includes background at channel 0 and sums to 1.
        ``sigmoid`` (multi-label): ``C`` foreground channels, independent.
    activation: ``"softmax"`` or ``"sigmoid"``.

    Returns
    -------
    ``(z,)`` float32 in [0, 1]; 0 on slices where nothing is predicted.

    Formula (Shannon 1948): softmax voxels get ``H = -sum_c p_c log p_c / log C``
    (1 = uniform over the classes) and foreground means ``argmax != 0``. Sigmoid
    voxels get the largest binary entropy over the channels,
    ``max_c -(p log p + (1-p) log(1-p)) / log 2``, and foreground means some
    ``p_c > 0.5``.

    Raises ``ValueError`` for a wrong rank, fewer than 2 softmax channels or an
    unknown activation.
    """
    probs = np.asarray(probs)
    if probs.ndim != 4:
        raise InputError(f"probs must be (C, z, y, x), got shape {probs.shape}")
    if activation not in ("softmax", "sigmoid"):
        raise InputError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
    C, Z = probs.shape[:2]
    if activation == "softmax" and C < 2:
        raise InputError(f"softmax probabilities need >= 2 channels (background first), got {C}")
    eps = 1e-12
    out = np.zeros(Z, dtype=np.float32)
    for z in range(Z):  # one slice at a time keeps memory at (C, y, x)
        p = np.clip(probs[:, z].astype(np.float32), 0.0, 1.0)
        if activation == "softmax":
            fg = p.argmax(0) != 0
            if not fg.any():
                continue
            pf = p[:, fg]
            h = -(pf * np.log(pf + eps)).sum(0) / np.log(C)
        else:
            fg = (p > 0.5).any(0)
            if not fg.any():
                continue
            pf = p[:, fg]
            hb = -(pf * np.log(pf + eps) + (1 - pf) * np.log(1 - pf + eps)) / np.log(2.0)
            h = hb.max(0)
        out[z] = float(np.clip(h.mean(), 0.0, 1.0))
    return out


def correction_dice_per_slice(
    prediction: np.ndarray,
    final: np.ndarray,
    class_indices: Sequence[int],
    slices: Sequence[int] | None = None,
) -> dict[int, float]:
    """Dice between the model's prediction and the clinician's final labels, per slice.

    All classes in ``class_indices`` are pooled into one foreground mask per slice
    (so the figure says how much the clinician had to redraw, not which organ).
    Both masks empty -> 1.0 (:func:`napari_gi_seg.evaluation.metrics.dice`).

    Parameters
    ----------
    prediction, final: ``(z, y, x)`` integer labels of the same shape.
    class_indices: foreground label values to pool.
    slices: the slices to report (default: all).

    Returns ``{z: dice}``. Raises ``ValueError`` on a shape mismatch.
    """
    prediction, final = np.asarray(prediction), np.asarray(final)
    if prediction.shape != final.shape or prediction.ndim != 3:
        raise InputError(f"prediction {prediction.shape} and final labels {final.shape} must be equal (z, y, x) shapes")
    cls = np.asarray(list(class_indices))
    zs = range(prediction.shape[0]) if slices is None else [int(z) for z in slices]
    return {int(z): float(dice(np.isin(prediction[z], cls), np.isin(final[z], cls))) for z in zs}
