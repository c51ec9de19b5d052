"""float16 weight files keep what float16 cannot hold.

A promptable model trained here (fold 3, 3000 steps) had one batch-norm running variance
of 7.9e5; stored as float16 it became ``inf``, zeroed its channel at inference and
dropped box Dice on unseen patients from 0.83 (the float32 checkpoint) to 0.31.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_gi_seg.errors import InputError
from napari_gi_seg.models.network import build_network, load_state, load_weights, save_weights
from napari_gi_seg.training.prompt_train import prompt_spec

BN_KEY = "model.1.submodule.1.submodule.1.submodule.2.0.adn.N.running_var"  # the one that overflowed


def _net_with_large_statistics():
    torch.manual_seed(0)
    net = build_network(prompt_spec()).eval()
    bn_var = dict(net.named_buffers())[BN_KEY]
    bn_var[0] = 7.85e5  # the value measured on the fold-3 run
    return net


def test_half_weights_keep_batch_norm_statistics_in_float32(tmp_path):
    net = _net_with_large_statistics()
    size = save_weights(net, tmp_path / "w.safetensors", half=True)
    sd = load_file(str(tmp_path / "w.safetensors"))
    assert sd[BN_KEY].dtype == torch.float32 and torch.isfinite(sd[BN_KEY]).all()
    assert float(sd[BN_KEY][0]) == pytest.approx(7.85e5)
    convs = [v for k, v in sd.items() if k.endswith("conv.weight")]
    assert convs and all(v.dtype == torch.float16 for v in convs)  # the file is still halved
    assert size < 0.6 * save_weights(net, tmp_path / "full.safetensors")

    back = build_network(prompt_spec()).eval()
    load_state(back, load_weights(tmp_path / "w.safetensors"))
    x = torch.rand(2, 7, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = net(x).sigmoid(), back(x).sigmoid()
    assert float((a - b).abs().max()) < 0.02

    # what the old rule (every float tensor to float16) did to the same network
    naive = {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    assert not torch.isfinite(naive[BN_KEY].float()).all()


def test_weights_with_infinity_are_refused_naming_the_file(tmp_path):
    net = _net_with_large_statistics()
    sd = {k: v.clone().contiguous() for k, v in net.state_dict().items()}
    sd[BN_KEY] = sd[BN_KEY].half()  # what the old writer stored: inf
    bad = tmp_path / "diverged.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(InputError, match=r"diverged\.safetensors.*NaN or infinity"):
        load_weights(bad)
    dict(net.named_buffers())[BN_KEY][1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinity"):
        save_weights(net, tmp_path / "never.safetensors", half=True)
    assert not (tmp_path / "never.safetensors").exists()
