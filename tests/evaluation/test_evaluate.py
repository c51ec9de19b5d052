"""``napari-gi-seg evaluate``: the bundled default model on a real CHAOS patient, and the
JSON / report / class matching on a tiny model."""

from __future__ import annotations

import json

import pytest

from napari_gi_seg import cli
from napari_gi_seg.evaluation.evaluate import match_classes
from napari_gi_seg.models import registry


def test_default_model_on_a_held_out_chaos_patient(chaos_dir, tmp_path, capsys):
    entry = registry.get_entry()  # the registry default (bundled chaos-t2spir)
    spec = entry.spec()
    patient = str((spec.training.get("val_patients") or ["1"])[0])  # one it was not trained on
    out = tmp_path / "metrics.json"
    assert cli.main(["evaluate", str(chaos_dir), "--cases", patient, "--json", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["model"] == entry.key and m["n_cases"] == 1 and list(m["per_case"]) == [patient]
    assert m["mean_dice"] > 0.8, m["per_class"]
    assert m["per_class"]["liver"]["dice"] > 0.85
    assert m["per_class"]["liver"]["hd95_mm"] < 50
    assert "liver" in capsys.readouterr().out


def test_evaluate_json_report_and_table(tiny_entry, chaos3, tmp_path, capsys):
    js, rep = tmp_path / "m.json", tmp_path / "rep" / "report.md"
    assert (
        cli.main(
            [
                "evaluate",
                str(chaos3),
                "--model",
                "tiny-chaos",
                "--cases",
                "1",
                "--json",
                str(js),
                "--report",
                str(rep),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    m = json.loads(js.read_text())
    names = ["liver", "right_kidney", "left_kidney", "spleen"]
    assert m["classes"] == names and list(m["per_case"]) == ["1"]
    # the Dice per class equals an independent computation: the engine's labels vs the manual ones
    from napari_gi_seg.engine.inference import segment_volume
    from napari_gi_seg.evaluation.metrics import dice_per_class
    from napari_gi_seg.io.nifti import read_nifti
    from napari_gi_seg.models import registry

    spec, net = registry.load_model("tiny-chaos")
    pred = segment_volume(read_nifti(chaos3 / "image_1.nii.gz", as_labels=False), spec, net, device="cpu").labels
    ref = read_nifti(chaos3 / "label_1.nii.gz", as_labels=True).data
    expected = dice_per_class(pred, ref, [1, 2, 3, 4])
    for i, n in enumerate(names, start=1):
        pc = m["per_class"][n]
        assert pc["dice"] == pytest.approx(expected[i], abs=1e-3)
        # Kaggle score = 0.4 * 2D Dice + 0.6 * (1 - normalised Hausdorff), as the competition defines it
        assert pc["kaggle_score"] == pytest.approx(0.4 * pc["kaggle_dice_2d"] + 0.6 * (1 - pc["kaggle_hd"]))
        assert pc["hd95_mm"] is None or pc["hd95_mm"] >= 0
    assert m["per_class"]["liver"]["dice"] > 0.1  # the tiny model was fitted (briefly) on this patient
    case = m["per_case"]["1"]["per_class"]
    assert m["mean_dice"] == pytest.approx(sum(case[n]["dice"] for n in names) / 4)
    text = rep.read_text()
    assert "| liver |" in text and "dice_per_class.png" in text and "overlay_1.png" in text
    assert (rep.parent / "report_files" / "dice_per_class.png").stat().st_size > 1000
    assert (rep.parent / "report_files" / "overlay_1.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "left_kidney" in out and "HD95" in out
    # restricting classes
    assert (
        cli.main(
            [
                "evaluate",
                str(chaos3),
                "--model",
                "tiny-chaos",
                "--cases",
                "1",
                "--classes",
                "liver",
                "--json",
                str(js),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert list(json.loads(js.read_text())["per_class"]) == ["liver"]
    # unknown case -> clear error, exit status 2
    assert cli.main(["evaluate", str(chaos3), "--model", "tiny-chaos", "--cases", "99"]) == 2
    assert "unknown case" in capsys.readouterr().err


def test_classes_are_matched_by_name():
    model = ["liver", "right_kidney", "left_kidney", "spleen"]
    m = match_classes(model, ["stomach", "spleen", "liver"])
    assert [(c.name, c.dataset_value, c.model_index) for c in m] == [("spleen", 2, 4), ("liver", 3, 1)]
    with pytest.raises(ValueError, match="share no name"):
        match_classes(model, ["large_bowel", "small_bowel", "stomach"])
    with pytest.raises(ValueError, match="not classes of both"):
        match_classes(model, ["liver"], only=["spleen"])
