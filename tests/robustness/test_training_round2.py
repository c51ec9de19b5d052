"""Round 2, training and models: numeric options refused while parsing (no work, no run
folder), no model registered without a step, weights checked against the sha256 in the
spec, no dataset folder or case name of the user's data in anything a run writes, and
stop signals that finish the epoch and resume on the same learning-rate schedule and
step count as an uninterrupted run. Real data: CHAOS T2-SPIR patients, the tiny model."""

from __future__ import annotations

import csv
import json
import os
import signal

import pytest
from fault_helpers import PRIVATE_NAMES

from napari_gi_seg import cli
from napari_gi_seg.models import registry

PRIVATE = "Zzdoe_Janetest_MRN7734921"


def _runs_root():
    return registry.runs_root()


# ------------------------------------------------------------------ argument values, at parse time
BAD_ARGS = [
    ("train", ["--epochs", "0"], "--epochs"),
    ("train", ["--epochs", "-1"], "--epochs"),
    ("train", ["--batch-size", "0"], "--batch-size"),
    ("train", ["--lr", "-1"], "--lr"),
    ("train", ["--lr", "nan"], "--lr"),
    ("train", ["--val-fraction", "1.5"], "--val-fraction"),
    ("train", ["--val-fraction", "1"], "--val-fraction"),
    ("train", ["--max-minutes", "-5"], "--max-minutes"),
    ("train", ["--budget-minutes", "0"], "--budget-minutes"),
    ("train", ["--size", "4"], "--size"),
    ("train", ["--patience", "0"], "--patience"),
    ("train", ["--fold", "-1"], "--fold"),
    ("train", ["--seed", "-3"], "--seed"),
    ("train", ["--num-workers", "-1"], "--num-workers"),
    ("train", ["--max-steps-per-epoch", "0"], "--max-steps-per-epoch"),
    ("train", ["--context", "-1,0,0"], "--context"),  # a repeated offset
    ("train", ["--context", "0,500"], "--context"),  # beyond +-64 slices
    ("finetune", ["--epochs", "-1"], "--epochs"),
    ("finetune", ["--epochs", "0"], "--epochs"),
    ("finetune", ["--val-fraction", "1.5"], "--val-fraction"),
    ("finetune", ["--val-fraction", "0"], "--val-fraction"),
    ("finetune", ["--max-minutes", "-5"], "--max-minutes"),
    ("finetune", ["--batch-size", "0"], "--batch-size"),
    ("finetune", ["--lr", "-1"], "--lr"),
    ("finetune", ["--lr", "inf"], "--lr"),
    ("segment", ["--batch-size", "0"], "--batch-size"),
    ("evaluate", ["--batch-size", "0"], "--batch-size"),
]


def _base_args(cmd: str, chaos3) -> list[str]:
    return {
        "train": ["train", str(chaos3), "--name", "m", "--device", "cpu"],
        "finetune": ["finetune", str(chaos3), "--model", "chaos-t2spir", "--name", "m", "--device", "cpu"],
        "segment": ["segment", str(chaos3 / "image_1.nii.gz"), "-o", str(chaos3 / "never.nii.gz")],
        "evaluate": ["evaluate", str(chaos3), "--device", "cpu"],
    }[cmd]


@pytest.mark.parametrize(("cmd", "bad", "option"), BAD_ARGS, ids=[f"{c}{''.join(b)}" for c, b, _ in BAD_ARGS])
def test_numeric_options_are_refused_while_parsing(cmd, bad, option, chaos3, capsys):
    with pytest.raises(SystemExit) as ei:
        cli.main([*_base_args(cmd, chaos3), f"{bad[0]}={bad[1]}"])
    err = capsys.readouterr().err
    assert ei.value.code == 2 and f"argument {option}" in err and bad[1] in err, err
    assert "Traceback" not in err
    assert not _runs_root().exists() or not any(_runs_root().iterdir())  # no run folder, no work
    assert not (chaos3 / "never.nii.gz").exists()


def test_api_refuses_zero_epochs_before_any_work(chaos3):
    from napari_gi_seg.errors import UsageError
    from napari_gi_seg.training.trainer import TrainConfig, train

    for bad in ({"epochs": 0}, {"batch_size": 0}, {"lr": -1.0}, {"val_fraction": 1.5}, {"max_minutes": -5.0}):
        with pytest.raises(UsageError, match=next(iter(bad))):
            train(TrainConfig(dataset=str(chaos3), name="zero", device="cpu", **bad))
    assert not _runs_root().exists() or not any(_runs_root().iterdir())
    assert [e for e in registry.list_models() if e.name == "zero"] == []


def test_no_model_is_registered_without_a_step(one_patient, monkeypatch):
    from napari_gi_seg.training.trainer import Trainer

    monkeypatch.setattr(Trainer, "epochs", lambda self: iter(()))  # e.g. --resume of a run with nothing left
    res = Trainer(_cfg(one_patient, name="nostep", epochs=1)).fit()
    assert res.entry is None and [e for e in registry.list_models() if e.name == "nostep"] == []
    assert json.loads((res.work_dir / "run.json").read_text())["status"] == "not-registered"
    assert "no optimiser step was taken: nothing is registered" in (res.work_dir / "train.log").read_text()


