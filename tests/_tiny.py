"""The one tiny test model: a 64 px Unet/mobilenet_v2 with the CHAOS classes, fitted
for a few dozen steps on CHAOS patient 1 (seconds on a CPU) so that its predictions
are confident and roughly organ-shaped; far from a usable model.

Fixtures built on it live in ``tests/conftest.py`` (``tiny_model``, ``tiny_entry``,
``tiny_key``); this module only holds the plain helpers they and the tests import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Label values of the CHAOS T2-SPIR ground truth (shared/data/chaos_mr_t2spir/SOURCE.md).
CHAOS_CLASS_NAMES = ["liver", "right_kidney", "left_kidney", "spleen"]
#: The same classes as a model spec lists them (kidneys mirror each other).
CHAOS_CLASSES = [
    {"index": 1, "name": "liver"},
    {"index": 2, "name": "right_kidney", "mirror": "left_kidney"},
    {"index": 3, "name": "left_kidney", "mirror": "right_kidney"},
    {"index": 4, "name": "spleen"},
]
TINY_NAME = "tiny-chaos"
TINY_SIZE = 64
TINY_STEPS = 25


def tiny_spec(version: int = 1, name: str = TINY_NAME, **extra):
    """The tiny model's :class:`~napari_gi_seg.models.spec.ModelSpec` (a fresh object)."""
    from napari_gi_seg.models.spec import ModelSpec

    return ModelSpec(
        name=name,
        version=version,
        architecture="Unet",
        encoder="mobilenet_v2",
        context_offsets=(-1, 0, 1),
        input_size=(TINY_SIZE, TINY_SIZE),
        classes=[dict(c) for c in CHAOS_CLASSES],
        description="64 px test model fitted for a few steps on CHAOS patient 1",
        **extra,
    )


def fit_tiny(image, labels, out: Path, steps: int = TINY_STEPS) -> Path:
    """Fit the tiny model on one real volume with the package's own loss and write its
    safetensors file to ``out``.

    ``image``/``labels``: :class:`~napari_gi_seg.io.volume.Volume` s ``(z, y, x)``.
    """
    import torch

    from napari_gi_seg.engine.preprocess import context_batch, normalise_intensity, resize_images, resize_labels
    from napari_gi_seg.models.network import build_network, save_weights
    from napari_gi_seg.training.losses import segmentation_loss

    torch.manual_seed(0)
    spec = tiny_spec()
    net = build_network(spec)
    norm = normalise_intensity(image.data, spec.normalisation, spec.percentiles)
    zs = np.arange(image.shape[0])
    x = resize_images(torch.from_numpy(context_batch(norm, zs, spec.context_offsets)), spec.input_size)
    y = resize_labels(torch.from_numpy(labels.data.astype(np.int64)), spec.input_size)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(zs), (8,), generator=g)
        loss = segmentation_loss(net(x[idx]), y[idx], multilabel=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    save_weights(net, out)
    return out


@dataclass
class TinyModel:
    """The fitted tiny model: ``spec``, ``weights`` (safetensors path), ``state_dict``."""

    weights: Path

    @property
    def spec(self):
        return tiny_spec()

    @property
    def state_dict(self) -> dict:
        from napari_gi_seg.models.network import load_weights

        return load_weights(self.weights)

    def network(self):
        """A fresh eval-mode copy (tests may move or modify it)."""
        from napari_gi_seg.models.network import load_network

        return load_network(self.spec, self.weights, "cpu").eval()
