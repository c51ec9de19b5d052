"""Left/right flip augmentation on a real CHAOS patient: lateralised classes swapped
(``flip_labels="swap"``, anatomical) or kept (``"keep"``, contextual)."""

from __future__ import annotations

import pytest
import torch

from napari_gi_seg.datasets import open_dataset
from napari_gi_seg.training import data as data_mod
from napari_gi_seg.training.config import TrainConfig, make_spec
from napari_gi_seg.training.data import SliceDataset


@pytest.mark.parametrize("mode", ["swap", "keep"])
def test_flip_labels_swap_or_keep_the_kidneys(chaos3, monkeypatch, mode):
    ds = open_dataset(chaos3)
    cfg = TrainConfig(dataset=str(chaos3), name="f", size=64, flip_labels=mode)
    spec = make_spec(cfg, ds)
    assert spec.flip_labels == mode
    case = ds.cases[0].load()
    plain = SliceDataset([case], spec, augment=False, allow_flip=False)
    flipped = SliceDataset([case], spec, augment=True, allow_flip=True)
    flipped.transform = None  # only the flip
    monkeypatch.setattr(data_mod.torch, "rand", lambda *a, **k: torch.tensor(0.0))  # always flip
    names = {c.name: c.index for c in spec.classes}
    rk, lk = names["right_kidney"], names["left_kidney"]
    z = max(range(len(plain)), key=lambda i: int((plain[i][1] == rk).sum()) + int((plain[i][1] == lk).sum()))
    x0, y0 = plain[z]
    x1, y1 = flipped[z]
    assert (y0 == rk).any() and (y0 == lk).any()
    torch.testing.assert_close(x1, torch.flip(x0, (-1,)))
    mirror = torch.flip(y0, (-1,))
    if mode == "keep":
        assert torch.equal(y1, mirror)  # same names: the right kidney stays "right" (beside the liver)
    else:
        assert torch.equal(y1 == lk, mirror == rk) and torch.equal(y1 == rk, mirror == lk)
        assert torch.equal(y1 == names["liver"], mirror == names["liver"])  # unpaired classes unchanged
