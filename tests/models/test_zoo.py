"""The seeds' networks (issue 20 item 4): every selectable architecture builds, maps a
2.5D ``(N, C, H, W)`` batch to ``(N, K + 1, H, W)`` logits and survives the registry's
safetensors round trip bit for bit; the empty-slice gate, fitted on a tiny problem,
empties slices without an organ in the engine and keeps organ slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_gi_seg.engine.inference import segment_volume
from napari_gi_seg.engine.preprocess import normalise_intensity
from napari_gi_seg.models import registry
from napari_gi_seg.models.network import build_network
from napari_gi_seg.models.spec import ModelSpec
from napari_gi_seg.models.zoo import GatedNetwork
from napari_gi_seg.training.losses import gate_loss, slice_presence

CLASSES = [{"index": 1, "name": "liver"}, {"index": 2, "name": "spleen"}]


@pytest.mark.parametrize(
    "arch, encoder, gate",
    [
        ("Unet", "resnet18", {}),
        ("UnetPlusPlus", "resnet18", {}),
        ("DeepLabV3", "resnet18", {}),
        ("DeepLabV3Plus", "resnet18", {}),
        ("torchvision.FCN", "resnet50", {}),
        ("ResUnetPlusPlus", "resnet18", {}),
        ("InceptionUnet", "16-256", {}),
        ("InceptionUnet", "16-256", {"threshold": 0.5}),
    ],
)
def test_network_builds_runs_and_round_trips(arch, encoder, gate, model_home):
    spec = ModelSpec(
        name="zoo", architecture=arch, encoder=encoder, input_size=(64, 64), classes=CLASSES, gate=dict(gate)
    )
    torch.manual_seed(0)
    net = build_network(spec).eval()
    # one batch-norm statistic away from the default, so a load that silently kept
    # defaults would differ
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean.fill_(0.25)
    x = torch.randn(2, spec.in_channels, 64, 64)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 3, 64, 64) and torch.isfinite(y).all()
    entry = registry.register_model(spec, net)
    spec2, net2 = registry.load_model(entry.key)
    assert (spec2.architecture, spec2.encoder, spec2.gate) == (arch, encoder, gate)
    assert isinstance(net2, GatedNetwork) == bool(gate)
    with torch.no_grad():
        torch.testing.assert_close(net2(x), y, rtol=0, atol=0)


class _AlwaysLiver(torch.nn.Module):
    """A segmenter that calls every pixel liver (channel 1): whatever is empty in the
    output was emptied by the gate."""

    def forward(self, x):
        y = torch.zeros(x.shape[0], 3, *x.shape[-2:])
        y[:, 1] = 5.0
        return y


def _phantom(rng, z=24, size=64):
    """``(z, y, x)`` noise volume; odd slices hold a bright disc (the "organ")."""
    vol = rng.normal(100.0, 10.0, (z, size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    for k in range(1, z, 2):
        cy, cx, r = rng.integers(18, 46), rng.integers(18, 46), rng.integers(6, 14)
        vol[k][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += 200.0
    return vol


def test_gate_empties_organless_slices_in_the_engine():
    rng = np.random.default_rng(0)
    spec = ModelSpec(
        name="gated", architecture="InceptionUnet", encoder="16-256", input_size=(64, 64), classes=CLASSES,
        gate={"threshold": 0.5},
    )  # fmt: skip
    torch.manual_seed(0)
    net = GatedNetwork(_AlwaysLiver(), spec.in_channels)
    # tiny fit of the gate with the trainer's loss on normalised 2.5D training slices
    train = normalise_intensity(_phantom(rng, z=48))
    target = torch.zeros(48, 64, 64, dtype=torch.long)
    target[1::2, 30:34, 30:34] = 1  # presence is all the gate learns from
    assert slice_presence(target, False).tolist() == [0.0, 1.0] * 24
    opt = torch.optim.Adam(net.gate.parameters(), lr=1e-2)
    idx = np.clip(np.arange(48)[:, None] + np.array([-1, 0, 1]), 0, 47)
    x_all = torch.from_numpy(train[idx])
    net.train()
    for _ in range(60):
        b = torch.from_numpy(rng.choice(48, 16, replace=False))
        _, g = net(x_all[b], with_gate=True)
        loss = gate_loss(g, target[b], False)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()

    test = _phantom(np.random.default_rng(1))
    labels = segment_volume(test, spec, net, device="cpu", precision="fp32", postprocess=False).labels
    per_slice = (labels > 0).reshape(len(labels), -1).mean(1)
    # organ slices (odd) kept whole: the segmenter's every-pixel liver passes the gate
    assert (per_slice[1::2] == 1.0).all(), per_slice
    # organ-less slices (even; their neighbours hold discs, so the 2.5D context does too) emptied
    assert (per_slice[0::2] == 0.0).all(), per_slice
    # without the gate the same network fills every slice: the emptying is the gate's
    ungated = ModelSpec.from_dict({**spec.to_dict(), "gate": {}})
    plain = segment_volume(test, ungated, net, device="cpu", precision="fp32", postprocess=False).labels
    assert (plain == 1).all()


def test_trainer_fits_the_gate_with_the_segmentation_loss(chaos3, monkeypatch):
    """A gated spec trains its gate: the trainer adds the gate's BCE on real CHAOS
    slices (targets from the labels) and the registered model is gated."""
    from napari_gi_seg.training import step as step_mod
    from napari_gi_seg.training.trainer import TrainConfig, Trainer

    seen = []

    def spy(g, y, multilabel):
        seen.append((tuple(g.shape), slice_presence(y, multilabel).tolist()))
        return gate_loss(g, y, multilabel)

    monkeypatch.setattr(step_mod, "gate_loss", spy)
    cfg = TrainConfig(
        dataset=str(chaos3), name="gated", size=64, epochs=1, batch_size=8, max_steps_per_epoch=2, augment=False,
        arch="Unet", encoder="mobilenet_v2", val_fraction=0.0, device="cpu", gate_threshold=0.3,
    )  # fmt: skip
    res = Trainer(cfg).fit()
    assert [s for s, _ in seen] == [(8,), (8,)]
    assert all(set(p) <= {0.0, 1.0} for _, p in seen)
    grad = res.model.gate.fc.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0  # the gate loss reached the gate
    spec, net = registry.load_model(res.spec.key)
    assert spec.gate == {"threshold": 0.3} and isinstance(net, GatedNetwork)


def test_gated_weights_are_the_segmenter_and_the_gate_only():
    spec = ModelSpec(
        name="g", architecture="torchvision.FCN", encoder="resnet50", classes=CLASSES, gate={"threshold": 0.5}
    )
    net = build_network(spec)
    prefixes = {k.split(".", 1)[0] for k in net.state_dict()}
    assert prefixes == {"seg", "gate"}  # the encoder is reached through a property, not stored twice
    assert net.encoder is net.seg.net.backbone
    assert not hasattr(GatedNetwork(_AlwaysLiver(), 3), "encoder")
