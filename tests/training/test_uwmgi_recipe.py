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

import numpy as np
import pytest

from napari_gi_seg import cli
from napari_gi_seg.models import registry

REPO = Path(__file__).resolve().parents[2]
SLICES = {"case35_day0": "slice_0105", "case85_day0": "slice_0088"}


def _kaggle_by_hand(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(2D Dice mean over slices, Kaggle score) of ``(z, y, x)`` boolean masks, written
    from the competition's definition with scipy's Hausdorff distance (not the package's
    ``evaluation.metrics``): 0.4 x Dice + 0.6 x (1 - HD / volume diagonal)."""
    from scipy.spatial.distance import directed_hausdorff

    dices = []
    for p, r in zip(pred, ref):
        tot = p.sum() + r.sum()
        dices.append(1.0 if tot == 0 else 2.0 * (p & r).sum() / tot)
    d2 = float(np.mean(dices))
    pp, rr = np.argwhere(pred), np.argwhere(ref)
    if len(pp) == 0 and len(rr) == 0:
        hd = 0.0
    elif len(pp) == 0 or len(rr) == 0:
        hd = 1.0
    else:
        d = max(directed_hausdorff(pp, rr)[0], directed_hausdorff(rr, pp)[0])
        hd = min(1.0, d / np.sqrt(sum(s**2 for s in pred.shape)))
    return d2, 0.4 * d2 + 0.6 * (1.0 - hd)


def _scores_by_hand(model: str, case) -> dict[str, tuple[float, float]]:
    """``{class: (Dice, Kaggle score)}`` of a registered model on a loaded case-day."""
    from napari_gi_seg.engine.inference import segment_volume

    spec, net = registry.load_model(model, device="cpu")
    assert not (case.target == 255).any()  # every class annotated on these real rows: nothing ignored
    probs = segment_volume(case.image, spec, net, device="cpu", return_probs=True).probs
    out = {}
    for c in spec.classes:
        pred, ref = probs[c.index - 1] > 0.5, case.target[c.index - 1] == 1
        tot = pred.sum() + ref.sum()
        out[c.name] = (1.0 if tot == 0 else 2.0 * float((pred & ref).sum()) / tot, _kaggle_by_hand(pred, ref)[1])
    return out


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
    # the recorded validation = the registered model scored by hand on the validation patient's case-day
    from napari_gi_seg._privacy import recorded_among
    from napari_gi_seg.datasets import open_dataset

    ds = open_dataset(real_tree)
    (val,) = recorded_among(spec.training["val_patients"], ds.groups)
    per_day = [_scores_by_hand("gi-real", c.load()) for c in ds.cases if c.group == val]
    by_hand = {name: np.mean([d[name][1] for d in per_day]) for name in per_day[0]}  # mean over case-days
    for name, kaggle in by_hand.items():
        assert v["per_class"][name]["kaggle_score"] == pytest.approx(kaggle, abs=1e-3), name
    assert v["mean_kaggle_score"] == pytest.approx(np.mean(list(by_hand.values())), abs=1e-3)
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
    # "before" = the trained model scored by hand on the second day (case35_day1); the means are of the per-class figures
    from napari_gi_seg.datasets import open_dataset

    (day2,) = [c.load() for c in open_dataset(real_tree).cases if c.case_id == "case35_day1"]
    for name, (dice, kaggle) in _scores_by_hand("gi-day", day2).items():
        assert row["per_class_before"][name]["dice"] == pytest.approx(dice, abs=1e-6), name
        assert row["per_class_before"][name]["kaggle_score"] == pytest.approx(kaggle, abs=1e-6), name
    for when in ("before", "after"):
        per_class = row[f"per_class_{when}"].values()
        assert row[f"dice_{when}"] == pytest.approx(np.nanmean([d["dice"] for d in per_class]))
        assert row[f"kaggle_{when}"] == pytest.approx(np.nanmean([d["kaggle_score"] for d in per_class]))
    assert set(row["per_class_after"]) == {"large_bowel", "small_bowel", "stomach"}
    assert "| case35 | case35_day0 -> case35_day1 |" in bench.markdown(report)
