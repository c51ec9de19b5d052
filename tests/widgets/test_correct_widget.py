"""Correct-and-review widget: corrections through the undo history, review state,
shortcuts, least-confident slice, autosave and restore."""

from __future__ import annotations

import numpy as np

from napari_gi_seg._qt import _context as C
from napari_gi_seg._qt._context import slices_from_paint as _slices_from_paint
from napari_gi_seg._qt.correct_widget import SHORTCUTS, CorrectWidget
from napari_gi_seg.curation.review import SliceState


def _key(viewer, key):
    """The function bound to ``key`` on the viewer itself (not napari's defaults)."""
    from napari.utils.key_bindings import coerce_keybinding

    return viewer.keymap[coerce_keybinding(key)]


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_interpolation_fills_middle_slices_and_undo_reverts(qtbot, segmented):
    viewer, image_layer, seg, cor = segmented
    ctx = seg.context
    layer = ctx.labels_layer
    assert cor.context is ctx
    z0, z1, c = 10, 14, 4  # spleen
    # the clinician clears a region on z0..z1 (one undo step), keeps a stripe of
    # another class across the middle slices and draws the spleen on the end slices
    region = np.zeros(layer.data.shape, bool)
    region[z0 : z1 + 1, 20:110, 20:110] = True
    layer.data_setitem(np.nonzero(region), 0)
    stripe = np.zeros(layer.data.shape, bool)
    stripe[z0 + 1 : z1, 58:61, 20:110] = True
    layer.data_setitem(np.nonzero(stripe), 2)
    yx = layer.data.shape[1:]
    for z, r in ((z0, 10), (z1, 20)):
        yy, xx = np.nonzero(_disk(yx, 60, 60, r))
        layer.data_setitem((np.full(yy.size, z), yy, xx), c)
    assert set(range(z0, z1 + 1)) <= set(np.nonzero(ctx.tracker.states == SliceState.EDITED)[0])
    ctx.tracker.mark_predicted(range(z0 + 1, z1))  # pretend the middle was not touched
    before = np.array(layer.data)
    cor.select_class(c)
    cor.z_from.setValue(z0)
    cor.z_to.setValue(z1)
    corr = cor.interpolate()
    assert corr is not None and set(corr.z) == {z0 + 1, z0 + 2, z0 + 3}
    areas = [(layer.data[z] == c).sum() for z in range(z0, z1 + 1)]
    assert all(a > 0 for a in areas) and areas == sorted(areas)  # grows from r=10 to r=20
    assert not np.array_equal(layer.data, before)
    # other classes untouched (the stripe of class 2 crosses the interpolated discs)
    other = (before != c) & (before != 0)
    np.testing.assert_array_equal(layer.data[other], before[other])
    assert (layer.data[stripe] == 2).all()
    # the interpolated slices count as edited
    assert all(ctx.tracker.states[z] == SliceState.EDITED for z in corr.z)
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)
    layer.redo()
    assert (layer.data[z0 + 2] == c).sum() == areas[2]


def test_fill_islands_smooth_are_undoable(qtbot, segmented):
    viewer, _, seg, cor = segmented
    layer = seg.context.labels_layer
    z = 12
    C.set_current_slice(viewer, layer, z)
    assert cor.current_z() == z
    yx = layer.data.shape[1:]
    ring = _disk(yx, 128, 128, 30) & ~_disk(yx, 128, 128, 4)
    zz, yy, xx = np.nonzero(np.ones((1, *yx), bool))
    layer.data_setitem((zz + z, yy, xx), 0)  # clear slice 12 in one step
    yy, xx = np.nonzero(ring)
    layer.data_setitem((np.full(yy.size, z), yy, xx), 1)
    layer.data_setitem((np.array([z]), np.array([5]), np.array([5])), 1)  # a 1-pixel island (1.56 mm²)
    start = np.array(layer.data)
    cor.select_class(1)
    cor.scope_combo.setCurrentText("current slice")
    cor.fill_holes()
    assert layer.data[z, 128, 128] == 1
    cor.remove_islands(min_area_mm2=10.0)
    assert layer.data[z, 5, 5] == 0
    cor.smooth(sigma_mm=2.0)
    layer.undo()
    layer.undo()
    layer.undo()
    np.testing.assert_array_equal(layer.data, start)


def test_paint_marks_slice_edited(qtbot, segmented):
    viewer, _, seg, cor = segmented
    ctx = seg.context
    layer = ctx.labels_layer
    C.set_current_slice(viewer, layer, 20)
    layer.selected_label = 2
    layer.brush_size = 5
    layer.mode = "paint"
    layer.paint((20, 100, 100), 2)  # what a brush stroke does (mask-based history atom)
    assert layer.data[20, 100, 100] == 2
    assert ctx.tracker.states[20] == SliceState.EDITED
    assert ctx.tracker.counts()["edited"] == 1
    # history atoms of both kinds map to slice indices
    from napari.layers.labels.labels import _MaskedPaintAtom

    atom = _MaskedPaintAtom((slice(3, 5), slice(0, 2), slice(0, 2)), None, np.zeros((2, 2, 2)), 1)
    assert _slices_from_paint([atom, ((np.array([7, 7]), np.array([0, 1]), np.array([0, 0])), 0, 1)], 40) == {3, 4, 7}


