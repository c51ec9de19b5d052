"""Export and Fine-tune widgets, and the whole clinician's loop on a real CHAOS patient."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt
from widget_helpers import TINY_NAME, wait_worker

from napari_gi_seg._qt import _context as C
from napari_gi_seg._qt.correct_widget import CorrectWidget
from napari_gi_seg._qt.export_widget import ExportWidget
from napari_gi_seg._qt.finetune_widget import FinetuneWidget, parse_jsonl_line
from napari_gi_seg._qt.segment_widget import SegmentWidget
from napari_gi_seg.curation.review import SliceState
from napari_gi_seg.datasets import IGNORE_INDEX, open_dataset
from napari_gi_seg.models import registry

#: A tiny fine-tuning run (a few optimiser steps) so the loop stays CI-sized.
TINY_FINETUNE = ["--max-steps-per-epoch", "2", "--batch-size", "4"]


def _errors(monkeypatch):
    import napari.utils.notifications as n

    errors = []
    monkeypatch.setattr(n, "show_error", errors.append)
    return errors


def test_clinician_loop(qtbot, make_napari_viewer, chaos_image_path, tiny_key, tmp_path):
    """open (plugin reader) -> Segment (worker) -> paint -> review -> export ->
    dataset readable with ignore labels -> Fine-tune -> new model selected -> Segment again."""
    viewer = make_napari_viewer()
    layers = viewer.open(str(chaos_image_path), plugin="napari-gi-seg")
    image_layer = layers[0]
    assert image_layer.data.ndim == 3 and image_layer.scale[0] == pytest.approx(7.7, rel=0.05)
    seg, cor, exp, ft = SegmentWidget(viewer), CorrectWidget(viewer), ExportWidget(viewer), FinetuneWidget(viewer)
    for name, w in (("Segment", seg), ("Correct", cor), ("Export", exp), ("Fine-tune", ft)):
        qtbot.addWidget(w)
        viewer.window.add_dock_widget(w, name=name)

    seg.select_model(tiny_key)
    seg.device_combo.setCurrentText("cpu")
    seg.run()
    wait_worker(qtbot, seg)
    ctx = seg.context
    labels = ctx.labels_layer
    assert labels.metadata["class_names"][3] == "left_kidney"
    n = labels.data.shape[0]
    assert ctx.tracker.counts()["predicted"] == n
    assert cor.context is ctx and exp.context() is ctx

    # the clinician paints a correction on slice 10 ...
    yy, xx = np.nonzero(labels.data[10] == 0)  # background pixels become spleen
    yy, xx = yy[::50][:100], xx[::50][:100]
    assert yy.size > 10
    labels.data_setitem((np.full(yy.size, 10), yy, xx), 4)
    assert ctx.tracker.state(10) == SliceState.EDITED
    # ... and reviews slices 8..12 with Shift-R
    cor.go_to(8)
    for _ in range(5):
        cor.mark_reviewed_and_next()
    assert ctx.tracker.reviewed_slices() == [8, 9, 10, 11, 12]
    final = np.array(labels.data)

    ds = tmp_path / "Dataset501_Corrections"
    exp.folder_edit.setText(str(ds))
    assert exp.export() == ds
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["labels"]["left_kidney"] == 3 and meta["labels"]["ignore"] == 5
    prov = json.loads((ds / "provenance.json").read_text())
    assert prov["cases"][0]["model"]["key"] == tiny_key
    assert prov["cases"][0]["reviewed_slices"] == [8, 9, 10, 11, 12]
    cd = prov["cases"][0]["correction_dice_per_slice"]
    assert cd["8"] == 1.0 and cd["10"] < 1.0  # only slice 10 was corrected
    dataset = open_dataset(ds)
    assert dataset.layout == "nnunet" and dataset.class_names == ["liver", "right_kidney", "left_kidney", "spleen"]
    case = dataset.cases[0].load()
    target = case.target
    np.testing.assert_array_equal(target[8:13], final[8:13])
    assert (target[:8] == IGNORE_INDEX).all() and (target[13:] == IGNORE_INDEX).all()
    assert (target[10, yy, xx] == 4).all()

    # fine-tune on the export (a tiny run, registered even if worse), with before/after Dice
    ft.refresh_models()
    ft.folder_edit.setText(str(ds))
    ft.base_combo.setCurrentText(tiny_key)
    ft.name_edit.setText(TINY_NAME)
    ft.epochs_spin.setValue(1)
    ft.device_combo.setCurrentText("cpu")
    ft.if_worse_check.setChecked(True)
    ft.extra_args = list(TINY_FINETUNE)
    results = []
    ft.run_finished.connect(results.append)
    assert ft.start()
    wait_worker(qtbot, ft, timeout_ms=600_000)
    assert ft.exit_code == 0, ft._stderr_tail
    r = results[-1]
    assert r["ok"] and r["registered"] and ft.new_model_key == f"{TINY_NAME}:2"
    assert ft.history and ft.history[0]["epoch"] == 1 and "train_loss" in ft.history[0]
    spec2 = registry.get_entry(f"{TINY_NAME}:2").spec()
    assert r["dice_before"] == pytest.approx(spec2.metrics["finetune"]["dice_before"])
    assert r["dice_after"] == pytest.approx(spec2.metrics["finetune"]["dice_after"])
    assert (
        f"base {r['dice_before']:.3f}" in ft.dice_label.text() and f"new {r['dice_after']:.3f}" in ft.dice_label.text()
    )
    # a worse version is registered (box ticked) but never selected automatically
    assert seg.model_key() == (tiny_key if r["worse"] else f"{TINY_NAME}:2")
    assert f"{TINY_NAME}:2" in [ft.base_combo.itemText(i) for i in range(ft.base_combo.count())]
    assert ft.log_path.is_file() and '"event": "done"' in ft.log_path.read_text()
    seg.select_model(f"{TINY_NAME}:2")  # the clinician's choice

    # segment again with the fine-tuned model: reviewed/edited slices are kept
    seg.run()
    wait_worker(qtbot, seg)
    assert ctx.model_key == f"{TINY_NAME}:2" and labels.metadata["model_key"] == f"{TINY_NAME}:2"
    np.testing.assert_array_equal(labels.data[8:13], final[8:13])
    assert ctx.tracker.reviewed_slices() == [8, 9, 10, 11, 12]


def test_export_errors_are_notifications(qtbot, segmented, tmp_path, monkeypatch):
    viewer, image_layer, seg, cor = segmented
    errors = _errors(monkeypatch)
    exp = ExportWidget(viewer)
    qtbot.addWidget(exp)
    ds = tmp_path / "ds"
    assert exp.export(ds) is None and "reviewed" in errors[-1]  # nothing reviewed yet
    assert not ds.exists()
    seg.context.tracker.mark_reviewed([3, 4])
    # an export interrupted by the file system leaves no dataset folder behind
    import napari_gi_seg.curation.export as export_mod

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    real_write_json = export_mod.write_json
    monkeypatch.setattr(export_mod, "write_json", boom)
    assert exp.export(ds) is None and "No space left" in errors[-1]
    assert not ds.exists() and not list(tmp_path.iterdir())
    monkeypatch.setattr(export_mod, "write_json", real_write_json)
    assert exp.export(ds) == ds and (ds / "dataset.json").is_file()
    # a dataset with other classes refuses the case, with a message
    meta = json.loads((ds / "dataset.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    meta["labels"] = {"background": 0, "stomach": 1, "ignore": 2}
    (other / "dataset.json").write_text(json.dumps(meta))
    assert exp.export(other) is None and errors


def _one_patient_dataset(tmp_path, chaos_image_path, chaos_label_path):
    """A NIfTI-pairs dataset of CHAOS patient 1 (slice-level hold-back)."""
    import os

    ds = tmp_path / "one_patient"
    ds.mkdir()
    os.symlink(chaos_image_path, ds / "image_1.nii.gz")
    os.symlink(chaos_label_path, ds / "label_1.nii.gz")
    return ds


def test_finetune_cancel_stops_gracefully_and_keeps_best_epoch(
    qtbot, make_napari_viewer, tiny_key, tmp_path, monkeypatch, chaos_image_path, chaos_label_path
):
    """The real fine-tune process, 50 epochs long: Cancel stops it through the stop
    file / SIGTERM (exit 0, no kill), the best epoch is offered and kept on request,
    and Resume continues the same run."""
    errors = _errors(monkeypatch)
    viewer = make_napari_viewer()
    ft = FinetuneWidget(viewer)
    qtbot.addWidget(ft)
    viewer.window.add_dock_widget(ft, name="Fine-tune")
    ft.folder_edit.setText(str(tmp_path / "missing"))
    assert not ft.start() and "dataset.json" in errors[-1]
    assert tiny_key in ft.refresh_models()
    ft.folder_edit.setText(str(_one_patient_dataset(tmp_path, chaos_image_path, chaos_label_path)))
    ft.base_combo.setCurrentText(tiny_key)
    ft.name_edit.setText("tiny-stopped")
    assert not ft.start(resume=True) and "No interrupted fine-tune" in errors[-1]
    ft.epochs_spin.setValue(50)
    ft.device_combo.setCurrentText("cpu")
    ft.extra_args = ["--max-steps-per-epoch", "2", "--batch-size", "4"]
    ft.kill_timeout_s = 300  # a graceful stop, not the kill, must end it
    results = []
    ft.run_finished.connect(results.append)

    def run_and_cancel():
        assert ft.start()
        qtbot.waitUntil(lambda: len(ft.history) >= 1, timeout=300_000)
        assert ft.dice_before is not None and "held-back mean Dice: base" in ft.dice_label.text()
        ft.cancel()
        wait_worker(qtbot, ft, timeout_ms=300_000)
        return results[-1]

    r = run_and_cancel()
    assert ft.exit_code == 0 and r["cancelled"] and not r["killed"] and not r["registered"], ft._stderr_tail
    assert 1 <= len(ft.history) < 50 and ft.outcome["stopped"] == "cancelled"
    assert [e.key for e in registry.list_models() if e.name == "tiny-stopped"] == []
    run_dir = Path(r["run_dir"])
    assert "stop requested" in (run_dir / "train.log").read_text()
    # the best epoch is offered and kept on request
    assert ft.register_button.isEnabled() and ft.register_button.text() == "Keep best epoch"
    qtbot.mouseClick(ft.register_button, Qt.LeftButton)
    spec = registry.get_entry("tiny-stopped").spec()
    assert ft.new_model_key == "tiny-stopped:1" and spec.parent == tiny_key
    assert spec.training["epochs_run"] == len(ft.history)
    # stopped again; Resume continues that run for one more epoch and registers it
    r = run_and_cancel()
    n = len(ft.history)
    assert r["cancelled"] and not r["killed"] and not r["registered"]
    ft.epochs_spin.setValue(n + 1)
    ft.if_worse_check.setChecked(True)
    qtbot.mouseClick(ft.resume_button, Qt.LeftButton)
    wait_worker(qtbot, ft, timeout_ms=300_000)
    r2 = results[-1]
    assert r2["registered"] and r2["run_dir"] == r["run_dir"] and ft.new_model_key == "tiny-stopped:2"
    assert [row["epoch"] for row in ft.history] == [n + 1]  # only the resumed epoch ran
    assert registry.get_entry("tiny-stopped:2").spec().training["epochs_run"] == n + 1


def test_finetune_kill_after_timeout(qtbot, make_napari_viewer, tiny_key, tmp_path):
    """A process that ignores the stop file and SIGTERM is killed after kill_timeout_s."""
    viewer = make_napari_viewer()
    ft = FinetuneWidget(viewer)
    qtbot.addWidget(ft)
    viewer.window.add_dock_widget(ft, name="Fine-tune")
    (tmp_path / "dataset.json").write_text("{}")
    ft.folder_edit.setText(str(tmp_path))
    ft.base_combo.setCurrentText(tiny_key)
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        'print(\'{"event": "epoch", "epoch": 1, "train_loss": 0.5}\', flush=True); time.sleep(60)'
    )
    ft.command = lambda resume=False: [sys.executable, "-c", stubborn]
    ft.kill_timeout_s = 1.0
    results = []
    ft.run_finished.connect(results.append)
    assert ft.start()
    qtbot.waitUntil(lambda: len(ft.history) == 1, timeout=60_000)
    ft.cancel()
    wait_worker(qtbot, ft, timeout_ms=30_000)
    assert results[-1]["killed"] and results[-1]["cancelled"] and not results[-1]["ok"]
    assert "Killed after 1 s" in ft.status_label.text() and "Resume" in ft.status_label.text()
    assert "killed" in ft.log_path.read_text()
    assert [e.key for e in registry.list_models() if e.name == TINY_NAME] == [tiny_key]


def test_jsonl_parsing():
    assert parse_jsonl_line('{"event": "epoch", "epoch": 2, "train_loss": 0.3}')["epoch"] == 2
    assert parse_jsonl_line("epoch 2 loss 0.3") is None
    assert parse_jsonl_line("{not json") is None
    assert parse_jsonl_line("[1, 2]") is None


def test_widgets_find_each_other_per_viewer(qtbot, make_napari_viewer):
    v1, v2 = make_napari_viewer(), make_napari_viewer()
    s1, s2 = SegmentWidget(v1), SegmentWidget(v2)
    qtbot.addWidget(s1)
    qtbot.addWidget(s2)
    assert C.find_widget(v1, SegmentWidget) is s1 and C.find_widget(v2, SegmentWidget) is s2
    assert C.find_widget(v1, ExportWidget) is None


def test_finetune_widget_compares_a_grown_model_like_for_like(make_napari_viewer, qtbot):
    """The Fine-tune page fed the event lines of a grown fine-tune (the CLI's --jsonl):
    the old classes' mean before -> after, the new structure on its own, and the core's
    reason when an old class fell, never the base's mean against the mean with the new
    structure (0.996 -> 0.794 'worse')."""
    viewer = make_napari_viewer()
    ft = FinetuneWidget(viewer)
    qtbot.addWidget(ft)
    pcb = {"liver": 0.996, "right_kidney": 0.995, "left_kidney": 0.997}
    lines = [
        {"event": "baseline", "done": 1, "total": 1, "dice_before": 0.996, "per_class_before": pcb},
        {"event": "epoch", "epoch": 1, "train_loss": 0.3, "val_mean_dice": 0.794, "val_dice_liver": 0.99,
         "val_dice_right_kidney": 0.99, "val_dice_left_kidney": 0.99, "val_dice_spleen": 0.216},
    ]  # fmt: skip
    for obj in lines:
        ft._handle_line(json.dumps(obj))
    text = ft.dice_label.text()
    assert "base's classes: base 0.996 -> new 0.990" in text and "spleen 0.216" in text
    assert "(worse)" not in text and "0.794" not in text
    done = {"event": "done", "done": 1, "total": 1, "worse": True, "registered": False, "new_classes": ["spleen"],
            "dice_before": 0.996, "dice_after": 0.794, "per_class_before": pcb,
            "per_class_after": {**pcb, "left_kidney": 0.90, "spleen": 0.216},
            "reason": "old class(es) fell by more than 0.02 on the held-back data (left_kidney -0.097): not "
                      "registered (register it anyway with --register-if-worse)"}  # fmt: skip
    ft._handle_line(json.dumps(done))
    assert "(worse)" in ft.dice_label.text()
    why = ft._not_registered_text(done)
    assert "left_kidney -0.097" in why and "--register-if-worse" not in why and "Register anyway" in why
