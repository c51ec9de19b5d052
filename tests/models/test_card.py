"""Model cards: the sections every registered model's card must carry, on the real
bundled model and on an adapted copy's spec."""

from __future__ import annotations

import json

from napari_gi_seg.models import registry
from napari_gi_seg.models.card import main as card_main
from napari_gi_seg.models.card import model_card
from napari_gi_seg.models.spec import ModelSpec


def test_bundled_card_has_use_licence_citation_frame_and_metrics():
    e = registry.get_entry("chaos-t2spir:1")
    text = (e.folder / "MODEL_CARD.md").read_text()
    for needle in (
        "## Intended use",
        "**Not a medical device.**",
        "CC BY-SA 4.0",
        "Kavur A.E. et al.",
        "Medical Image Analysis 69 (2021) 101950",
        "## Frame it expects",
        "(L, A, S)",
        "1.25 x 1.25 x 7.7 mm",
        "held-out patients 1, 3, 36, 37",
        "| liver | 0.887 |",
        "| right_kidney | 0.903 | 6.4 | 0.969 |",
    ):
        assert needle in text, needle
    # the card is what model_card makes from the spec (plus the recorded evaluation)
    assert text.startswith(model_card(e.spec()).split("## Metrics")[0])


def test_card_of_an_adapted_model_says_where_each_figure_was_measured(tmp_path):
    spec = registry.get_entry("chaos-t2spir:1").spec()
    d = spec.to_dict()
    d["parent"] = spec.key
    d["metrics"]["adaptation"] = {
        "slices": [3, 9],
        "dice_before": 0.8,
        "dice_after": 0.9,
        "per_class_before": {c.name: 0.8 for c in spec.classes},
        "per_class_after": {c.name: 0.9 for c in spec.classes},
    }
    card = model_card(ModelSpec.from_dict(d))
    assert "### Patient adaptation" in card and "2 corrected slices it was tuned on" in card
    assert "| spleen | 0.800 | 0.900 |" in card and "parent: chaos-t2spir:1" in card
    # an unknown dataset: no licence is invented
    d["training"] = {"dataset": "/somewhere/else"}
    assert "no licence on record" in model_card(ModelSpec.from_dict(d))


def test_regenerate_card_from_a_folder(tmp_path):
    e = registry.get_entry("chaos-t2spir:1")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "spec.json").write_text((e.folder / "spec.json").read_text())
    summary = {"per_class": {"liver": {"dice": 0.5, "hd95_mm": 12.0}}, "mean_dice": 0.5, "mean_hd95_mm": 12.0}
    (tmp_path / "ev.json").write_text(json.dumps(summary))
    assert card_main([str(folder), "--evaluation", str(tmp_path / "ev.json"), "--where", "somewhere"]) == 0
    text = (folder / "MODEL_CARD.md").read_text()
    assert "somewhere" in text and "| liver | 0.500 | 12.0 |" in text and "| spleen | - | - |" in text


def test_card_of_a_model_trained_on_every_patient_shows_the_cross_validation():
    """A model trained on all patients has no validation: its card's headline and
    table are the recipe's cross-validation, said to be an estimate of the recipe."""
    from napari_gi_seg.models.card import headline_metric

    spec = registry.get_entry("chaos-t2spir:1").spec()
    d = spec.to_dict()
    d["metrics"] = {
        "cross_validation": {
            "mean_dice": 0.61,
            "sd": 0.23,
            "per_class": {c.name: {"dice": 0.6, "sd": 0.2} for c in spec.classes},
            "measured_on": "4-fold patient cross-validation on 16 CHAOS T2-SPIR patients.",
        }
    }
    s2 = ModelSpec.from_dict(d)
    value, where = headline_metric(s2)
    assert value == 0.61 and where.startswith("cross-validation Dice (4-fold patient")
    card = model_card(s2)
    assert "### Cross-validation (estimate for unseen patients)" in card
    assert "| liver | 0.600 | 0.200 |" in card and "an estimate of the recipe" in card


def test_an_adapted_copy_never_shows_its_parents_figure():
    """A patient copy's spec carries the parent's validation; ``models`` and the card show
    the copy's own figure (on the slices it was tuned on) and say where it was measured."""
    from napari_gi_seg.cli import model_rows
    from napari_gi_seg.models.card import headline_metric
    from napari_gi_seg.training.adaptation import adapted_spec

    base = registry.get_entry("chaos-t2spir:1").spec()
    parent_value, _ = headline_metric(base)
    names = [c.name for c in base.classes]
    child = adapted_spec(base, [3, 4, 5], dict.fromkeys(names, 0.8), dict.fromkeys(names, 0.9), 40, 12.0)
    assert child.metrics["validation"] == base.metrics["validation"]  # inherited: must not be the headline
    value, where = headline_metric(child)
    assert value == 0.9 and value != parent_value
    assert "3 corrected slices" in where and "not an accuracy estimate" in where and "chaos-t2spir:1: 0.800" in where
    assert all(r["mean_dice"] == parent_value for r in model_rows() if r["key"] == base.key)