def test_review_shortcuts_and_least_confident(qtbot, segmented):
    viewer, _, seg, cor = segmented
    ctx = seg.context
    n = ctx.tracker.n_slices
    # the shortcuts are not napari defaults and are bound on this viewer
    from napari.utils.shortcuts import default_shortcuts

    taken = {str(kb) for binds in default_shortcuts.values() for kb in binds}
    for key in SHORTCUTS:
        assert callable(_key(viewer, key))
    from napari.utils.key_bindings import coerce_keybinding

    assert not {str(coerce_keybinding(k)) for k in SHORTCUTS} & taken
    cor.go_to(0)
    nxt = _key(viewer, "Shift-R")(viewer)
    assert ctx.tracker.states[0] == SliceState.REVIEWED and cor.current_z() == 1
    assert "reviewed 1" in cor.counts_label.text()
    cor.mark_reviewed_and_next()
    assert cor.current_z() == 2
    cor.go_to(n - 1)
    _key(viewer, "Shift-N")(viewer)
    assert cor.current_z() == 2  # wraps past the reviewed slices 0 and 1
    u = ctx.uncertainty()
    assert u.shape == (n,) and u.dtype == np.float32
    _key(viewer, "Shift-U")(viewer)
    z = cor.current_z()
    open_ = [i for i in range(n) if ctx.tracker.states[i] != SliceState.REVIEWED]
    assert z in open_ and u[z] == max(u[i] for i in open_)
    assert "uncertainty" in cor.state_label.text()
    del nxt


def test_autosave_and_restore_in_new_viewer(qtbot, segmented, make_napari_viewer, monkeypatch, chaos_volumes):
    viewer, image_layer, seg, cor = segmented
    ctx = seg.context
    layer = ctx.labels_layer
    layer.data_setitem((np.array([15, 15]), np.array([3, 4]), np.array([3, 3])), 3)
    ctx.tracker.mark_reviewed(15)
    assert cor.autosave_now(wait=True) is not None  # dirty after the edit
    assert cor.autosave_now(wait=True) is None  # nothing changed since
    from napari_gi_seg.curation.session import SessionStore, image_fingerprint

    fp = image_fingerprint(np.asarray(image_layer.data))
    assert SessionStore().find(fp) is not None
    # a later change is saved when the widget closes
    layer.data_setitem((np.array([16]), np.array([3]), np.array([3])), 2)
    cor.close()
    saved = SessionStore().load(fp)
    assert saved.labels[16, 3, 3] == 2 and saved.review.states[15] == SliceState.REVIEWED
    # a new viewer with the same image offers the session; auto-accept by env
    monkeypatch.setenv("NAPARI_GI_SEG_RESTORE", "yes")
    v2 = make_napari_viewer()
    image, _ = chaos_volumes
    cor2 = CorrectWidget(v2)
    qtbot.addWidget(cor2)
    v2.add_image(image.data, **image.layer_kwargs())
    ctx2 = cor2.context
    assert ctx2 is not None and ctx2 is not ctx
    np.testing.assert_array_equal(ctx2.labels_layer.data, saved.labels)
    np.testing.assert_array_equal(ctx2.prediction_layer.data, saved.prediction)
    assert ctx2.tracker.reviewed_slices() == [15]
    assert ctx2.class_names[2] == "right_kidney" and ctx2.model_key == ctx.model_key
    # the next brush stroke goes into the visible segmentation, never the hidden prediction
    qtbot.waitUntil(lambda: v2.layers.selection.active is ctx2.labels_layer, timeout=5000)
    assert ctx2.labels_layer.visible
    assert not ctx2.prediction_layer.visible and not ctx2.prediction_layer.editable
    # "no" leaves the viewer alone and keeps the session as a dated copy that new work never overwrites
    monkeypatch.setenv("NAPARI_GI_SEG_RESTORE", "no")
    v3 = make_napari_viewer()
    cor3 = CorrectWidget(v3)
    qtbot.addWidget(cor3)
    img3 = v3.add_image(image.data, **image.layer_kwargs())
    assert [lyr.name for lyr in v3.layers] == [image.name]
    store = SessionStore()
    assert store.find(fp) is None and len(store.copies(fp)) == 1
    assert cor3.earlier_sessions(img3) == store.copies(fp)
    back = cor3.restore_earlier(store.copies(fp)[0], image_layer=img3)
    assert back is not None and back.tracker.reviewed_slices() == [15]
    np.testing.assert_array_equal(back.labels_layer.data, saved.labels)
    qtbot.waitUntil(lambda: v3.layers.selection.active is back.labels_layer, timeout=5000)


def test_tools_without_case_report_error(qtbot, make_napari_viewer, monkeypatch):
    import napari.utils.notifications as n

    errors = []
    monkeypatch.setattr(n, "show_error", errors.append)
    cor = CorrectWidget(make_napari_viewer())
    qtbot.addWidget(cor)
    assert cor.fill_holes() is None and errors
    assert cor.mark_reviewed_and_next() is None
