"""Fixtures for the engine and CLI tests: a real CHAOS volume and a tiny 2.5D model
trained on it for a few steps (once per session). The per-test user folder
(``NAPARI_GI_SEG_HOME``) comes from ``tests/conftest.py``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_gi_seg.paths import user_dir

# Label values of the CHAOS T2-SPIR ground truth (shared/data/chaos_mr_t2spir/SOURCE.md).
CHAOS_CLASS_NAMES = ["liver", "right_kidney", "left_kidney", "spleen"]
TINY_SIZE = 64


@pytest.fixture
def model_home() -> Path:
    """This test's user folder (``$NAPARI_GI_SEG_HOME``, set per test by the
    autouse fixture in ``tests/conftest.py``)."""
    return user_dir()


@pytest.fixture(scope="session")
def chaos_volume(chaos_image_path):
    from napari_gi_seg.io.nifti import read_nifti

    return read_nifti(chaos_image_path, as_labels=False)


@pytest.fixture(scope="session")
def chaos_labels(chaos_label_path):
    from napari_gi_seg.io.nifti import read_nifti

    return read_nifti(chaos_label_path, as_labels=True)


@dataclass
class TinyModel:
    spec: object
    state_dict: dict

    def network(self) -> torch.nn.Module:
        """A fresh eval-mode copy (tests may move or modify it)."""
        from napari_gi_seg.models.network import build_network

        net = build_network(self.spec)
        net.load_state_dict(self.state_dict)
        return net.eval()


@pytest.fixture(scope="session")
def tiny_model(chaos_volume, chaos_labels) -> TinyModel:
    """Unet/mobilenet_v2, 64 px, 3-slice context, trained for 4 Adam steps on
    labelled slices of CHAOS patient 1 (a few seconds on 2 cores)."""
    from napari_gi_seg.engine.preprocess import context_batch, normalise_intensity, resize_images, resize_labels
    from napari_gi_seg.models.network import build_network
    from napari_gi_seg.models.spec import ClassInfo, ModelSpec
    from napari_gi_seg.training.trainer import mirror_pairs

    mirrors = mirror_pairs(CHAOS_CLASS_NAMES)
    spec = ModelSpec(
        name="tiny-chaos",
        version=1,
        architecture="Unet",
        encoder="mobilenet_v2",
        context_offsets=(-1, 0, 1),
        input_size=(TINY_SIZE, TINY_SIZE),
        classes=[ClassInfo(i + 1, n, mirror=mirrors.get(n)) for i, n in enumerate(CHAOS_CLASS_NAMES)],
        description="test fixture",
    )
    torch.manual_seed(0)
    net = build_network(spec)
    norm = normalise_intensity(chaos_volume.data, spec.normalisation, spec.percentiles)
    z = np.flatnonzero(chaos_labels.data.reshape(chaos_labels.shape[0], -1).max(1) > 0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    rng = np.random.default_rng(0)
    for _ in range(4):
        zb = np.sort(rng.choice(z, 8, replace=False))
        x = resize_images(torch.from_numpy(context_batch(norm, zb, spec.context_offsets)), spec.input_size)
        y = resize_labels(torch.from_numpy(chaos_labels.data[zb].astype(np.int64)), spec.input_size)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return TinyModel(spec, {k: v.detach().clone() for k, v in net.state_dict().items()})


@pytest.fixture
def registered_tiny(tiny_model, model_home):
    """The tiny model registered in this test's user folder as ``tiny-chaos:1``."""
    import copy

    from napari_gi_seg.models import registry

    return registry.register_model(copy.deepcopy(tiny_model.spec), tiny_model.network())
