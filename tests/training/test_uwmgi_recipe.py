"""The GI recipe on real UW-Madison data: the two real 16-bit slices of
``uwmgi/scans_sample`` and their REAL ``train.csv`` rows, in a tiny Kaggle folder tree.

The data here has one slice per case-day and no patient with two days, so for the
day-to-day script a second day of case35 is made from the same real slice and the same
real rows (renamed ``case35_day1``): it exercises the code path, not the accuracy.
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import pytest

from napari_gi_seg import cli
from napari_gi_seg.models import registry

REPO = Path(__file__).resolve().parents[2]
SLICES = {"case35_day0": "slice_0105", "case85_day0": "slice_0088"}


@pytest.fixture(scope="module")
def real_tree(data_dir, uwmgi_csv, tmp_path_factory) -> Path:
    """train.csv (the real rows of the two slices, plus case35_day1 = a copy of case35_day0)
    and train/caseN/caseN_dayM/scans/<the real PNG>."""
    sample = data_dir / "uwmgi" / "scans_sample" / "train"
    root = tmp_path_factory.mktemp("uwmgi_real")
    wanted = {f"{cd}_{s}" for cd, s in SLICES.items()}
    with open(uwmgi_csv, newline="") as f:
        r = csv.reader(f)
        header = next(r)
        rows = [row for row in r if row[0] in wanted]
    assert len(rows) == 6  # 3 classes x 2 slices
    rows += [[row[0].replace("case35_day0", "case35_day1"), *row[1:]] for row in rows if row[0].startswith("case35")]
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    for cd in [*SLICES, "case35_day1"]:
        src_cd = "case35_day0" if cd == "case35_day1" else cd
        case = cd.split("_")[0]
        (png,) = (sample / case / src_cd / "scans").glob("*.png")
        dst = root / "train" / case / cd / "scans"
        dst.mkdir(parents=True)
        shutil.copyfile(png, dst / png.name)
    return root


def test_gi_recipe_trains_sigmoid_25d_with_kaggle_validation(real_tree, tmp_path):
    rc = cli.main(
        [
            "train",
            str(real_tree),
            "--name",
            "gi-real",
            "--context=-2,0,2",  # '=': a value starting with '-' is not an option
            "--size",
            "64",
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--val-fraction",
            "0.5",
            "--device",
            "cpu",
            "--seed",
            "0",
            "--work-dir",
            str(tmp_path / "run"),
        ]
    )
    assert rc == 0
    spec = registry.get_entry("gi-real").spec()
    assert spec.activation == "sigmoid" and spec.context_offsets == (-2, 0, 2)
    assert [c.name for c in spec.classes] == ["large_bowel", "small_bowel", "stomach"]
    assert spec.flip_augmented  # no lateralised GI class: flips on, flip TTA allowed
    v = spec.metrics["validation"]
    assert 0.0 <= v["mean_kaggle_score"] <= 1.0
    assert all(0.0 <= d["kaggle_score"] <= 1.0 for d in v["per_class"].values())
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "val_kaggle_score" in header


def test_day_adaptation_script_runs_on_the_real_tree(real_tree, tmp_path, capsys):
    assert (
        cli.main(
            ["train", str(real_tree), "--name", "gi-day", "--context=-2,0,2", "--size", "64", "--epochs", "1"]
            + ["--batch-size", "2", "--val-fraction", "0", "--device", "cpu", "--work-dir", str(tmp_path / "r")]
        )
        == 0
    )
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import uwmgi_day_adaptation as bench
    finally:
        sys.path.pop(0)
    capsys.readouterr()
    rc = bench.main(["--data", str(real_tree), "--model", "gi-day", "--n-slices", "1", "--steps", "2", "--json"])
    assert rc == 0
    import json

    report = json.loads(capsys.readouterr().out)
    (row,) = report["rows"]  # only case35 has two days
    assert (row["day1"], row["day2"], row["slices_used"], row["steps"]) == ("case35_day0", "case35_day1", [0], 2)
    for k in ("kaggle_before", "kaggle_after", "dice_before", "dice_after"):
        assert 0.0 <= row[k] <= 1.0
    assert set(row["per_class_after"]) == {"large_bowel", "small_bowel", "stomach"}
    assert "| case35 | case35_day0 -> case35_day1 |" in bench.markdown(report)
