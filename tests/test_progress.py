"""The one progress protocol: events, the tqdm bridge (CLI) and the napari bridge."""

from __future__ import annotations

import threading

import pytest

from napari_gi_seg.progress import ProgressEvent, TqdmProgress, emit


def test_emit_and_event_dict():
    got = []
    emit(got.append, "epoch", 3, 20, "epoch 3/20", train_loss=0.5, val_mean_dice=0.8)
    emit(None, "epoch", 1, 1)  # no callback: nothing happens
    assert got == [ProgressEvent("epoch", 3, 20, "epoch 3/20", {"train_loss": 0.5, "val_mean_dice": 0.8})]
    assert got[0].to_dict() == {
        "event": "epoch",
        "done": 3,
        "total": 20,
        "message": "epoch 3/20",
        "train_loss": 0.5,
        "val_mean_dice": 0.8,
    }


def test_tqdm_bridge_draws_one_bar_per_stage(capsys):
    with TqdmProgress(desc="vol") as bar:
        for i in range(1, 5):
            bar(ProgressEvent("segment", i, 4))
        bar(ProgressEvent("epoch", 1, 2, metrics={"train_loss": 0.1}))  # results, no bar
        assert bar._bars == {}  # finished bars are closed
    err = capsys.readouterr().err
    assert "vol: 100%" in err and "4/4" in err and "slice" in err
    with TqdmProgress(disable=True) as bar:
        bar(ProgressEvent("segment", 1, 4))
        assert bar._bars == {}


@pytest.mark.gui
def test_napari_bridge_from_a_worker_thread(qtbot):
    from napari_gi_seg._qt._progress import NapariProgress

    bridge = NapariProgress("Fine-tuning", stages=("step",))
    t = threading.Thread(target=lambda: bridge(ProgressEvent("step", 1, 3, "epoch 1/2")))
    t.start()
    t.join()
    qtbot.waitUntil(lambda: "step" in bridge.open_bars, timeout=5000)
    bar = bridge.open_bars["step"]
    assert bar.n == 1 and bar.total == 3 and bar.desc.startswith("Fine-tuning epoch 1/2")
    bridge(ProgressEvent("epoch", 1, 2))  # not a bar stage
    bridge(ProgressEvent("step", 3, 3))
    qtbot.waitUntil(lambda: not bridge.open_bars, timeout=5000)
    bridge(ProgressEvent("step", 1, 3))
    qtbot.waitUntil(lambda: "step" in bridge.open_bars, timeout=5000)
    bridge.close()
    assert bridge.open_bars == {}
