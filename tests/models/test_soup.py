"""Weight averaging (models.soup) on the bundled models' real weights: the exact
midpoint of two versions of one network, an average of a network with itself that
segments a real CHAOS scan exactly as the network does, and a clear refusal for
networks that are not the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_gi_seg.engine.inference import segment_volume
from napari_gi_seg.errors import InputError
from napari_gi_seg.models import registry
from napari_gi_seg.models.soup import average_weights


def test_the_average_of_two_versions_is_their_midpoint_and_leaves_them_unchanged():
    # chaos-t2spir:4 is chaos-t2spir:2 fine-tuned: one network, two points of one basin
    _, v2 = registry.load_model("chaos-t2spir:2")
    _, v4 = registry.load_model("chaos-t2spir:4")
    before = {k: v.clone() for k, v in v2.state_dict().items()}
    soup = average_weights([v2, v4])
    s2, s4, so = v2.state_dict(), v4.state_dict(), soup.state_dict()
    for k, v in so.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (s2[k] + s4[k]) / 2, rtol=0, atol=1e-6)
        else:  # num_batches_tracked: the first network's
            assert torch.equal(v, s2[k])
        assert torch.equal(s2[k], before[k])
    assert any(not torch.equal(s2[k], so[k]) for k in so if so[k].is_floating_point())
    assert not soup.training


def test_a_network_averaged_with_itself_segments_a_real_scan_as_it_does(chaos_volumes):
    spec, net = registry.load_model("chaos-t2spir:4")
    image = chaos_volumes[0]
    soup = average_weights([net, net, net])
    a = segment_volume(image, spec, net, device="cpu", precision="fp32").labels
    b = segment_volume(image, spec, soup, device="cpu", precision="fp32").labels
    assert (a > 0).sum() > 10_000
    np.testing.assert_array_equal(a, b)


def test_networks_that_differ_are_refused_by_name():
    _, v1 = registry.load_model("chaos-t2spir:1")  # segmentation-models-pytorch Unet
    _, v4 = registry.load_model("chaos-t2spir:4")  # MONAI UNet
    with pytest.raises(InputError, match=r"chaos-t2spir:1: not the same network as chaos-t2spir:4"):
        average_weights([v4, v1], ["chaos-t2spir:4", "chaos-t2spir:1"])
    with pytest.raises(InputError, match="two or more networks, got 1"):
        average_weights([v4])