# ------------------------------------------------------------------ weights integrity
def test_weights_sha256_recorded_and_checked_on_load(tiny_entry, chaos_image_path, tmp_path, capsys):
    from napari_gi_seg.models.network import WeightsIntegrityError, weights_sha256
    from napari_gi_seg.models.spec import ModelSpec

    spec = tiny_entry.spec()
    assert spec.weights_sha256 == weights_sha256(tiny_entry.weights_path)
    registry.load_model("tiny-chaos")  # intact: loads
    w = tiny_entry.weights_path
    raw = bytearray(w.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit inside a tensor: safetensors itself would load it
    w.write_bytes(bytes(raw))
    with pytest.raises(WeightsIntegrityError) as ei:
        registry.load_model("tiny-chaos")
    assert str(tiny_entry.folder) in str(ei.value) and "sha256" in str(ei.value)
    rc = cli.main(["segment", str(chaos_image_path), "-o", str(tmp_path / "s.nii.gz"), "--model", "tiny-chaos"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(tiny_entry.folder) in err[0] and "damaged" in err[0], err
    assert not (tmp_path / "s.nii.gz").exists()
    # an older spec without the field still loads (unchecked)
    d = json.loads((tiny_entry.folder / "spec.json").read_text())
    d.pop("weights_sha256")
    (tiny_entry.folder / "spec.json").write_text(json.dumps(d))
    assert ModelSpec.load(tiny_entry.folder / "spec.json").weights_sha256 == ""
    registry.load_model("tiny-chaos")


def test_bundled_models_carry_their_weights_sha256():
    from napari_gi_seg.models.network import weights_sha256

    bundled = [e for e in registry.list_models() if e.bundled]
    assert len(bundled) >= 2
    for e in bundled:
        assert e.spec().weights_sha256 == weights_sha256(e.weights_path), e.key


# ------------------------------------------------------------------ no names of the user's data
@pytest.fixture
def private_dataset(tmp_path, chaos_dir):
    """A NIfTI-pairs dataset whose folder and first case are named after a patient."""
    ds = tmp_path / PRIVATE
    ds.mkdir()
    for src, case in (("1", PRIVATE), ("2", "Roe_Richard_MRN1234")):
        for kind in ("image", "label"):
            os.symlink(chaos_dir / f"{kind}_{src}.nii.gz", ds / f"{kind}_{case}.nii.gz")
    (ds / "classes.json").write_text(json.dumps(["liver", "right_kidney", "left_kidney", "spleen"]))
    return ds


def _assert_no_leak(files):
    for f in files:
        text = f.read_text()
        assert not [w for w in PRIVATE_NAMES if w in text], f.name


def test_finetune_writes_no_dataset_or_case_name(tiny_entry, private_dataset):
    """``finetune`` from the tiny model (``train``: tests/robustness/test_privacy.py)."""
    from napari_gi_seg.training.finetune import finetune

    ft = finetune(
        private_dataset,
        "tiny-chaos",
        "site-ft",
        epochs=1,
        max_steps_per_epoch=1,
        batch_size=4,
        device="cpu",
        augment=False,
        val_fraction=0.5,
        register_if_worse=True,
    )
    assert ft.registered
    files = [ft.entry.folder / n for n in ("spec.json", "MODEL_CARD.md")]
    files += [ft.work_dir / n for n in ("run.json", "train.log", "candidate.json", "metrics.csv")]
    _assert_no_leak(files)
    fts = ft.entry.spec()
    assert fts.metrics["finetune"]["dataset"].startswith("dataset-") and fts.training["dataset"].startswith("dataset-")
    assert all(p.startswith("case-") for p in fts.metrics["finetune"]["held_back"])
    assert "site-ft" in (ft.entry.folder / "MODEL_CARD.md").read_text()  # the user's own words: as given


# ------------------------------------------------------------------ stop signals and --resume
def _lrs(events):
    return [e.metrics["lr"] for e in events if e.stage == "step"]


def _cfg(ds, **kw):
    from napari_gi_seg.training.trainer import TrainConfig

    base = dict(dataset=str(ds), name="sched", size=32, epochs=3, batch_size=4, max_steps_per_epoch=3)
    return TrainConfig(**{**base, "augment": False, "val_fraction": 0.0, "device": "cpu", **kw})


@pytest.fixture(scope="module")
def one_patient(tmp_path_factory, chaos_dir):
    ds = tmp_path_factory.mktemp("one")
    for kind in ("image", "label"):
        os.symlink(chaos_dir / f"{kind}_1.nii.gz", ds / f"{kind}_1.nii.gz")
    (ds / "classes.json").write_text(json.dumps(["liver", "right_kidney", "left_kidney", "spleen"]))
    return ds


@pytest.fixture(scope="module")
def uninterrupted(one_patient, tmp_path_factory):
    """The reference run: 3 epochs x 3 steps, never stopped (its own user folder: a
    module fixture is made before the per-test one)."""
    from napari_gi_seg.training.trainer import train

    root = tmp_path_factory.mktemp("uninterrupted")
    old = os.environ.get("NAPARI_GI_SEG_HOME")
    os.environ["NAPARI_GI_SEG_HOME"] = str(root / "home")
    try:
        ev: list = []
        res = train(_cfg(one_patient, register=False, work_dir=str(root / "run")), ev.append)
    finally:
        if old is None:
            os.environ.pop("NAPARI_GI_SEG_HOME")
        else:
            os.environ["NAPARI_GI_SEG_HOME"] = old
    return _lrs(ev), res


@pytest.mark.parametrize("grace", [0.0, 120.0], ids=["partial-epoch", "epoch-finished"])
def test_stop_then_resume_follows_the_uninterrupted_schedule(grace, one_patient, uninterrupted, tmp_path):
    from napari_gi_seg.training.checkpoint import load_checkpoint
    from napari_gi_seg.training.trainer import train

    lrs_u, res_u = uninterrupted
    assert len(lrs_u) == 9
    work = str(tmp_path / "run")
    ev1: list = []
    cancel = lambda: len(_lrs(ev1)) >= 4  # noqa: E731 - requested during step 1 of epoch 2
    r1 = train(_cfg(one_patient, register=False, work_dir=work, stop_grace_s=grace), ev1.append, cancel)
    log = (r1.work_dir / "train.log").read_text()
    ck = load_checkpoint(r1.work_dir / "checkpoint_last.pt")
    assert r1.stopped == "cancelled" and ck["epoch"] == 1
    if grace == 0:
        assert len(_lrs(ev1)) == 4 and ck["epoch_steps"] == 1 and r1.history[-1]["partial"] is True
        assert "epoch 2 ended after 1 of 3 steps and was checkpointed as a partial epoch" in log
    else:
        assert len(_lrs(ev1)) == 6 and ck["epoch_steps"] == 3  # the epoch was finished
        assert "stop requested at epoch 2/3, step 1/3: epoch 2 completed (3 steps)" in log
    assert "ending after epoch" not in log
    ev2: list = []
    r2 = train(_cfg(one_patient, register=False, work_dir=work, resume=True), ev2.append)
    lrs = _lrs(ev1) + _lrs(ev2)
    assert len(lrs) == len(lrs_u) == 9  # the same step count (was ~70 of 90 before)
    assert lrs == pytest.approx(lrs_u, rel=1e-9)  # the same one-cycle schedule
    assert r2.stopped is None and [h["epoch"] for h in r2.history] == [1, 2, 3]
    assert [h["steps"] for h in r2.history] == [3, 3, 3] and not any(h.get("partial") for h in r2.history)
    assert r2.history[-1]["lr"] == pytest.approx(res_u.history[-1]["lr"])
    assert load_checkpoint(r2.work_dir / "checkpoint_last.pt")["global_step"] == 9


def test_sigterm_during_finetune_cli_finishes_the_epoch_and_resume_completes(
    tiny_entry, one_patient, monkeypatch, capsys
):
    from napari_gi_seg.training import step as step_mod  # the trainer's optimisation step

    real_loss, calls = step_mod.segmentation_loss, []

    def loss_then_signal(*a, **k):
        calls.append(1)
        if len(calls) == 1:  # the first optimiser step (epoch 1 of 2, step 1/2): SIGTERM as a scheduler sends it
            os.kill(os.getpid(), signal.SIGTERM)
        return real_loss(*a, **k)

    monkeypatch.setattr(step_mod, "segmentation_loss", loss_then_signal)
    args = ["finetune", str(one_patient), "--model", "tiny-chaos", "--name", "ft-sig", "--epochs", "2"]
    args += ["--max-steps-per-epoch", "2", "--batch-size", "4", "--device", "cpu", "--register-if-worse"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "not registered: stopped after 1 epoch(s)" in out, out
    assert [e for e in registry.list_models() if e.name == "ft-sig"] == []
    (work,) = [p for p in _runs_root().iterdir() if p.name.startswith("ft-sig-")]
    log = (work / "train.log").read_text()
    assert "SIGTERM received" in log and "epoch 1 completed (2 steps) and checkpointed" in log
    assert "--resume continues with epoch 2" in log
    monkeypatch.setattr(step_mod, "segmentation_loss", real_loss)
    assert cli.main([*args, "--resume"]) == 0
    assert "registered ft-sig:1" in capsys.readouterr().out
    rows = list(csv.DictReader((work / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and [int(r["steps"]) for r in rows] == [2, 2]
    spec = registry.get_entry("ft-sig").spec()
    assert spec.training["optimiser_steps"] == 4 and spec.training["epochs_run"] == 2
    assert "resumed from checkpoint_last.pt at epoch 2 (optimiser step 3)" in log + (work / "train.log").read_text()
