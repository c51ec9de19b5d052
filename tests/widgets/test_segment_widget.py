"""Segment widget: model list, classes on the Labels layer, worker path, cancel."""

from __future__ import annotations

import numpy as np
import pytest
from widget_helpers import CHAOS_CLASSES, TINY_NAME, tiny_spec, wait_worker

from napari_gi_seg._qt import _context as C
from napari_gi_seg._qt.segment_widget import SegmentWidget


def test_models_listed_with_classes_and_selectable(qtbot, chaos_image_layer, tiny_key, tiny_model):
    viewer, _ = chaos_image_layer
    w = SegmentWidget(viewer)
    qtbot.addWidget(w)
    keys = w.refresh_models()
    assert tiny_key in keys
    w.select_model(TINY_NAME)
    assert w.model_key() == tiny_key
    assert "right_kidney" in w.classes_label.text()
    # a new version appears after refresh_models() and can be selected by key
    from napari_gi_seg.models.registry import register_model

    register_model(tiny_spec(version=2), weights_path=tiny_model.weights)
    with pytest.raises(LookupError):
        w.select_model("nonexistent-model")
    assert f"{TINY_NAME}:2" in w.refresh_models()
    w.select_model(TINY_NAME)  # newest version
    assert w.model_key() == f"{TINY_NAME}:2"


