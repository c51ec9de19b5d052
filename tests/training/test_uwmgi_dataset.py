"""The UW-Madison (Kaggle) layout: stand-in synthetic PNG scans + REAL train.csv rows.

The scans are not available here (shared/data/uwmgi/SOURCE.md), so the fixture writes
synthetic 16-bit PNGs with the real geometry and file names; every label comes from the
real ``train.csv``."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gi_seg import cli
from napari_gi_seg.datasets import DatasetFormatError, open_dataset
from napari_gi_seg.datasets.uwmgi import DEFAULT_EXCLUDE, open_uwmgi
from napari_gi_seg.io.rle import rle_decode, rle_encode
from napari_gi_seg.io.uwmgi import UWMGI_CLASSES, load_train_csv
from napari_gi_seg.models import registry


def test_loader_groups_by_patient_with_class_channels(uwmgi_tree, uwmgi_csv):
    ds = open_dataset(uwmgi_tree)
    assert ds.layout == "uwmgi" and ds.multilabel
    assert ds.class_names == list(UWMGI_CLASSES) == ["large_bowel", "small_bowel", "stomach"]
    assert "case7_day0" in DEFAULT_EXCLUDE
    assert [c.case_id for c in ds.cases] == ["case2_day1", "case123_day20"]  # case7_day0 excluded by default
    assert ds.groups == ["case123", "case2"]
    case = next(c for c in ds.cases if c.case_id == "case123_day20").load()
    assert case.group == "case123"
    assert case.image.shape == (12, 266, 266) and case.image.spacing_mm == (3.0, 1.5, 1.5)
    assert case.target.shape == (3, 12, 266, 266) and case.target.dtype == np.uint8
    # slice 65 of case123_day20 (z = 65 - 60): the stomach channel equals the real RLE row
    rle = load_train_csv(uwmgi_csv).rles["case123_day20"][65]["stomach"]
    assert rle
    stomach = case.target[UWMGI_CLASSES.index("stomach"), 5]
    assert np.array_equal(stomach, rle_decode(rle, (266, 266)))
    assert rle_encode(stomach) == rle
    assert not case.target[UWMGI_CLASSES.index("large_bowel"), 5].any()
    # overriding the exclusion list
    assert "case7_day0" in [c.case_id for c in open_uwmgi(uwmgi_tree, exclude=()).cases]
    # a whole patient; the list replaces the default one
    assert [c.case_id for c in open_uwmgi(uwmgi_tree, exclude=("case123",)).cases] == ["case2_day1", "case7_day0"]
    with pytest.raises(DatasetFormatError, match="UW-Madison classes"):
        open_uwmgi(uwmgi_tree, class_names=["stomach", "small_bowel", "large_bowel"])


def test_multilabel_training_and_evaluation_end_to_end(uwmgi_tree, tmp_path):
    assert (
        cli.main(
            [
                "train",
                str(uwmgi_tree),
                "--name",
                "gi-tiny",
                "--size",
                "64",
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--max-steps-per-epoch",
                "1",
                "--val-fraction",
                "0.5",
                "--device",
                "cpu",
                "--work-dir",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    spec = registry.get_entry("gi-tiny").spec()
    assert spec.activation == "sigmoid" and [c.name for c in spec.classes] == list(UWMGI_CLASSES)
    assert spec.training["layout"] == "uwmgi"
    assert len(spec.training["train_patients"]) == 1 and len(spec.training["val_patients"]) == 1
    from napari_gi_seg.evaluation.evaluate import evaluate_dataset

    ev = evaluate_dataset(uwmgi_tree, model="gi-tiny", cases=["case2"], device="cpu")
    assert ev.summary["classes"] == list(UWMGI_CLASSES)
    assert list(ev.summary["per_case"]) == ["case2_day1"]
    pcs = ev.summary["per_case"]["case2_day1"]["per_class"]
    for n in UWMGI_CLASSES:  # 0.4 * 2D Dice + 0.6 * (1 - normalised Hausdorff) per class (Kaggle's definition)
        assert pcs[n]["kaggle_score"] == pytest.approx(0.4 * pcs[n]["kaggle_dice_2d"] + 0.6 * (1 - pcs[n]["kaggle_hd"]))
    # one case: the summary is the mean over classes of that case's scores
    assert ev.summary["mean_kaggle_score"] == pytest.approx(np.mean([pcs[n]["kaggle_score"] for n in UWMGI_CLASSES]))
