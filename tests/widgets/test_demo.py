"""``napari-gi-seg demo``: headless run on the CHAOS sample and the GUI set-up."""

from __future__ import annotations

import numpy as np

from napari_gi_seg.cli import main


def test_headless_demo_writes_labels_overlay_and_dice(tiny_key, tmp_path, capsys, chaos_volumes):
    rc = main(["demo", "--headless", "--out", str(tmp_path), "--model", tiny_key, "--device", "cpu"])
    assert rc == 0
    out = capsys.readouterr().out
    for organ in ("liver", "right_kidney", "left_kidney", "spleen", "mean"):
        assert organ in out
    from napari_gi_seg.io.nifti import read_nifti

    lab = read_nifti(tmp_path / "image_1_segmentation.nii.gz", as_labels=True)
    image, truth = chaos_volumes
    assert lab.shape == image.shape and lab.data.max() <= 4
    np.testing.assert_allclose(lab.affine, image.affine)
    png = (tmp_path / "image_1_overlay.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_headless_demo_dice_matches_metrics(tiny_key, tmp_path, chaos_volumes):
    from napari_gi_seg.demo import run_headless
    from napari_gi_seg.evaluation.metrics import dice
    from napari_gi_seg.io.nifti import read_nifti

    res = run_headless(tmp_path, model=tiny_key, device="cpu", quiet=True)
    _, truth = chaos_volumes
    pred = read_nifti(res["labels_path"], as_labels=True).data
    assert res["dice"]["liver"] == dice(pred == 1, truth.data == 1)
    assert res["mean_dice"] == np.mean(list(res["dice"].values()))
    assert res["dice"]["liver"] > 0.0, res["dice"]  # even the 25-step test model overlaps the liver


def test_unknown_model_is_one_line_error(tmp_path, capsys):
    rc = main(["demo", "--headless", "--out", str(tmp_path), "--model", "no-such-model"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err and err.count("\n") == 1


def test_gui_demo_docks_widgets_and_segments(qtbot, tiny_key, monkeypatch):
    from napari_gi_seg._qt.demo import open_demo_viewer

    viewer, widgets = open_demo_viewer(model=tiny_key, device="cpu", show=False)
    try:
        seg = widgets["Segment"]
        assert seg.is_running
        qtbot.waitUntil(lambda: not seg.is_running, timeout=120_000)
        names = [lyr.name for lyr in viewer.layers]
        assert names[:2] == ["image_1", "image_1 ground truth"] and not viewer.layers[1].visible
        assert "image_1 segmentation" in names and "image_1 prediction" in names
        assert seg.context.tracker.counts()["predicted"] == viewer.layers[0].data.shape[0]
        assert widgets["Correct and review"].context is seg.context
    finally:
        viewer.close()


def test_overlays_are_radiological_in_both_storage_orders(chaos_volumes):
    """The PNG overlays (demo, evaluate) flip a slice as napari's camera does: on the
    real manual labels the liver (patient right) is left of the spleen and above
    (anterior to) the kidneys, whether the scan is stored x -> L, y -> A or reversed."""
    from napari_gi_seg.evaluation.overlay import display_orientation, to_display
    from napari_gi_seg.io.volume import Volume

    image, truth = chaos_volumes
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = image.shape[2] - 1, image.shape[1] - 1
    stored_reversed = Volume(image.data[:, ::-1, ::-1], image.spacing_mm, image.affine @ flip, image.index_order, {})
    for vol, lab in ((image, truth.data), (stored_reversed, truth.data[:, ::-1, ::-1])):
        shown = to_display(lab[24], display_orientation(vol))
        rows, cols = {}, {}
        for c in (1, 2, 3, 4):
            r, k = np.nonzero(shown == c)
            rows[c], cols[c] = r.mean(), k.mean()
        assert cols[1] < cols[4]  # liver left of spleen: patient right on the picture's left
        assert rows[1] < (rows[2] + rows[3]) / 2  # anterior up
    no_frame = Volume(image.data, image.spacing_mm, image.affine, (2, 1, 0), {"coordinate_system": "none"})
    assert display_orientation(no_frame) is None


def test_headless_demo_says_when_the_sample_was_training_data(tmp_path, capsys):
    """The sample is CHAOS patient 1: version 2 trained on it (all 16 patients), version
    1 did not (a validation patient); the demo must not sell a fit as an estimate."""
    from napari_gi_seg.demo import run_headless

    v2 = run_headless(tmp_path / "v2", model="chaos-t2spir:2", device="cpu")
    out = capsys.readouterr().out
    assert v2["seen_in_training"] and "one of chaos-t2spir:2's training patients" in out
    assert v2["mean_dice"] > 0.9
    v1 = run_headless(tmp_path / "v1", model="chaos-t2spir:1", device="cpu")
    assert not v1["seen_in_training"] and "training patients" not in capsys.readouterr().out
