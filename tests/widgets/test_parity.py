"""One post-processing step: the Segment widget (docked through napari, worker
thread) shows the CLI's labels (voxel for voxel up to float ties, :data:`MAX_TIES`),
with the bundled model on a real CHAOS scan whose prediction the post-processing does
change."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt
from widget_helpers import wait_worker

from napari_gi_seg._qt import _context as C

pytestmark = pytest.mark.gui

#: CHAOS patient 3, which the bundled ``chaos-t2spir:1`` never trained on: it predicts
#: 500+ voxels outside the largest component of a single-component organ, so the
#: parity covers the post-processing (a model trained on patient 3 leaves too little
#: for the post-processing to remove).
PATIENT = 3
MODEL = "chaos-t2spir:1"
#: voxels allowed to differ: logits tied to float rounding at a class boundary can come
#: out either way between the worker thread and the CLI's main thread (2 of 2.36 M seen
#: once in the two-worker suite, none when the test runs alone); the post-processing
#: changes > 100 voxels here, so a widget that skipped it still fails
MAX_TIES = 8


def _assert_same_labels(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    n = int((a != b).sum())
    assert n <= MAX_TIES, f"{n} voxels differ"


def test_widget_labels_equal_cli_labels_on_real_chaos(qtbot, make_napari_viewer, chaos_dir, tmp_path):
    from napari_gi_seg.cli import main
    from napari_gi_seg.engine.inference import segment_volume
    from napari_gi_seg.io.nifti import read_nifti
    from napari_gi_seg.models.registry import get_entry, load_model

    scan = chaos_dir / f"image_{PATIENT}.nii.gz"
    key = get_entry(MODEL).key
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(scan), "-o", str(out), "--model", key, "--device", "cpu"]) == 0
    cli = read_nifti(out, as_labels=True).data

    viewer = make_napari_viewer()
    viewer.open(str(scan), plugin="napari-gi-seg")
    _, dock = viewer.window.add_plugin_dock_widget("napari-gi-seg", "GI Seg (all tools)")
    qtbot.addWidget(dock)
    seg = C.unwrap(dock).segment
    seg.select_model(key)
    seg.device_combo.setCurrentText("cpu")
    qtbot.mouseClick(seg.run_button, Qt.LeftButton)
    wait_worker(qtbot, seg, timeout_ms=300_000)
    ctx = seg.context
    widget = np.array(ctx.labels_layer.data, copy=True)
    _assert_same_labels(widget, cli)
    _assert_same_labels(ctx.prediction_layer.data, cli)
    # the post-processing did something here, and the widget went through it
    spec, net = load_model(key, device="cpu")
    raw = segment_volume(read_nifti(scan, as_labels=False), spec, net, device="cpu", postprocess=False).labels
    assert int((raw != cli).sum()) > 100
    # ... as one more step of napari's undo history (Ctrl-Z shows the raw output)
    ctx.labels_layer.undo()
    _assert_same_labels(ctx.labels_layer.data, raw)
    assert int((np.asarray(ctx.labels_layer.data) != widget).sum()) > 100
