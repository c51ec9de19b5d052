"""A multi-label (sigmoid) model through the whole loop, on the real UW-Madison
slices (``uwmgi/scans_sample``) and their real ``train.csv`` labels:
segment -> correct -> review -> export (single-label nnU-Net) -> fine-tune -> segment."""

from __future__ import annotations

import os

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_gi_seg._qt import _context as C
from napari_gi_seg.datasets import IGNORE_INDEX, multilabel_target

pytestmark = pytest.mark.gui

CASE_DAYS = ("case35/case35_day0", "case85/case85_day0")
GI_CLASSES = ("large_bowel", "small_bowel", "stomach")


def _gi_spec(version: int = 1):
    from napari_gi_seg.models.spec import ModelSpec

    return ModelSpec(
        name="tiny-gi",
        version=version,
        architecture="Unet",
        encoder="mobilenet_v2",
        context_offsets=(-1, 0, 1),
        input_size=(64, 64),
        classes=[{"index": i + 1, "name": n} for i, n in enumerate(GI_CLASSES)],
        activation="sigmoid",
        description="64 px sigmoid test model",
    )


@pytest.fixture
def scans(data_dir):
    """The two real UW-Madison case-day folders (one slice each)."""
    folders = [data_dir / "uwmgi" / "scans_sample" / "train" / cd for cd in CASE_DAYS]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        msg = f"real data missing: {missing}"
        pytest.fail(msg) if os.environ.get("CI", "").lower() in ("1", "true", "yes") else pytest.skip(msg)
    return folders