def test_worker_segments_whole_stack_into_labels_with_model_classes(qtbot, chaos_image_layer, chaos_volumes, tiny_key):
    viewer, image_layer = chaos_image_layer
    w = SegmentWidget(viewer)
    qtbot.addWidget(w)
    w.select_model(tiny_key)
    w.device_combo.setCurrentText("cpu")
    batches = []
    w.batch_spin.setValue(8)
    w.run()  # real thread_worker path
    assert w.is_running
    ctx = w.context
    ctx.changed.connect(lambda: batches.append(1))
    wait_worker(qtbot, w)
    image, _ = chaos_volumes
    labels = ctx.labels_layer
    assert labels.name == image_layer.name + C.LABELS_SUFFIX
    assert labels.data.shape == image.shape and labels.data.dtype == np.uint8
    np.testing.assert_allclose(labels.scale, image.spacing_mm)
    # class names and colours come from the model spec
    assert labels.metadata["class_names"] == {0: "background", **{c["index"]: c["name"] for c in CHAOS_CLASSES}}
    assert list(labels.features["class_name"]) == ["background", "liver", "right_kidney", "left_kidney", "spleen"]
    spec = tiny_spec()
    for c in spec.classes:
        rgba = labels.colormap.map(np.array([c.index]))[0]
        expected = tuple(int(c.colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
        np.testing.assert_allclose(rgba[:3], expected, atol=1e-2)
    # prediction kept beside, hidden; no probability volume, a (z,) uncertainty instead
    pred = ctx.prediction_layer
    assert pred is not None and not pred.visible
    np.testing.assert_array_equal(pred.data, labels.data)
    assert not hasattr(ctx, "probs")
    u = ctx.slice_uncertainty
    assert u.shape == (image.shape[0],) and u.dtype == np.float32 and np.isfinite(u).all()
    # the worker's figures are the review module's, from the same model's probabilities
    from napari_gi_seg.curation.review import slice_uncertainty
    from napari_gi_seg.engine.inference import segment_volume
    from napari_gi_seg.models.registry import load_model

    spec, net = load_model(tiny_key, device="cpu")
    ref = segment_volume(image, spec, net, device="cpu", return_probs=True)
    np.testing.assert_allclose(u, slice_uncertainty(ref.probs, spec.activation), atol=1e-3)
    # the widget's labels are the engine's (CLI) labels, voxel for voxel
    np.testing.assert_array_equal(labels.data, ref.labels)
    assert ctx.tracker.counts()["predicted"] == image.shape[0]
    assert len(batches) >= image.shape[0] // 8  # one update per batch, on the main thread


def test_cancel_stops_and_keeps_finished_slices(qtbot, chaos_image_layer, tiny_key):
    viewer, image_layer = chaos_image_layer
    w = SegmentWidget(viewer)
    qtbot.addWidget(w)
    w.select_model(tiny_key)
    w.device_combo.setCurrentText("cpu")
    w.batch_spin.setValue(2)
    results = []
    w.run_finished.connect(results.append)
    w.run()
    ctx = w.context
    # cancel as soon as the first batch has arrived
    qtbot.waitUntil(lambda: ctx.tracker.counts()["predicted"] > 0, timeout=60_000)
    w.cancel()
    wait_worker(qtbot, w)
    n = image_layer.data.shape[0]
    done = results[-1]["slices"]
    assert results[-1]["cancelled"] and 0 < len(done) < n
    states = ctx.tracker.states
    assert all(states[z] == 1 for z in done)
    assert all(states[z] == 0 for z in range(n) if z not in done)
    # the finished slices hold the prediction; the others stay empty
    np.testing.assert_array_equal(ctx.labels_layer.data[done], ctx.prediction_layer.data[done])
    rest = [z for z in range(n) if z not in done]
    assert not ctx.labels_layer.data[rest].any()


def test_brush_edit_with_only_segment_docked_survives_rerun_and_undo(qtbot, chaos_image_layer, tiny_key):
    viewer, image_layer = chaos_image_layer
    w = SegmentWidget(viewer)  # no Correct widget: the case itself owns the edits
    qtbot.addWidget(w)
    w.select_model(tiny_key)
    w.device_combo.setCurrentText("cpu")
    w.run_sync()
    ctx = w.context
    labels = ctx.labels_layer
    assert ctx.tracker.counts()["edited"] == 0  # the model's writes are not edits
    # the clinician paints on slice 10 through napari's brush path (world coords, mm)
    C.set_current_slice(viewer, labels, 10)
    labels.brush_size = 6
    labels.mode = "paint"
    labels.selected_label = 4
    world = labels.data_to_world([10, 128, 128])
    labels.paint(labels.world_to_data(world), 4)
    assert labels.data[10, 128, 128] == 4
    from napari_gi_seg.curation.review import SliceState

    assert ctx.tracker.states[10] == SliceState.EDITED
    before = np.array(labels.data[10])
    w.scope_combo.setCurrentText("current slice")
    assert w.target_slices() == [10]
    w.run_sync()  # skips the edited slice
    np.testing.assert_array_equal(labels.data[10], before)
    assert ctx.tracker.states[10] == SliceState.EDITED
    # overwrite on request, through the undo history: Ctrl-Z brings the edit back
    w.overwrite_check.setChecked(True)
    w.run_sync()
    np.testing.assert_array_equal(labels.data[10], ctx.prediction_layer.data[10])
    assert ctx.tracker.states[10] == SliceState.PREDICTED
    labels.undo()
    np.testing.assert_array_equal(labels.data[10], before)
    w.scope_combo.setCurrentText("range")
    w.z_from.setValue(5)
    w.z_to.setValue(7)
    assert w.target_slices() == [5, 6, 7]


def test_tta_offered_only_for_flip_trained_models(qtbot, chaos_image_layer, tiny_key, tiny_model):
    viewer, _ = chaos_image_layer
    w = SegmentWidget(viewer)
    w.select_model(tiny_key)  # trained without flips
    assert not w.tta_check.isEnabled() and not w.tta_check.isChecked()
    assert "without left-right flips" in w.tta_check.toolTip()
    from napari_gi_seg.models.registry import register_model

    spec = tiny_spec(version=2)
    spec.flip_augmented = True
    register_model(spec, weights_path=tiny_model.weights)
    w.refresh_models()
    w.select_model(f"{TINY_NAME}:2")
    assert w.tta_check.isEnabled() and "mirrored" in w.tta_check.toolTip()


def test_errors_are_notifications_not_crashes(qtbot, make_napari_viewer, monkeypatch):
    viewer = make_napari_viewer()
    errors = []
    import napari.utils.notifications as n

    monkeypatch.setattr(n, "show_error", errors.append)
    w = SegmentWidget(viewer)
    qtbot.addWidget(w)
    w.run_sync()  # no image
    assert errors and "image" in errors[-1].lower()
