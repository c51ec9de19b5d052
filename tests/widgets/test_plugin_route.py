"""The plugin as napari delivers it: the reader and sample through napari, every
manifest widget docked through ``add_plugin_dock_widget`` (napari hands those a
``PublicOnlyProxy`` viewer), the whole loop clicked through the one dock, the
radiological display checked against the anatomy of the real CHAOS labels."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from widget_helpers import DOCK, PLUGIN, TINY_NAME, click, open_dock_and_segment, wait_worker

from napari_gi_seg._qt import _context as C
from napari_gi_seg._qt.dock import GISegDock
from napari_gi_seg.curation.review import SliceState

TINY_FINETUNE = ["--max-steps-per-epoch", "2", "--batch-size", "4"]

pytestmark = pytest.mark.gui


def _manifest_widgets() -> list[str]:
    import npe2

    import napari_gi_seg

    m = npe2.PluginManifest.from_file(Path(napari_gi_seg.__file__).with_name("napari.yaml"))
    return [w.display_name for w in m.contributions.widgets]


def _screen(orient, y: float, x: float) -> tuple[float, float]:
    """(screen x to the right, screen y downward) of data (y, x) under napari's
    ``camera.orientation2d`` ``(vertical, horizontal)``."""
    vertical, horizontal = orient
    return (x if horizontal == "right" else -x), (y if vertical == "down" else -y)


def _assert_radiological(orient, labels: np.ndarray) -> None:
    """Patient right (the liver, 1) on the screen's left of the spleen (4); anterior
    (the liver) above the posterior kidneys (2, 3): checked on the real manual labels."""
    cent = {c: np.nonzero(labels == c)[1:] for c in (1, 2, 3, 4)}
    s = {c: _screen(orient, float(yx[0].mean()), float(yx[1].mean())) for c, yx in cent.items()}
    assert s[1][0] < s[4][0], (orient, s)  # liver left of spleen on screen
    kidneys_y = (s[2][1] + s[3][1]) / 2
    assert s[1][1] < kidneys_y, (orient, s)  # liver above the kidneys on screen


def _flipped_nifti(src: Path, dst: Path) -> Path:
    """The same scan stored with rows and columns reversed (x -> R, y -> P), the
    affine saying so: the display must come out the same on screen."""
    img = nib.load(str(src))
    data = np.asarray(img.dataobj)[::-1, ::-1, :]  # NIfTI array is (x, y, z)
    a = img.affine.copy()
    nx, ny = img.shape[:2]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = nx - 1, ny - 1
    out = nib.Nifti1Image(np.ascontiguousarray(data), a @ flip)
    nib.save(out, str(dst))
    return dst


def _dicom_helper():
    """``write_dicom_series`` from tests/io/test_dicom.py (a test helper written with pydicom)."""
    p = Path(__file__).parents[1] / "io" / "test_dicom.py"
    spec = importlib.util.spec_from_file_location("_gi_seg_test_dicom", p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.write_dicom_series


def test_proxy_is_unwrapped(make_napari_viewer):
    from napari.utils._proxies import PublicOnlyProxy

    viewer = make_napari_viewer()
    proxy = PublicOnlyProxy(viewer)
    assert C.unwrap(proxy) is viewer
    img = viewer.add_image(np.zeros((3, 4, 4), np.float32))
    assert C.unwrap(proxy.layers[0]) is img  # a fresh proxy per access, the same layer behind


def test_every_manifest_widget_docks_through_napari(qtbot, make_napari_viewer, chaos_image_path):
    import napari

    names = _manifest_widgets()
    assert names[0] == DOCK and {"Segment", "Correct and review", "Export training data", "Fine-tune"} <= set(names)
    viewer = make_napari_viewer()
    viewer.open(str(chaos_image_path), plugin=PLUGIN)
    for name in names:
        _, w = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        qtbot.addWidget(w)
        w = C.unwrap(w)
        assert isinstance(w.viewer, napari.Viewer), name  # the real viewer, not napari's proxy
    # the one dock: Segment in front, small enough for a 1366 x 768 laptop
    dock = next(C.unwrap(w) for w in viewer.window.dock_widgets.values() if isinstance(C.unwrap(w), GISegDock))
    assert dock.tabs.tabText(dock.tabs.currentIndex()) == "Segment"
    hint = dock.minimumSizeHint()
    assert hint.width() <= 420 and hint.height() <= 500, (hint.width(), hint.height())


def test_plugins_menu_route_at_laptop_size(qtbot, make_napari_viewer, chaos_image_path):
    viewer = make_napari_viewer(show=True)
    viewer.open(str(chaos_image_path), plugin=PLUGIN)
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, DOCK)
    qtbot.addWidget(dock)
    win = viewer.window._qt_window
    win.resize(1366, 768)
    qtbot.wait(300)
    canvas = viewer.window._qt_viewer.canvas.native
    assert win.height() <= 768 and win.width() <= 1366
    assert canvas.width() >= 0.5 * win.width(), (canvas.width(), win.width())  # napari's layer panels take ~320 px
    assert dock.isVisible() and C.unwrap(dock).segment.run_button.isVisible()


def test_radiological_display_nifti_both_orientations_and_dicom(
    make_napari_viewer, chaos_image_path, chaos_volumes, tmp_path
):
    _, truth = chaos_volumes
    # NIfTI as stored (x -> L, y -> A)
    v1 = make_napari_viewer()
    v1.open(str(chaos_image_path), plugin=PLUGIN)
    assert tuple(v1.camera.orientation2d) == ("up", "right")
    _assert_radiological(v1.camera.orientation2d, truth.data)
    # the same scan stored the other way round (x -> R, y -> P): the camera turns too
    flipped = _flipped_nifti(chaos_image_path, tmp_path / "flipped.nii.gz")
    v2 = make_napari_viewer()
    v2.open(str(flipped), plugin=PLUGIN)
    assert tuple(v2.camera.orientation2d) == ("down", "left")
    _assert_radiological(v2.camera.orientation2d, truth.data[:, ::-1, ::-1])
    # a DICOM series (LPS) written from the scan with pydicom; its stack is in reverse z
    image, _ = chaos_volumes
    folder = tmp_path / "dicom"
    _dicom_helper()(image, folder, "1.2.826.0.1.3680043.8.498.77", "T2 SPIR")
    v3 = make_napari_viewer()
    v3.open(str(folder), plugin=PLUGIN)
    dcm = v3.layers[0]
    assert dcm.metadata["coordinate_system"] == "LPS"
    assert np.abs(np.asarray(dcm.data) - image.data[::-1]).max() < 0.1
    _assert_radiological(v3.camera.orientation2d, truth.data[::-1])


def test_sample_opens_radiological_with_the_models_colours(make_napari_viewer):
    from napari_gi_seg.models.registry import DEFAULT_MODEL, get_entry

    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "chaos_t2spir")
    assert [lyr.name for lyr in layers] == ["image_1", "image_1 ground truth"]
    assert layers[0].visible and not layers[1].visible  # the manual labels are the hidden reference
    _assert_radiological(viewer.camera.orientation2d, np.asarray(layers[1].data))
    spec = get_entry(DEFAULT_MODEL).spec()
    lab = layers[1]
    for c in spec.classes:  # the manual labels are drawn in the bundled model's organ colours
        rgba = lab.colormap.map(np.array([c.index]))[0]
        expected = tuple(int(c.colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
        np.testing.assert_allclose(rgba[:3], expected, atol=1e-2, err_msg=c.name)
    assert list(lab.features["class_name"])[1:] == ["liver", "right_kidney", "left_kidney", "spleen"]


def test_reader_claims_only_what_it_reads(tmp_path):
    import npe2

    pm = npe2.PluginManager.instance()
    png = tmp_path / "photo.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert PLUGIN not in {r.plugin_name for r in pm.iter_compatible_readers([str(png)])}
    assert PLUGIN in {r.plugin_name for r in pm.iter_compatible_readers([str(tmp_path / "scan.nii.gz")])}
    assert PLUGIN in {r.plugin_name for r in pm.iter_compatible_readers([str(tmp_path)])}  # folders


def test_whole_loop_from_the_plugins_menu(qtbot, make_napari_viewer, chaos_image_path, tiny_key, tmp_path, monkeypatch):
    """open (reader) -> dock (menu route) -> Segment -> paint -> review -> autosave ->
    export -> fine-tune -> Segment again -> restore in a new viewer, by clicking."""
    monkeypatch.setenv("NAPARI_GI_SEG_RESTORE", "no")
    viewer, dock = open_dock_and_segment(qtbot, make_napari_viewer, chaos_image_path, tiny_key)  # tiny CHAOS model
    seg, cor, exp, ft = dock.segment, dock.correct, dock.export, dock.finetune
    n = viewer.layers[0].data.shape[0]
    qtbot.wait(100)  # let any late queued signal arrive: the final status must stay
    assert seg.status_label.text().startswith(f"Done: {n} slices"), seg.status_label.text()
    ctx = seg.context
    labels = ctx.labels_layer
    assert cor.context is ctx and exp.context() is ctx
    assert ctx.tracker.counts()["predicted"] == n

    # a brush stroke on slice 10 through napari's paint path
    C.set_current_slice(viewer, labels, 10)
    labels.brush_size = 8
    labels.mode = "paint"
    labels.paint((10, 60, 60), 4)
    assert labels.data[10, 60, 60] == 4 and ctx.tracker.state(10) == SliceState.EDITED
    # review slices 8..12 with the button
    dock.show_tab("Correct")
    cor.go_to(8)
    for _ in range(5):
        click(qtbot, cor.review_button)
    assert ctx.tracker.reviewed_slices() == [8, 9, 10, 11, 12]
    final = np.array(labels.data)

    # autosave: the button starts a worker; the session file appears
    from napari_gi_seg.curation.session import SessionStore

    fp = ctx.fingerprint()
    click(qtbot, cor.save_button)
    qtbot.waitUntil(lambda: not cor.is_saving and SessionStore().find(fp) is not None, timeout=30_000)
    assert SessionStore().load(fp).review.reviewed_slices() == [8, 9, 10, 11, 12]

    # export
    ds = tmp_path / "Dataset501_Corrections"
    dock.show_tab("Export")
    exp.folder_edit.setText(str(ds))
    click(qtbot, exp.export_button)  # the export is written in a worker thread
    wait_worker(qtbot, exp)
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["labels"]["spleen"] == 4 and meta["labels"]["ignore"] == 5
    assert "Exported 5 reviewed slices" in exp.result_label.text()

    # fine-tune from the dock's Fine-tune tab, then Segment again
    dock.show_tab("Fine-tune")
    ft.refresh_models()
    ft.folder_edit.setText(str(ds))
    ft.base_combo.setCurrentText(tiny_key)
    ft.name_edit.setText(TINY_NAME)
    ft.epochs_spin.setValue(1)
    ft.device_combo.setCurrentText("cpu")
    ft.if_worse_check.setChecked(True)  # a 1-epoch tiny run may be worse: register it, the clinician chooses
    ft.extra_args = list(TINY_FINETUNE)
    click(qtbot, ft.start_button)
    wait_worker(qtbot, ft, timeout_ms=600_000)
    assert ft.exit_code == 0, ft._stderr_tail
    new_key = ft.new_model_key
    assert new_key and new_key.startswith(TINY_NAME)
    seg.refresh_models()
    seg.select_model(new_key)
    dock.show_tab("Segment")
    click(qtbot, seg.run_button)
    wait_worker(qtbot, seg)
    assert ctx.model_key == new_key
    np.testing.assert_array_equal(labels.data[8:13], final[8:13])  # reviewed slices kept
    cor.close()  # flushes the session

    # restore in a new viewer (as after a crash), through the menu route again
    monkeypatch.setenv("NAPARI_GI_SEG_RESTORE", "yes")
    v2 = make_napari_viewer()
    v2.open(str(chaos_image_path), plugin=PLUGIN)
    _, dock2 = v2.window.add_plugin_dock_widget(PLUGIN, DOCK)
    qtbot.addWidget(dock2)
    ctx2 = C.unwrap(dock2).correct.context
    assert ctx2 is not None and ctx2 is not ctx
    assert ctx2.tracker.reviewed_slices() == [8, 9, 10, 11, 12]
    np.testing.assert_array_equal(ctx2.labels_layer.data[8:13], final[8:13])
    assert ctx2.uncertainty_at(20) is not None  # the least-confident ranking survives a restore


def test_labels_opened_beside_a_case_take_its_names_and_colours(
    qtbot, make_napari_viewer, chaos_image_path, chaos_label_path, tiny_key
):
    viewer = make_napari_viewer()
    viewer.open(str(chaos_image_path), plugin=PLUGIN)
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    qtbot.addWidget(dock)
    seg = C.unwrap(dock)
    seg.select_model(tiny_key)
    seg.device_combo.setCurrentText("cpu")
    seg.run_sync()
    ctx = seg.context
    # the manual labels file has no class names of its own (values 1..4 only)
    (manual,) = viewer.open(str(chaos_label_path), plugin=PLUGIN)
    assert manual.metadata.get("class_names") == ctx.class_names
    for k, colour in ctx.colours.items():
        rgba = manual.colormap.map(np.array([k]))[0]
        expected = tuple(int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
        np.testing.assert_allclose(rgba[:3], expected, atol=1e-2)
