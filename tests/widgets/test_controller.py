"""The case controller (napari_gi_seg._qt.controller): model writes through one undo
step that spare the clinician's slices, the layer rules, and the one job runner in
its worker-thread and synchronous modes (same callbacks, same order, cancel)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gi_seg._qt.controller import active_case, case_for_image, run_job
from napari_gi_seg.curation.review import SliceState
from napari_gi_seg.errors import ConflictError

NAMES = {0: "background", 1: "liver", 2: "kidney"}
COLOURS = {1: "#ff0000", 2: "#00ff00"}


@pytest.fixture
def case(chaos_image_layer, chaos_volumes):
    viewer, image = chaos_image_layer
    ctl = case_for_image(viewer, image, NAMES, COLOURS, "test:1")
    return viewer, image, ctl, np.asarray(chaos_volumes[1].data, np.uint8)


def test_write_model_output_one_undo_step_spares_edited_and_reviewed(case):
    viewer, _, ctl, truth = case
    layer = ctl.labels_layer
    zs = [10, 11, 12, 13]
    ctl.write_model_output(zs, truth[zs])
    np.testing.assert_array_equal(np.asarray(layer.data)[zs], truth[zs])
    assert [ctl.tracker.state(z) for z in zs] == [SliceState.PREDICTED] * 4
    # the clinician edits slice 11 and reviews slice 12 (napari's paint path)
    layer.data_setitem((np.array([11]), np.array([5]), np.array([5])), 2)
    assert ctl.tracker.state(11) == SliceState.EDITED
    ctl.mark_reviewed(12)
    before = np.array(layer.data)
    other = np.roll(truth[zs], 7, axis=2)  # a different "model output"
    written = ctl.write_model_output(zs, other)
    assert written == [10, 13] and ctl.protected_slices() == {11, 12}
    after = np.asarray(layer.data)
    np.testing.assert_array_equal(after[[11, 12]], before[[11, 12]])
    np.testing.assert_array_equal(after[[10, 13]], other[[0, 3]])
    assert ctl.tracker.state(11) == SliceState.EDITED and ctl.tracker.state(12) == SliceState.REVIEWED
    np.testing.assert_array_equal(np.asarray(ctl.prediction_layer.data)[zs], other)  # the model's own record
    layer.undo()  # the whole write is one step
    np.testing.assert_array_equal(np.asarray(layer.data), before)
    assert ctl.write_model_output(zs, other, overwrite=True) == zs
    np.testing.assert_array_equal(np.asarray(layer.data)[zs], other)
    with pytest.raises(ValueError, match="model output of shape"):
        ctl.write_model_output([1, 2], truth[:3])


def test_write_model_voxels_per_voxel_values_spare_edited_slices(case):
    """The post-processing's reassigned fragments: one label per voxel, one undo step,
    the edited slice left as the clinician painted it."""
    _, _, ctl, truth = case
    layer = ctl.labels_layer
    zs = [10, 11, 12]
    ctl.write_model_output(zs, truth[zs])
    layer.data_setitem((np.array([11]), np.array([5]), np.array([5])), 2)  # the clinician edits slice 11
    before = np.array(layer.data)
    idx = np.nonzero(truth[zs] == 1)
    idx = (np.asarray(zs)[idx[0]], idx[1], idx[2])
    values = np.where(idx[2] % 2 == 0, 2, 0).astype(np.uint8)  # liver voxels: half to kidney, half to background
    n = ctl.write_model_voxels(idx, values)
    on10 = idx[0] != 11
    assert n == int(on10.sum()) > 0
    after = np.asarray(layer.data)
    np.testing.assert_array_equal(after[idx[0][on10], idx[1][on10], idx[2][on10]], values[on10])
    np.testing.assert_array_equal(after[11], before[11])
    np.testing.assert_array_equal(np.asarray(ctl.prediction_layer.data)[idx], values)  # the model's own record
    layer.undo()
    np.testing.assert_array_equal(np.asarray(layer.data), before)


def test_show_case_active_segmentation_locked_prediction(case):
    viewer, image, ctl, truth = case
    ctl.write_model_output([0], truth[[0]])
    viewer.layers.selection.active = ctl.prediction_layer
    ctl.show_case()
    assert viewer.layers.selection.active is ctl.labels_layer and ctl.labels_layer.visible
    pred = ctl.prediction_layer
    assert not pred.visible and not pred.editable
    pred.editable = True  # napari resets editable when slicing; the lock holds
    assert not pred.editable
    assert active_case(viewer) is ctl
    viewer.layers.selection.active = image
    assert active_case(viewer) is ctl


def _count(n, pause=0.0, progress=None, cancel=None):
    import time

    from napari_gi_seg.progress import emit

    for i in range(n):
        if cancel():
            return "cancelled"
        emit(progress, "segment", i + 1, n)
        yield i
        time.sleep(pause)
    return "done"


def _fail(progress=None, cancel=None):
    raise RuntimeError("boom")


@pytest.mark.parametrize("sync", [True, False])
def test_job_runner_same_callbacks_in_both_modes(qtbot, sync):
    calls = []
    job = run_job(
        _count,
        3,
        title="Counting",
        on_yielded=lambda v: calls.append(("y", v)),
        on_returned=lambda v: calls.append(("r", v)),
        on_progress=lambda e: calls.append(("p", e.done)),
        on_finished=lambda: calls.append(("f",)),
        sync=sync,
    )
    qtbot.waitUntil(lambda: not job.is_running, timeout=10_000)
    assert [c for c in calls if c[0] != "p"] == [("y", 0), ("y", 1), ("y", 2), ("r", "done"), ("f",)]
    assert sorted(c[1] for c in calls if c[0] == "p") == [1, 2, 3]
    assert job.result == "done" and not job._bars.open_bars

    errs = []
    job = run_job(_fail, on_errored=errs.append, on_returned=lambda v: errs.append("returned"), sync=sync)
    qtbot.waitUntil(lambda: not job.is_running, timeout=10_000)
    assert len(errs) == 1 and isinstance(errs[0], RuntimeError) and job.error is errs[0]


def test_job_cancel_and_one_job_per_case(qtbot, case):
    _, _, ctl, _ = case
    seen = []

    def on_yielded(v):
        seen.append(v)
        if v == 1:
            job.cancel()

    job = ctl.run(_count, 1000, 0.01, on_yielded=on_yielded, sync=False)
    with pytest.raises(ConflictError):
        ctl.run(_count, 1)
    qtbot.waitUntil(lambda: not job.is_running, timeout=10_000)
    assert job.cancelled and job.result == "cancelled" and len(seen) < 1000 and not ctl.is_running
    assert ctl.run(_count, 2, sync=True).result == "done"


def test_a_failed_job_in_a_viewer_raises_nothing_into_the_event_loop(qtbot, make_napari_viewer):
    """With a napari window, napari's task-status hook on a worker's ``errored`` signal is
    called with one argument too many (a TypeError in the event loop, which pytest-qt
    reports as an error of this test): failures come back as values instead."""
    make_napari_viewer()
    errs, done = [], []
    job = run_job(_fail, on_errored=errs.append, on_finished=lambda: done.append(1), sync=False)
    qtbot.waitUntil(lambda: bool(done), timeout=10_000)
    qtbot.wait(100)
    assert len(errs) == 1 and str(errs[0]) == "boom" and job.error is errs[0] and job.result is None

    def _gen_fail(progress=None, cancel=None):
        yield 1
        raise RuntimeError("late boom")

    seen = []
    job = run_job(
        _gen_fail, on_yielded=seen.append, on_errored=errs.append, on_finished=lambda: done.append(2), sync=False
    )
    qtbot.waitUntil(lambda: 2 in done, timeout=10_000)
    assert seen == [1] and str(errs[1]) == "late boom"
