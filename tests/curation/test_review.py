"""Review bookkeeping, uncertainty ranking and correction Dice."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_gi_seg.curation.review import ReviewTracker, SliceState, correction_dice_per_slice, slice_uncertainty


def test_tracker_states_counts_and_navigation():
    t = ReviewTracker(10)
    assert t.states.dtype == np.int8 and t.states.shape == (10,)
    assert t.counts() == {"unseen": 10, "predicted": 0, "edited": 0, "reviewed": 0}
    t.mark_predicted(range(10))
    t.mark_edited([2, 3])
    t.mark_reviewed(3)
    t.mark_reviewed([0, 1])
    assert t.reviewed_slices() == [0, 1, 3]
    assert t.counts() == {"unseen": 0, "predicted": 6, "edited": 1, "reviewed": 3}
    # an edit after review drops the slice back to EDITED
    t.mark_edited(3)
    assert t.state(3) == SliceState.EDITED and t.reviewed_slices() == [0, 1]
    t.mark(3, SliceState.REVIEWED)
    assert t.next_unreviewed(0) == 2
    assert t.next_unreviewed(3) == 4
    t.mark_reviewed(range(4, 10))
    assert t.next_unreviewed(5, wrap=False) is None
    assert t.next_unreviewed(5) == 2  # wraps round to the start
    assert t.next_unreviewed(2) == 2  # ...and finally the slice itself
    t.mark_reviewed(2)
    assert t.next_unreviewed(0) is None
    assert sum(t.counts().values()) == 10
    with pytest.raises(IndexError):
        t.mark_reviewed(10)
    with pytest.raises(ValueError):
        t.mark(0, 7)


def test_least_confident_and_round_trip():
    t = ReviewTracker(6)
    u = np.array([0.1, 0.9, 0.3, np.nan, 0.9, 0.2], np.float32)
    assert t.least_confident_unreviewed(u) == 1  # tie -> lowest z
    t.mark_reviewed(1)
    assert t.least_confident_unreviewed(u) == 4
    t.mark_reviewed([0, 2, 4, 5])
    assert t.least_confident_unreviewed(u) == 3  # NaN still counts, last
    t.mark_reviewed(3)
    assert t.least_confident_unreviewed(u) is None
    with pytest.raises(ValueError, match="6 slices"):
        t.least_confident_unreviewed(u[:5])
    t.mark_edited(2)
    d = json.loads(json.dumps(t.to_dict()))
    t2 = ReviewTracker.from_dict(d)
    assert np.array_equal(t2.states, t.states) and t2.states.dtype == np.int8
    with pytest.raises(ValueError):
        ReviewTracker.from_dict({"n_slices": 3, "states": [0, 1]})
    with pytest.raises(ValueError):
        ReviewTracker.from_dict({"n_slices": 2, "states": [0, 9]})


def _probs_from_labels(labels, n_classes, confidence=0.98):
    """Softmax-like probabilities (C, z, y, x): ``confidence`` on the label, the rest
    shared, then slightly blurred in-plane so borders are less certain."""
    C = n_classes + 1
    p = np.full((C, *labels.shape), (1 - confidence) / (C - 1), np.float32)
    for c in range(C):
        p[c][labels == c] = confidence
    p = ndi.gaussian_filter(p, sigma=(0, 0, 1.5, 1.5))
    return p / p.sum(0, keepdims=True)


def test_slice_uncertainty_ranks_ambiguous_slice(chaos_labels_volume):
    lab = chaos_labels_volume.data[8:32, ::2, ::2]  # real labels, half resolution for speed
    probs = _probs_from_labels(lab, 4)
    u0 = slice_uncertainty(probs)
    z_amb = 12
    assert (lab[z_amb] == 1).any()
    # make the liver on one slice ambiguous between background and liver (still argmax liver)
    liver = lab[z_amb] == 1
    probs[:, z_amb][:, liver] = 0.0
    probs[0, z_amb][liver] = 0.42
    probs[1, z_amb][liver] = 0.48
    probs[4, z_amb][liver] = 0.10
    u = slice_uncertainty(probs.astype(np.float16))
    assert u.shape == (lab.shape[0],) and u.dtype == np.float32
    assert np.all((u >= 0) & (u <= 1))
    empty = [z for z in range(lab.shape[0]) if not lab[z].any()]
    assert all(u[z] == 0 for z in empty)
    assert int(np.argmax(u)) == z_amb
    assert u[z_amb] > u0[z_amb] + 0.2
    others = np.arange(lab.shape[0]) != z_amb
    np.testing.assert_allclose(u[others], u0[others], atol=2e-3)  # float16 input
    t = ReviewTracker(lab.shape[0])
    assert t.least_confident_unreviewed(u) == z_amb


def test_slice_uncertainty_sigmoid_and_errors():
    p = np.zeros((2, 3, 8, 8), np.float32)
    p[0, 1, 2:5, 2:5] = 0.99
    p[1, 2, 2:5, 2:5] = 0.6
    u = slice_uncertainty(p, activation="sigmoid")
    assert u[0] == 0 and 0 < u[1] < u[2] <= 1
    with pytest.raises(ValueError):
        slice_uncertainty(p[0])
    with pytest.raises(ValueError):
        slice_uncertainty(p, activation="relu")


def test_correction_dice_per_slice(chaos_labels_volume):
    final = chaos_labels_volume.data
    pred = final.copy()
    z = int(np.argmax((final == 1).sum((1, 2))))
    pred[z][pred[z] == 1] = 0  # the model missed the liver on one slice
    d = correction_dice_per_slice(pred, final, [1, 2, 3, 4])
    assert set(d) == set(range(final.shape[0]))
    fg_f, fg_p = final[z] > 0, pred[z] > 0
    expected = 2 * (fg_f & fg_p).sum() / (fg_f.sum() + fg_p.sum())
    assert d[z] == pytest.approx(expected) and d[z] < 0.5
    assert all(v == 1.0 for k, v in d.items() if k != z)  # identical or both empty
    assert correction_dice_per_slice(pred, final, [1], slices=[z]) == {z: 0.0}
    with pytest.raises(ValueError):
        correction_dice_per_slice(pred[:-1], final, [1])


def test_protected_slices_are_edited_and_reviewed():
    t = ReviewTracker(6)
    t.mark_predicted(range(6))
    t.mark_edited([1, 4])
    t.mark_reviewed([4, 5])
    assert t.protected_slices() == {1, 4, 5} and t.protected_slices(overwrite=True) == set()
    t.mark_predicted([1])  # new model output replaced slice 1
    assert t.protected_slices() == {4, 5}
