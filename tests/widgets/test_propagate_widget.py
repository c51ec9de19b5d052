""" "Bring the previous day's contours" as napari delivers it: docked through the Plugins
menu entry, real clicks, a worker thread, one undo step, slices marked predicted.

``NAPARI_GI_SEG_SCREENSHOTS=DIR`` also saves the window (1366 x 768) as
``DIR/propagate-widget.png`` and, at napari's default size, ``propagate-widget-default-size.png``
(those in docs/images were made that way)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from napari_gi_seg.curation.review import SliceState  # noqa: E402
from napari_gi_seg.evaluation.metrics import dice  # noqa: E402
from propagation_helpers import CLASS_NAMES, chaos_dicom_dir, load_chaos  # noqa: E402

pytestmark = pytest.mark.gui


def test_bring_previous_contours_through_the_plugins_menu(make_napari_viewer, qtbot, tmp_path):
    from napari_gi_seg._qt import _context as C
    from napari_gi_seg.io import write_labels

    root = chaos_dicom_dir()
    if root is None:
        pytest.skip("../shared/data/chaos_mr_dicom missing")
    prev, prev_lab = load_chaos(1, "t2", root)
    rs = write_labels(tmp_path / "RS_yesterday.dcm", prev_lab, prev, CLASS_NAMES)
    today_dir = root / "1" / "T1DUAL" / "DICOM_anon" / "InPhase"
    viewer = make_napari_viewer()
    [today_layer] = viewer.open(str(today_dir), plugin="napari-gi-seg")
    _, w = viewer.window.add_plugin_dock_widget("napari-gi-seg", "Bring the previous day's contours")
    w = C.unwrap(w)
    assert w.image_combo.currentText() == today_layer.name
    w.prev_edit.setText(str(root / "1" / "T2SPIR" / "DICOM_anon"))
    w.labels_edit.setText(str(rs))
    # the default choice: T2 and T1 of one session share a Frame of Reference -> elastix's
    # chain when itk-elastix is installed, else no registration (scanner coordinates)
    from napari_gi_seg.propagation.elastix import elastix_available

    assert w.stages_combo.currentText().startswith("automatic")
    with qtbot.waitSignal(w.finished, timeout=180_000):
        qtbot.mouseClick(w.run_button, Qt.LeftButton)
        assert w.cancel_button.isEnabled()
    ctx = C.find_case(viewer, today_layer)
    labels = np.asarray(ctx.labels_layer.data)
    _, truth = load_chaos(1, "t1in", root)
    d = np.mean([dice(labels == v, truth == v) for v in CLASS_NAMES])
    assert d > 0.8, d  # same session, another breath-hold (floor 0.91 for this patient, elastix 0.89)
    assert w.result.stages == (("rigid", "affine", "bspline") if elastix_available() else ())
    assert set(ctx.class_names.values()) >= set(CLASS_NAMES.values())
    zs = np.nonzero(labels.any(axis=(1, 2)))[0]
    assert all(ctx.tracker.states[z] == SliceState.PREDICTED for z in zs)
    assert sorted(w.choices) == sorted(CLASS_NAMES.values())
    assert all(c.currentText() == "propagated" for c in w.choices.values())  # no model labels yet
    if os.environ.get("NAPARI_GI_SEG_SCREENSHOTS"):
        shots = Path(os.environ["NAPARI_GI_SEG_SCREENSHOTS"])
        C.set_current_slice(viewer, today_layer, int(np.median(zs)))
        qtbot.wait(300)
        viewer.reset_view()
        viewer.screenshot(str(shots / "propagate-widget-default-size.png"), canvas_only=False)
        viewer.window._qt_window.resize(1366, 768)
        qtbot.wait(300)
        viewer.reset_view()
        viewer.screenshot(str(shots / "propagate-widget.png"), canvas_only=False)
    # one undo step takes the whole propagation back
    ctx.labels_layer.undo()
    assert not np.asarray(ctx.labels_layer.data).any()
