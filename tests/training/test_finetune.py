"""Fine-tuning: a new version with its parent, the base's files untouched, held-back
Dice before/after, and the ``--jsonl`` stream the fine-tune widget parses."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from napari_gi_seg import cli
from napari_gi_seg.datasets import IGNORE_INDEX, Case
from napari_gi_seg.models import registry
from napari_gi_seg.training.finetune import finetune, slice_split


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_finetune_registers_child_and_leaves_base_untouched(tiny_entry, chaos3):
    before = _digest(tiny_entry.folder)
    mtimes = {p.name: p.stat().st_mtime_ns for p in tiny_entry.folder.iterdir()}
    rows = []
    res = finetune(
        chaos3,
        "tiny",
        "tiny-ft",
        epochs=1,
        max_steps_per_epoch=1,
        batch_size=4,
        device="cpu",
        val_fraction=0.34,
        augment=False,
        on_epoch=rows.append,
    )
    assert _digest(tiny_entry.folder) == before
    assert {p.name: p.stat().st_mtime_ns for p in tiny_entry.folder.iterdir()} == mtimes
    e = registry.get_entry("tiny-ft")
    spec = e.spec()
    assert e.key == "tiny-ft:1" and spec.parent == "tiny:1"
    ft = spec.metrics["finetune"]
    assert ft["split"] == "patient" and len(ft["held_back"]) == 1
    assert ft["held_back"][0] not in spec.training["train_patients"]
    assert 0.0 <= ft["dice_before"] <= 1.0 and 0.0 <= ft["dice_after"] <= 1.0
    assert ft["dice_after"] == pytest.approx(res.dice_after)
    assert spec.data_fingerprint and len(spec.data_fingerprint) == 64
    assert [c.name for c in spec.classes] == [c.name for c in tiny_entry.spec().classes]
    assert len(rows) == 1 and rows[0]["val_mean_dice"] == pytest.approx(ft["dice_after"])
    registry.load_model("tiny-ft")  # loadable
    # a second fine-tune gets the next version, still with the same parent
    finetune(chaos3, "tiny:1", "tiny-ft", epochs=1, max_steps_per_epoch=1, batch_size=4, device="cpu", augment=False)
    assert registry.get_entry("tiny-ft").key == "tiny-ft:2" and registry.get_entry("tiny-ft").spec().parent == "tiny:1"
    assert _digest(tiny_entry.folder) == before


def test_finetune_cli_jsonl_single_patient_slice_split(tiny_entry, chaos3, tmp_path, capsys):
    one = tmp_path / "one_patient"
    one.mkdir()
    for kind in ("image", "label"):
        os.symlink(os.path.realpath(chaos3 / f"{kind}_2.nii.gz"), one / f"{kind}_2.nii.gz")
    # no classes.json: the base's class order is assumed
    rc = cli.main(
        [
            "finetune",
            str(one),
            "--model",
            "tiny",
            "--name",
            "tiny-one",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--max-steps-per-epoch",
            "1",
            "--jsonl",
        ]
    )
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [ln["event"] for ln in lines] == ["start", "epoch", "done"]
    assert lines[0]["split"] == "slice" and lines[1]["epoch"] == 1 and "train_loss" in lines[1]
    assert lines[2]["model"] == "tiny-one:1" and lines[2]["parent"] == "tiny:1"
    ft = registry.get_entry("tiny-one").spec().metrics["finetune"]
    held = ft["held_back"]["2"]
    assert ft["split"] == "slice" and len(held) >= 2


def test_slice_split_holds_back_labelled_slices_only():
    from napari_gi_seg.io.volume import Volume

    t = np.zeros((12, 4, 4), np.uint8)
    t[2:10, 1:3, 1:3] = 1
    t[[0, 1, 10, 11]] = IGNORE_INDEX  # unreviewed slices are never held back
    c = Case("c", "p", Volume(np.zeros((12, 4, 4), np.float32), (3.0, 1.0, 1.0)), t)
    tr, va, held = slice_split(c, 0.25)
    assert held == [4, 8]
    assert np.all(tr.target[held] == IGNORE_INDEX) and np.array_equal(va.target[held], t[held])
    others = [z for z in range(12) if z not in held]
    assert np.all(va.target[others] == IGNORE_INDEX) and np.array_equal(tr.target[others], t[others])
    with pytest.raises(ValueError, match="at least 2 labelled slices"):
        slice_split(Case("c", "p", c.image, np.full_like(t, IGNORE_INDEX)), 0.25)
