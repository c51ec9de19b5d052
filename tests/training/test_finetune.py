"""Fine-tuning: a new version with its parent, the base's files untouched, held-back
Dice before/after (checked against an independent computation), a worse model kept
unregistered unless asked, a graceful stop that keeps the best epoch, ``--resume``,
the run folder's manifest and log, and the ``--jsonl`` stream the widget parses."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import numpy as np
import pytest
import torch

from napari_gi_seg import cli
from napari_gi_seg._privacy import public_case_id, public_dataset_name
from napari_gi_seg.datasets import IGNORE_INDEX, Case
from napari_gi_seg.models import registry
from napari_gi_seg.training.checkpoint import CheckpointError, load_checkpoint
from napari_gi_seg.training.finetune import finetune, register_run, slice_split
from napari_gi_seg.training.manifest import read_manifest

TINY_FT = dict(epochs=1, max_steps_per_epoch=1, batch_size=4, device="cpu", augment=False)


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _independent_dice(entry_key, image_path, label_path, classes=(1, 2, 3, 4), slices=None):
    """Mean Dice of a registered model on one CHAOS patient, computed here without the
    fine-tune code: segment the whole volume, Dice per class on the (held-back) slices."""
    from napari_gi_seg.engine.inference import segment_volume
    from napari_gi_seg.evaluation.metrics import dice_per_class
    from napari_gi_seg.io.nifti import read_nifti

    spec, net = registry.load_model(entry_key)
    img, ref = read_nifti(image_path, as_labels=False), read_nifti(label_path, as_labels=True).data
    pred = segment_volume(img, spec, net, device="cpu").labels
    if slices is not None:
        keep = np.zeros(ref.shape[0], bool)
        keep[list(slices)] = True
        ref = np.where(keep[:, None, None], ref, IGNORE_INDEX).astype(np.uint8)
    d = dice_per_class(pred, ref, list(classes))
    return float(np.mean([d[c] for c in classes]))


def test_finetune_registers_child_with_before_after_and_run_record(tiny_entry, chaos3):
    before_files = _digest(tiny_entry.folder)
    events = []
    res = finetune(
        chaos3, "tiny-chaos", "tiny-ft", val_fraction=0.34, register_if_worse=True, progress=events.append, **TINY_FT
    )
    assert _digest(tiny_entry.folder) == before_files  # the base is only read
    e = registry.get_entry("tiny-ft")
    spec = e.spec()
    assert res.registered and e.key == "tiny-ft:1" and spec.parent == "tiny-chaos:1"
    ft = spec.metrics["finetune"]
    assert ft["split"] == "patient" and len(ft["held_back"]) == 1
    held = ft["held_back"][0]
    assert held not in spec.training["train_patients"]
    held_public, held = held, next(p for p in ("1", "2", "3") if public_case_id(p) == held)  # keyed pseudonyms
    # dice_before is the base's Dice on the held-back patient, computed independently
    expected = _independent_dice("tiny-chaos:1", chaos3 / f"image_{held}.nii.gz", chaos3 / f"label_{held}.nii.gz")
    assert ft["dice_before"] == pytest.approx(expected, abs=2e-3)
    assert ft["per_class_before"]["liver"] > 0.05  # the tiny model finds some liver on an unseen patient
    # dice_after is the new model's Dice on the same patient
    after = _independent_dice("tiny-ft:1", chaos3 / f"image_{held}.nii.gz", chaos3 / f"label_{held}.nii.gz")
    assert ft["dice_after"] == pytest.approx(after, abs=2e-3) and res.dice_after == pytest.approx(ft["dice_after"])
    assert ft["worse"] == (ft["dice_after"] < ft["dice_before"])
    # progress protocol: baseline, steps, validation, the epoch row, done
    stages = [ev.stage for ev in events]
    assert stages[0] == "baseline" and stages[-1] == "done" and "step" in stages and "validate" in stages
    epoch = [ev for ev in events if ev.stage == "epoch"]
    assert len(epoch) == 1 and epoch[0].metrics["val_mean_dice"] == pytest.approx(ft["dice_after"])
    assert events[-1].metrics["registered"] is True and events[-1].metrics["model"] == "tiny-ft:1"
    # the run folder: manifest with split, versions, hardware; a log file
    man = read_manifest(res.work_dir)
    assert man["status"] == "registered" and man["model"] == "tiny-ft:1" and man["kind"] == "finetune"
    assert man["split"] == {"train": spec.training["train_patients"], "validation": [held_public]}
    assert man["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert man["hardware"]["cpus"] == os.cpu_count() and man["config"]["dataset"] == public_dataset_name(chaos3)
    assert str(chaos3) not in json.dumps(man)  # no local absolute path
    log = (res.work_dir / "train.log").read_text()
    assert "held-back mean Dice" in log and "epoch=1" in log and "registered tiny-ft:1" in log
    # the model card and `models` say where the figure was measured
    card = (e.folder / "MODEL_CARD.md").read_text()
    assert "## Fine-tuning" in card and "tiny-chaos:1" in card
    rows = {r["key"]: r for r in cli.model_rows()}
    where = f"held-back Dice on 1 patient(s) of {public_dataset_name(chaos3)}"
    assert rows["tiny-ft:1"]["dice_measured_on"].startswith(where)
    assert "parent tiny-chaos:1" in rows["tiny-ft:1"]["dice_measured_on"]


def test_worse_model_is_registered_only_on_explicit_choice(tiny_entry, chaos3, capsys):
    # a learning rate of 1.0 wrecks the network in two steps: held-back Dice falls
    res = finetune(chaos3, "tiny-chaos", "tiny-bad", lr=1.0, val_fraction=0.34, **{**TINY_FT, "max_steps_per_epoch": 2})
    assert (
        res.spec.metrics["finetune"]["per_class_before"]["liver"] > 0.05
        and res.worse
        and res.dice_after < res.dice_before
    )
    assert not res.registered and "not registered" in res.reason and "--register-if-worse" in res.reason
    assert [e for e in registry.list_models() if e.name == "tiny-bad"] == []
    assert read_manifest(res.work_dir)["status"] == "not-registered"
    with pytest.raises(ValueError, match="explicit choice"):
        register_run(res.work_dir)
    entry = register_run(res.work_dir, allow_worse=True)
    spec = entry.spec()
    assert entry.key == "tiny-bad:1" and spec.parent == "tiny-chaos:1" and spec.metrics["finetune"]["worse"]
    assert "registered on an explicit choice" in (entry.folder / "MODEL_CARD.md").read_text()
    # the CLI prints both figures and says why it did not register
    rc = cli.main(
        ["finetune", str(chaos3), "--model", "tiny-chaos", "--name", "tiny-bad2", "--lr", "1.0", "--epochs", "1"]
        + ["--batch-size", "4", "--device", "cpu", "--max-steps-per-epoch", "2", "--val-fraction", "0.34"]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "before  tiny-chaos:1" in out and "(worse)" in out and "not registered" in out
    assert f"{res.dice_before:.4f}" in out
    assert [e for e in registry.list_models() if e.name == "tiny-bad2"] == []


def test_stop_keeps_best_epoch_and_resume_continues(tiny_entry, chaos3):
    steps = []

    def cancel():  # a stop request after the first optimiser step
        return len(steps) >= 1

    res = finetune(
        chaos3,
        "tiny-chaos",
        "tiny-stop",
        val_fraction=0.34,
        progress=lambda ev: steps.append(ev) if ev.stage == "step" else None,
        cancel=cancel,
        **{**TINY_FT, "epochs": 3, "max_steps_per_epoch": 2},
    )
    assert res.stopped == "cancelled" and not res.registered and "stopped after 1 epoch" in res.reason
    assert len(steps) == 2 and [r["epoch"] for r in res.history] == [1]  # the epoch was finished (2 steps)
    assert (res.work_dir / "best.safetensors").exists() and (res.work_dir / "candidate.json").exists()
    man = read_manifest(res.work_dir)
    assert man["status"] == "not-registered" and man["stopped"] == "cancelled"
    # resume: same run folder (found by name), continues at epoch 2, registers when done
    res2 = finetune(
        chaos3,
        "tiny-chaos",
        "tiny-stop",
        val_fraction=0.34,
        resume=True,
        register_if_worse=True,
        **{**TINY_FT, "epochs": 3, "max_steps_per_epoch": 2},
    )
    assert res2.work_dir == res.work_dir and res2.registered and res2.stopped is None
    assert [r["epoch"] for r in res2.history] == [1, 2, 3]
    assert res2.dice_before == pytest.approx(res.dice_before)  # the baseline is reused
    assert registry.get_entry("tiny-stop").spec().training["epochs_run"] == 3
    log = (res.work_dir / "train.log").read_text()
    assert "stop requested" in log and "resumed from checkpoint_last.pt at epoch 2" in log
    # nothing left to resume
    with pytest.raises(ValueError, match="no interrupted fine-tune"):
        finetune(chaos3, "tiny-chaos", "tiny-stop", resume=True, val_fraction=0.34, **TINY_FT)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_poisoned_checkpoint_is_refused_clearly(tiny_entry, chaos3, tmp_path, capsys):
    work = tmp_path / "run"
    res = finetune(chaos3, "tiny-chaos", "tiny-p", val_fraction=0.34, work_dir=work, cancel=lambda: True, **TINY_FT)
    assert res.stopped == "cancelled"
    good = load_checkpoint(work / "checkpoint_last.pt")
    assert good["epoch"] == 0 and good["history"][0]["epoch"] == 1
    with open(work / "checkpoint_last.pt", "wb") as f:
        pickle.dump({"model": _Payload()}, f)
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(work / "checkpoint_last.pt")
    assert "refused" in str(ei.value) and "weights_only" not in str(ei.value)
    rc = cli.main(
        ["finetune", str(chaos3), "--model", "tiny-chaos", "--name", "tiny-p", "--resume", "--work-dir", str(work)]
        + ["--epochs", "1", "--batch-size", "4", "--device", "cpu", "--val-fraction", "0.34"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("napari-gi-seg: error: ") and "checkpoint_last.pt: refused" in err[-1]
    assert "weights_only" not in err[-1] and "pwned" not in capsys.readouterr().out


def test_finetune_cli_jsonl_single_patient_slice_split_and_stop_file(tiny_entry, chaos3, tmp_path, capsys):
    one = tmp_path / "one_patient"
    one.mkdir()
    for kind in ("image", "label"):
        os.symlink(os.path.realpath(chaos3 / f"{kind}_2.nii.gz"), one / f"{kind}_2.nii.gz")
    # no classes.json: the base's class order is assumed
    args = ["finetune", str(one), "--model", "tiny-chaos", "--name", "tiny-one", "--epochs", "1"]
    args += ["--batch-size", "4", "--device", "cpu", "--max-steps-per-epoch", "1", "--jsonl", "--register-if-worse"]
    assert cli.main(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    events = [ln["event"] for ln in lines]
    assert events[0] == "baseline" and events[-1] == "done" and events.count("epoch") == 1
    assert lines[0]["split"] == "slice" and isinstance(lines[0]["dice_before"], float)
    ep = lines[events.index("epoch")]
    assert ep["epoch"] == 1 and "train_loss" in ep and ep["done"] == 1 and ep["total"] == 1
    done = lines[-1]
    assert done["model"] == "tiny-one:1" and done["parent"] == "tiny-chaos:1" and done["registered"] is True
    ft = registry.get_entry("tiny-one").spec().metrics["finetune"]
    ((case, held),) = ft["held_back"].items()  # case "2", by its keyed pseudonym
    assert case.startswith("case-")
    assert ft["split"] == "slice" and len(held) >= 2
    # the held-back Dice is measured on the held-back slices only
    expected = _independent_dice("tiny-chaos:1", one / "image_2.nii.gz", one / "label_2.nii.gz", slices=held)
    assert ft["dice_before"] == pytest.approx(expected, abs=2e-3)
    # a stop file that exists from the start stops after the first step: nothing registered
    stop = tmp_path / "stop"
    stop.touch()
    args2 = [a if a != "tiny-one" else "tiny-one-stopped" for a in args] + ["--stop-file", str(stop)]
    assert cli.main(args2) == 0
    done = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()][-1]
    assert done["event"] == "done" and done["stopped"] == "cancelled" and done["registered"] is False
    assert [e for e in registry.list_models() if e.name == "tiny-one-stopped"] == []


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
