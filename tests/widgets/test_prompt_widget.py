"""The Prompt widget as napari delivers it: docked with ``add_plugin_dock_widget`` on the
CHAOS scan opened through the plugin's reader; box, clicks and a scribble placed through
the prompt layers' own events (a rectangle added to the Shapes layer, points added to
the Points layer, a brush stroke painted on the scribble Labels layer), answered in the
widget's worker; the commit lands in the case's Labels layer under a new structure,
other structures untouched, the slice marked EDITED, and one Ctrl-Z on the Labels
layer takes the commit back."""

from __future__ import annotations

import numpy as np
import pytest
from widget_helpers import wait_worker

from napari_gi_seg._qt import _context as C
from napari_gi_seg.curation.review import SliceState
from napari_gi_seg.interactive import next_click

PLUGIN = "napari-gi-seg"
WIDGET = "Prompt (box, clicks, scribbles)"
RIGHT_KIDNEY = 2

pytestmark = pytest.mark.gui


def _dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def test_prompt_widget_box_clicks_scribble_commit_undo(qtbot, make_napari_viewer, chaos_image_path, chaos_volumes):
    _, truth = chaos_volumes
    organ = truth.data == RIGHT_KIDNEY
    z = int(np.argmax(organ.sum((1, 2))))
    ys, xs = np.nonzero(organ[z])
    y0, x0, y1, x1 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1

    viewer = make_napari_viewer()
    viewer.open(str(chaos_image_path), plugin=PLUGIN)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    qtbot.addWidget(w)
    w = C.unwrap(w)
    image = viewer.layers[0]
    C.set_current_slice(viewer, image, z)

    # a new structure creates the case and its Labels layer; another structure is there already
    value = w.add_structure("kidney_r_prompted")
    ctx = w.case()
    other = w.add_structure("other")
    ctx.labels_layer.data[z, y0 : y0 + 3, x0:x1] = other  # a strip of "other" inside the box
    w.structure_combo.setCurrentText("kidney_r_prompted")

    # the box: a rectangle drawn on the Shapes layer
    w.set_tool("box")
    box_layer = w.layer("box")
    assert viewer.layers.selection.active is box_layer and box_layer.mode == "add_rectangle"
    box_layer.add_rectangles(np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], float))
    wait_worker(qtbot, w)
    preview = w.layer("preview")
    after_box = np.asarray(preview.data[z]).astype(bool)
    d_box = _dice(after_box, organ[z])
    assert d_box > 0.6, d_box

    # clicks: points added on the Points layer, the sign from T
    w.set_tool("point")
    pts = w.layer("point")
    m = after_box
    for _ in range(2):
        cy, cx, positive = next_click(m, organ[z])
        if positive != w.positive:
            w.toggle_sign()
        pts.add(np.array([z, cy, cx], float))
        wait_worker(qtbot, w)
        m = np.asarray(preview.data[z]).astype(bool)
    d_clicks = _dice(m, organ[z])
    assert d_clicks > d_box
    assert w.session.prompts(z).box == (y0, x0, y1, x1)
    assert len(w.session.prompts(z).points) == 2

    # undo (Ctrl+Z on the prompt layers): the last click goes, preview and points follow
    before_last = w.session._history[-1].mask[z].copy()
    w.undo()
    np.testing.assert_array_equal(np.asarray(preview.data[z]).astype(bool), before_last)
    assert len(pts.data) == 1
    cy, cx, positive = next_click(before_last, organ[z])
    if positive != w.positive:
        w.toggle_sign()
    pts.add(np.array([z, cy, cx], float))
    wait_worker(qtbot, w)

    # a negative scribble painted with the brush on a false region next to the kidney
    w.set_tool("scribble")
    if w.positive:
        w.toggle_sign()
    sc = w.layer("scribble")
    assert sc.selected_label == 2 and sc.mode == "paint"
    fy, fx = y0 - 4, (x0 + x1) // 2
    sc.paint((z, fy, fx), 2)
    wait_worker(qtbot, w)
    assert len(w.session.prompts(z).scribbles) == 1 and not w.session.prompts(z).scribbles[0][1]
    assert not preview.data[z, fy, fx]

    # commit: into the Labels layer, one undo step, EDITED, "other" kept
    obj = w.session.mask
    labels_before = np.asarray(ctx.labels_layer.data).copy()
    info = w.commit()
    lab = np.asarray(ctx.labels_layer.data)
    expected = labels_before.copy()
    expected[obj & (labels_before == 0)] = value
    np.testing.assert_array_equal(lab, expected)
    assert (lab == other).sum() == (labels_before == other).sum()
    assert info["slices"] == [z] and info["voxels"] == int((obj & (labels_before == 0)).sum())
    assert ctx.tracker.state(z) == SliceState.EDITED
    assert _dice(lab[z] == value, organ[z]) > 0.8
    assert not w.session.mask.any() and len(pts.data) == 0  # a new object starts
    ctx.labels_layer.undo()
    np.testing.assert_array_equal(np.asarray(ctx.labels_layer.data), labels_before)
