"""``napari-gi-seg train`` end to end on 3 real CHAOS patients at 64 px, and ``--resume``."""

from __future__ import annotations

import csv
import json

import numpy as np

from napari_gi_seg import cli
from napari_gi_seg._privacy import public_dataset_name
from napari_gi_seg.models import registry


def test_train_registers_loadable_model_and_resume_continues(chaos3, tmp_path, tiny_train_args):
    from napari_gi_seg.io.nifti import read_nifti

    chaos_volume = read_nifti(chaos3 / "image_1.nii.gz", as_labels=False)
    work = tmp_path / "run"
    base = [*tiny_train_args(chaos3, "cli-tiny", batch_size=4), "--work-dir", str(work)]
    # a time budget of ~6 ms stops the run after its first epoch (the best weights are registered)
    assert cli.main(base + ["--max-minutes", "0.0001"]) == 0
    e1 = registry.get_entry("cli-tiny")
    s1 = e1.spec()
    assert (e1.version, s1.training["epochs_run"]) == (1, 1)
    assert [c.name for c in s1.classes] == ["liver", "right_kidney", "left_kidney", "spleen"]
    assert s1.training["val_patients"] and not set(s1.training["val_patients"]) & set(s1.training["train_patients"])
    spec, net = registry.load_model("cli-tiny")
    from napari_gi_seg.engine.inference import segment_volume

    res = segment_volume(chaos_volume, spec, net, slices=[10, 11], device="cpu")
    assert res.labels.shape == chaos_volume.shape and res.labels.max() <= 4

    assert cli.main(base + ["--resume"]) == 0
    e2 = registry.get_entry("cli-tiny")
    s2 = e2.spec()
    assert e2.version == 2 and s2.training["epochs_run"] == 2
    with open(e2.folder / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]  # epoch 1 from the checkpoint, epoch 2 trained now
    assert np.isfinite(float(rows[1]["val_mean_dice"]))
    # the run folder records the run: manifest (config, split, versions, hardware, status) and one log
    man = json.loads((work / "run.json").read_text())
    assert man["kind"] == "train" and man["status"] == "registered" and man["model"] == "cli-tiny:2"
    assert man["split"] == {"train": s2.training["train_patients"], "validation": s2.training["val_patients"]}
    assert man["config"]["dataset"] == public_dataset_name(chaos3) and man["config"]["work_dir"] == "run"
    assert man["start_epoch"] == 1 and man["epochs_run"] == 2 and man["log_file"] == "train.log"
    assert man["versions"]["napari-gi-seg"] and man["hardware"]["cpus"] >= 1
    assert str(tmp_path) not in (work / "run.json").read_text()
    log = (work / "train.log").read_text()
    assert "time budget" in log and "resumed from checkpoint_last.pt at epoch 2" in log and "epoch=2" in log
    assert log.count("registered cli-tiny:") == 2  # both runs appended to the same log
    # the model card says where the validation Dice was measured
    assert s2.metrics["validation"]["measured_on"] == f"1 held-out patient(s) of {public_dataset_name(chaos3)}"


def test_debug_flag_before_or_after_the_command(capsys):
    import logging

    assert cli.main(["--debug", "models"]) == 0
    assert logging.getLogger("napari_gi_seg").level == logging.DEBUG
    assert cli.main(["models", "--debug"]) == 0 and cli.main(["models"]) == 0
    assert logging.getLogger("napari_gi_seg").level == logging.INFO
    # --debug adds the traceback of an error to the one-line message
    assert cli.main(["--debug", "segment", "missing.nii.gz", "-o", "x.nii.gz"]) == 2
    err = capsys.readouterr().err
    assert "missing.nii.gz: file not found" in err and "Traceback" in err
    assert cli.main(["segment", "missing.nii.gz", "-o", "x.nii.gz"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("napari-gi-seg: error:")


def test_train_monai_unet_with_budget_segments_real_scan(chaos3, tmp_path, tiny_train_args):
    """``--arch monai.UNet --budget-minutes``: the one-cycle schedule spans the budget,
    the run stops when it is spent, and the registered MONAI model segments a real scan
    through the engine (as the widget and ``segment`` do)."""
    from napari_gi_seg.engine.inference import segment_volume
    from napari_gi_seg.io.nifti import read_nifti

    args = tiny_train_args(chaos3, "cli-monai", batch_size=4)
    args[args.index("--epochs") + 1] = "50"  # an upper bound: the budget ends the run
    assert cli.main([*args, "--arch", "monai.UNet", "--budget-minutes", "0.02", "--flip-augment"]) == 0
    spec = registry.get_entry("cli-monai").spec()
    assert (spec.architecture, spec.encoder, spec.flip_augmented) == ("monai.UNet", "16-256-res2-batch", True)
    assert spec.training["stopped"] == "time budget" and spec.training["epochs_run"] < 50
    assert spec.training["config"]["budget_minutes"] == 0.02
    spec, net = registry.load_model("cli-monai")
    vol = read_nifti(chaos3 / "image_1.nii.gz", as_labels=False)
    res = segment_volume(vol, spec, net, slices=[10, 11], device="cpu")
    assert res.labels.shape == vol.shape and res.labels.max() <= 4
