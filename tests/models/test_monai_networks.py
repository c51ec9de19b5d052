"""MONAI networks as spec architectures: built from a preset, weights through
safetensors, and refused when the preset or the input size does not fit."""

from __future__ import annotations

import pytest
import torch

from napari_gi_seg.models.network import MONAI_PRESETS, build_network, load_network, save_weights
from napari_gi_seg.models.spec import MONAI_ARCHITECTURES, ClassInfo, ModelSpec


def _spec(arch, enc, size=64):
    return ModelSpec(
        name="m",
        architecture=arch,
        encoder=enc,
        input_size=(size, size),
        classes=[ClassInfo(1, "liver"), ClassInfo(2, "spleen")],
    )


@pytest.mark.parametrize("arch,enc", [(a, e) for a, presets in sorted(MONAI_ARCHITECTURES.items()) for e in presets])
def test_monai_network_round_trip(arch, enc, tmp_path):
    assert (arch, enc) in MONAI_PRESETS
    spec = ModelSpec.from_dict(_spec(arch, enc).to_dict())  # survives the spec file
    torch.manual_seed(0)
    net = build_network(spec).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 3, 64, 64)  # background + 2 classes
    save_weights(net, tmp_path / "w.safetensors")
    net2 = load_network(spec, tmp_path / "w.safetensors")
    with torch.no_grad():
        assert torch.equal(net2(x), y)


def test_monai_spec_refuses_unknown_preset_and_bad_size():
    with pytest.raises(ValueError, match="presets"):
        _spec("monai.UNet", "mobilenet_v2")
    with pytest.raises(ValueError, match="multiples of 16"):
        _spec("monai.DynUNet", "16-256-instance", size=72)
    with pytest.raises(ValueError, match="architecture"):
        _spec("monai.SwinUNETR", "16-256-res2")


@pytest.mark.parametrize(
    "enc,norm", [("16-256-res2-batch", torch.nn.BatchNorm2d), ("16-256-res2", torch.nn.InstanceNorm2d)]
)
def test_monai_unet_presets_name_their_normalisation(enc, norm):
    """The default preset normalises with batch norm (running statistics: the output
    does not depend on how much empty border the slice has), the older one with
    instance norm; a preset never mixes them."""
    net = build_network(_spec("monai.UNet", enc))
    kinds = {type(m) for m in net.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d))}
    assert kinds == {norm}
    assert MONAI_ARCHITECTURES["monai.UNet"][0] == "16-256-res2-batch"