@pytest.fixture
def gi_model(scans, data_dir, tmp_path):
    """``tiny-gi:1``: a sigmoid Unet fitted for a few steps on the two real slices
    with their real multi-label masks (large/small bowel, stomach can overlap)."""
    from napari_gi_seg._qt._compat import guard_triton_llvm_clash

    guard_triton_llvm_clash()
    import torch

    from napari_gi_seg.engine.frame import case_to_model_frame
    from napari_gi_seg.engine.preprocess import context_batch
    from napari_gi_seg.io import read_image
    from napari_gi_seg.io.uwmgi import read_uwmgi_multilabel, volume_case_day
    from napari_gi_seg.models.network import build_network
    from napari_gi_seg.models.registry import register_model
    from napari_gi_seg.training.losses import segmentation_loss

    spec = _gi_spec()
    torch.manual_seed(0)
    net = build_network(spec)
    xs, ys = [], []
    for folder in scans:
        v = read_image(folder)[0]
        masks = read_uwmgi_multilabel(
            data_dir / "uwmgi" / "train.csv",
            volume_case_day(v),
            shape=v.shape,
            slice_numbers=v.metadata["slice_numbers"],
        )
        # the model's frame, exactly as inference will see the slice
        img, tgt = case_to_model_frame(v, masks, spec)
        xs.append(torch.from_numpy(context_batch(np.asarray(img), [0], spec.context_offsets)))
        ys.append(torch.as_tensor(tgt)[:, :1].permute(1, 0, 2, 3).float())
    x, y = torch.cat(xs), torch.cat(ys)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(80):
        loss = segmentation_loss(net(x), y, multilabel=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    from napari_gi_seg.models.network import save_weights

    weights = tmp_path / "tiny-gi.safetensors"
    save_weights(net, weights)
    return register_model(spec, weights_path=weights).key


def test_multilabel_target_ignores_every_channel():
    t = np.array([[[0, 1, 2, 3]], [[IGNORE_INDEX, 3, 0, IGNORE_INDEX]]], np.uint8)  # (z=2, y=1, x=4)
    m = multilabel_target(t, 3)
    assert m.shape == (3, 2, 1, 4) and m.dtype == np.uint8
    assert m[:, 0, 0].tolist() == [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    assert (m[:, 1, 0, 0] == IGNORE_INDEX).all() and (m[:, 1, 0, 3] == IGNORE_INDEX).all()
    assert m[:, 1, 0, 1].tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="outside 0..3"):
        multilabel_target(np.full((1, 1, 1), 7, np.uint8), 3)


@pytest.mark.slow
def test_sigmoid_model_through_the_whole_loop(qtbot, make_napari_viewer, scans, gi_model, tmp_path):
    from napari_gi_seg.curation.review import SliceState, slice_uncertainty
    from napari_gi_seg.datasets import as_multilabel, open_dataset
    from napari_gi_seg.engine.inference import segment_volume
    from napari_gi_seg.io.volume import volume_from_layer_metadata
    from napari_gi_seg.models.registry import load_model
    from napari_gi_seg.training.finetune import finetune

    viewer = make_napari_viewer()
    for folder in scans:
        viewer.open(str(folder), plugin="napari-gi-seg")
    _, dock = viewer.window.add_plugin_dock_widget("napari-gi-seg", "GI Seg (all tools)")
    qtbot.addWidget(dock)
    dock = C.unwrap(dock)
    seg, cor, exp = dock.segment, dock.correct, dock.export
    seg.select_model(gi_model)
    seg.device_combo.setCurrentText("cpu")
    spec, net = load_model(gi_model, device="cpu")
    ds_dir = tmp_path / "Dataset502_GI"
    cases = []
    for folder in scans:
        name = folder.name
        seg.image_combo.setCurrentText(name)
        qtbot.mouseClick(seg.run_button, Qt.LeftButton)
        qtbot.waitUntil(lambda: not seg.is_running, timeout=120_000)
        ctx = seg.context
        assert ctx.image_layer.name == name and ctx.activation == "sigmoid"
        assert np.asarray(ctx.labels_layer.data).any()  # the model finds some bowel or stomach
        # the uncertainty is the sigmoid one (binary entropy per channel), from the worker
        img = ctx.image_layer
        vol = volume_from_layer_metadata(np.asarray(img.data), dict(img.metadata), img.scale)
        ref = segment_volume(vol, spec, net, device="cpu", return_probs=True)
        np.testing.assert_allclose(ctx.slice_uncertainty, slice_uncertainty(ref.probs, "sigmoid"), atol=1e-3)
        assert not np.allclose(ctx.slice_uncertainty, slice_uncertainty(_softmaxish(ref.probs), "softmax"))
        # the clinician corrects the slice to the manual labels (undo-aware API) and reviews it
        manual = np.asarray(viewer.layers[f"{name} labels"].data)
        lab = ctx.labels_layer
        idx = np.nonzero(np.asarray(lab.data) != manual)
        lab.data_setitem(idx, manual[idx])
        assert ctx.tracker.state(0) == SliceState.EDITED
        cor.select_labels(lab)
        cor.go_to(0)
        qtbot.mouseClick(cor.review_button, Qt.LeftButton)
        assert ctx.tracker.reviewed_slices() == [0]
        # export (single-label nnU-Net with the ignore label)
        exp.labels_combo.setCurrentText(lab.name)
        exp.folder_edit.setText(str(ds_dir))
        exp.group_edit.setText(name.split("_")[0])
        qtbot.mouseClick(exp.export_button, Qt.LeftButton)  # written in a worker thread
        qtbot.waitUntil(lambda: not exp.is_running, timeout=60_000)
        assert "Exported 1 reviewed slices" in exp.result_label.text(), exp.result_label.text()
        cases.append((ctx, manual))

    ds = open_dataset(ds_dir)
    assert not ds.multilabel and ds.class_names == list(GI_CLASSES) and len(ds.cases) == 2
    ml = as_multilabel(ds)
    t = ml.cases[0].load().target
    assert ml.multilabel and t.shape[0] == 3 and set(np.unique(t)) <= {0, 1}

    # fine-tune the sigmoid model on the single-label export (once refused)
    res = finetune(
        ds_dir,
        gi_model,
        "tiny-gi",
        epochs=1,
        batch_size=2,
        device="cpu",
        max_steps_per_epoch=2,
        augment=False,
    )
    new_key = res.entry.key
    assert new_key == "tiny-gi:2" and res.spec.activation == "sigmoid"

    # segment again with the new version: the reviewed slices stay the clinician's
    seg.refresh_models()
    seg.select_model(new_key)
    for ctx, manual in cases:
        seg.image_combo.setCurrentText(ctx.image_layer.name)
        qtbot.mouseClick(seg.run_button, Qt.LeftButton)
        qtbot.waitUntil(lambda: not seg.is_running, timeout=120_000)
        assert seg.context is ctx and ctx.model_key == new_key
        np.testing.assert_array_equal(np.asarray(ctx.labels_layer.data), manual)


def _softmaxish(probs: np.ndarray) -> np.ndarray:
    """Sigmoid channels read as if they were softmax (background = 1 - max): what the
    old ranking assumed; it must give other figures."""
    p = probs.astype(np.float32)
    bg = np.clip(1.0 - p.max(0, keepdims=True), 0, 1)
    s = np.concatenate([bg, p], 0)
    return s / s.sum(0, keepdims=True)
