"""Fixtures for the dock-widget tests: a tiny registered model and a CHAOS patient.

The widget tests run under Xvfb (``pytest-xvfb``); napari's canvas does not work
with ``QT_QPA_PLATFORM=offscreen``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

from widget_helpers import tiny_spec  # noqa: E402


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory, chaos_volumes):
    """A safetensors file of a 64 px Unet/mobilenet_v2 with the CHAOS classes, fitted
    for a few dozen steps on CHAOS patient 1 (seconds on a CPU) so that its
    predictions are confident and roughly organ-shaped; far from a usable model."""
    from napari_gi_seg._qt._compat import guard_triton_llvm_clash

    guard_triton_llvm_clash()  # a viewer made by an earlier test may have loaded Mesa's LLVM
    import torch

    from napari_gi_seg.engine.preprocess import context_batch, normalise_intensity, resize_images, resize_labels
    from napari_gi_seg.models.network import build_network, save_weights
    from napari_gi_seg.training.trainer import segmentation_loss

    torch.manual_seed(0)
    spec = tiny_spec()
    net = build_network(spec)
    image, labels = chaos_volumes
    norm = normalise_intensity(image.data, spec.normalisation, spec.percentiles)
    zs = np.arange(image.shape[0])
    x = resize_images(torch.from_numpy(context_batch(norm, zs, spec.context_offsets)), spec.input_size)
    y = resize_labels(torch.from_numpy(labels.data.astype(np.int64)), spec.input_size)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(25):
        idx = torch.randint(0, len(zs), (8,), generator=g)
        loss = segmentation_loss(net(x[idx]), y[idx], multilabel=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    path = tmp_path_factory.mktemp("tiny_model") / "model.safetensors"
    save_weights(net, path)
    return path


@pytest.fixture
def tiny_model(tiny_weights):
    """``"tiny-chaos:1"`` registered in this test's isolated ``NAPARI_GI_SEG_HOME``."""
    from napari_gi_seg.models.registry import register_model

    return register_model(tiny_spec(), weights_path=tiny_weights).key


@pytest.fixture(scope="session")
def chaos_volumes(chaos_image_path, chaos_label_path):
    """(image Volume, label Volume) of CHAOS patient 1, read once."""
    from napari_gi_seg.io.nifti import read_nifti

    return read_nifti(chaos_image_path, as_labels=False), read_nifti(chaos_label_path, as_labels=True)


@pytest.fixture
def chaos_image_layer(make_napari_viewer, chaos_volumes):
    """A viewer with CHAOS patient 1 as an image layer (scale = spacing in mm)."""
    viewer = make_napari_viewer()
    image, _ = chaos_volumes
    layer = viewer.add_image(image.data, **image.layer_kwargs())
    return viewer, layer


@pytest.fixture
def segmented(qtbot, chaos_image_layer, tiny_model):
    """Viewer + Segment/Correct widgets after segmenting the whole CHAOS stack with the tiny model (sync)."""
    from napari_gi_seg._qt.correct_widget import CorrectWidget
    from napari_gi_seg._qt.segment_widget import SegmentWidget

    viewer, layer = chaos_image_layer
    seg = SegmentWidget(viewer)
    cor = CorrectWidget(viewer)
    seg.select_model(tiny_model)
    seg.device_combo.setCurrentText("cpu")
    seg.run_sync()
    return viewer, layer, seg, cor


def qt_binding_leaks_none(n: int = 200) -> bool:
    """True when the Qt binding drops a reference to ``None`` on every call of a
    void method (PySide6 6.12.0 on Python 3.11: ``QLabel.setText`` x 6,500 aborts
    the interpreter with ``none_dealloc``; Python >= 3.12 has an immortal None).
    Needs a QApplication."""
    import sys

    from qtpy.QtWidgets import QLabel

    if sys.version_info >= (3, 12):
        return False
    lab = QLabel()
    before = sys.getrefcount(None)
    for _ in range(n):
        lab.setText("x")
    lab.deleteLater()
    return before - sys.getrefcount(None) >= n * 0.9
