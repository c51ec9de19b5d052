"""Metrics against hand-made masks with known answers (napari_gi_seg.evaluation.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_gi_seg.evaluation.metrics import (
    aggregate,
    dice,
    dice_2d_mean,
    evaluate_case,
    hausdorff_voxels,
    hd95_mm,
    kaggle_hausdorff,
    kaggle_score,
    overlap_metrics,
)


def _box(shape, sl):
    m = np.zeros(shape, bool)
    m[sl] = True
    return m


def test_overlap_known_values():
    ref = _box((1, 4, 10), np.s_[0, 0, 0:6])  # 6 voxels
    pred = _box((1, 4, 10), np.s_[0, 0, 2:10])  # 8 voxels, 4 shared
    m = overlap_metrics(pred, ref)
    assert m["dice"] == pytest.approx(2 * 4 / 14)
    assert m["iou"] == pytest.approx(4 / 10)
    assert m["precision"] == pytest.approx(4 / 8)
    assert m["recall"] == pytest.approx(4 / 6)


def test_overlap_ignore_leaves_voxels_out():
    ref = _box((1, 1, 10), np.s_[0, 0, 0:4])
    pred = _box((1, 1, 10), np.s_[0, 0, 0:8])
    ign = _box((1, 1, 10), np.s_[0, 0, 4:8])  # the 4 false positives are unreviewed
    assert dice(pred, ref) == pytest.approx(8 / 12)
    assert dice(pred, ref, ign) == 1.0
    assert overlap_metrics(pred, ref, ign)["precision"] == 1.0


def test_empty_conventions():
    e = np.zeros((3, 5, 5), bool)
    full = _box((3, 5, 5), np.s_[1, 1:3, 1:3])
    both = overlap_metrics(e, e)
    assert both == {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}
    miss = overlap_metrics(e, full)  # organ missed
    assert miss == {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": 0.0}
    spurious = overlap_metrics(full, e)  # organ predicted where there is none
    assert spurious == {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": 0.0}
    assert hd95_mm(e, e, (3.0, 1.5, 1.5)) == 0.0
    assert math.isnan(hd95_mm(e, full, (3.0, 1.5, 1.5)))
    assert math.isnan(hd95_mm(full, e, (3.0, 1.5, 1.5)))
    # Kaggle: empty/empty -> distance 0 (score term 1); empty/non-empty -> distance 1
    assert kaggle_hausdorff(e, e) == 0.0
    assert kaggle_hausdorff(e, full) == 1.0
    assert kaggle_hausdorff(full, e) == 1.0
    assert kaggle_score(e, e)["kaggle_score"] == pytest.approx(1.0)
    s = kaggle_score(e, full)
    # slices 0 and 2 are empty in both (2D Dice 1), slice 1 is a miss (0) -> 2/3
    assert s["kaggle_dice_2d"] == pytest.approx(2 / 3)
    assert s["kaggle_score"] == pytest.approx(0.4 * 2 / 3 + 0.6 * 0.0)


def test_hd95_spacing_aware_single_voxels():
    a = _box((5, 6, 7), np.s_[1, 2, 1])
    b = _box((5, 6, 7), np.s_[1, 2, 4])  # 3 voxels apart along x
    assert hd95_mm(a, b, (2.0, 1.0, 1.0)) == pytest.approx(3.0)
    assert hd95_mm(a, b, (1.0, 1.0, 2.5)) == pytest.approx(7.5)
    c = _box((5, 6, 7), np.s_[3, 2, 1])  # 2 slices apart along z at 7.7 mm
    assert hd95_mm(a, c, (7.7, 1.25, 1.25)) == pytest.approx(15.4)
    assert hd95_mm(a, a, (7.7, 1.25, 1.25)) == 0.0


def test_hd95_is_95th_percentile_not_max():
    # Reference: a 40-voxel line; prediction: the same line plus one far outlier voxel.
    ref = _box((1, 30, 60), np.s_[0, 5, 10:50])
    pred = ref.copy()
    pred[0, 25, 10] = True  # 20 voxels from the line
    assert hausdorff_voxels(pred, ref) == pytest.approx(20.0)  # the maximum sees it
    assert hd95_mm(pred, ref, (1.0, 1.0, 1.0)) < 20.0  # one outlier in 41 surface voxels is above the 95th pct


def test_kaggle_hausdorff_known_value_and_scipy_agreement():
    from scipy.spatial.distance import directed_hausdorff

    shape = (2, 3, 4)
    a = _box(shape, np.s_[0, 0, 0])
    b = _box(shape, np.s_[1, 2, 3])  # opposite corners: distance sqrt(1 + 4 + 9)
    assert hausdorff_voxels(a, b) == pytest.approx(math.sqrt(14))
    assert kaggle_hausdorff(a, b) == pytest.approx(math.sqrt(14) / math.sqrt(4 + 9 + 16))
    rng = np.random.default_rng(1)
    p, r = rng.random((6, 12, 14)) > 0.9, rng.random((6, 12, 14)) > 0.93
    pa, ra = np.argwhere(p), np.argwhere(r)
    ref_hd = max(directed_hausdorff(pa, ra)[0], directed_hausdorff(ra, pa)[0])
    assert hausdorff_voxels(p, r) == pytest.approx(ref_hd)
    score = kaggle_score(p, r)
    assert score["kaggle_score"] == pytest.approx(
        0.4 * dice_2d_mean(p, r) + 0.6 * (1 - ref_hd / math.sqrt(36 + 144 + 196))
    )


def test_evaluate_case_labels_and_multilabel_agree_and_aggregate():
    ref = np.zeros((4, 10, 10), np.uint8)
    ref[1:3, 2:6, 2:6] = 1
    ref[1:3, 6:9, 6:9] = 2
    pred = ref.copy()
    pred[1:3, 2:6, 5] = 0  # remove one column of class 1: 8 of 32 voxels
    ref_ign = ref.copy()
    ref_ign[3] = 255  # an unreviewed slice (empty in both anyway)
    r = evaluate_case(pred, ref_ign, (3.0, 1.5, 1.5), ["a", "b"])
    assert r["per_class"]["a"]["dice"] == pytest.approx(2 * 24 / (24 + 32))
    assert r["per_class"]["b"]["dice"] == 1.0 and r["per_class"]["b"]["hd95_mm"] == 0.0
    assert r["per_class"]["a"]["hd95_mm"] == pytest.approx(1.5)
    assert r["mean_dice"] == pytest.approx((2 * 24 / 56 + 1) / 2)
    masks_p = np.stack([pred == 1, pred == 2]).astype(np.uint8)
    masks_r = np.stack([ref == 1, ref == 2]).astype(np.uint8)
    r4 = evaluate_case(masks_p, masks_r, (3.0, 1.5, 1.5), ["a", "b"])
    r3 = evaluate_case(pred, ref, (3.0, 1.5, 1.5), ["a", "b"])
    for k in ("dice", "iou", "hd95_mm", "kaggle_score"):
        assert r4["per_class"]["a"][k] == pytest.approx(r3["per_class"]["a"][k])
    # the unreviewed slice 3 (empty 2D Dice = 1) is left out of the Kaggle 2D Dice mean
    assert r3["per_class"]["a"]["kaggle_dice_2d"] == pytest.approx((1 + 2 * 12 / 28 * 2 + 1) / 4)
    assert r["per_class"]["a"]["kaggle_dice_2d"] == pytest.approx((1 + 2 * 12 / 28 * 2) / 3)
    e = np.zeros_like(ref)
    r_miss = evaluate_case(e, ref, (3.0, 1.5, 1.5), {1: "a", 2: "b"})
    agg = aggregate({"c1": r, "c2": r_miss})
    assert agg["per_class"]["a"]["dice"] == pytest.approx((2 * 24 / 56 + 0) / 2)
    assert agg["per_class"]["a"]["hd95_undefined"] == 1
    assert agg["per_class"]["a"]["hd95_mm"] == pytest.approx(1.5)  # NaN skipped
    assert agg["mean_dice"] == pytest.approx((agg["per_class"]["a"]["dice"] + agg["per_class"]["b"]["dice"]) / 2)
    with pytest.raises(ValueError, match="shape mismatch"):
        evaluate_case(pred[:2], ref, (3.0, 1.5, 1.5), ["a", "b"])
