"""Inverted-intensity augmentation (``TrainConfig.invert_intensity``) on a real CHAOS
patient: the sample is ``1 - x`` of the plain one, labels untouched, off without
``augment``; the setting is checked before any work."""

from __future__ import annotations

import pytest
import torch

from napari_gi_seg.datasets import open_dataset
from napari_gi_seg.errors import UsageError
from napari_gi_seg.training import data as data_mod
from napari_gi_seg.training.config import TrainConfig, make_spec
from napari_gi_seg.training.data import SliceDataset, invert_intensity


def test_inverted_samples_reverse_the_normalised_intensity(chaos3, monkeypatch):
    ds = open_dataset(chaos3)
    cfg = TrainConfig(dataset=str(chaos3), name="inv", size=64, invert_intensity=0.5)
    spec = make_spec(cfg, ds)
    case = ds.cases[0].load()
    plain = SliceDataset([case], spec, augment=False, allow_flip=False, invert=1.0)
    assert plain.invert == 0.0  # no augmentation: no inversion either
    inv = SliceDataset([case], spec, augment=True, allow_flip=False, invert=1.0)
    inv.transform = None  # only the inversion
    monkeypatch.setattr(data_mod.torch, "rand", lambda *a, **k: torch.tensor(0.0))  # always invert
    z = len(plain) // 2
    (x0, y0), (x1, y1) = plain[z], inv[z]
    torch.testing.assert_close(x1, 1.0 - x0)
    assert torch.equal(y0, y1) and x0.min() >= 0 and x0.max() <= 1
    assert float(x1[:, 0, 0].min()) == pytest.approx(1.0)  # the air outside the body turns bright
    z_x = torch.randn(3, 8, 8)
    torch.testing.assert_close(invert_intensity(z_x, "zscore"), -z_x)


@pytest.mark.parametrize("p", [-0.1, 1.5, True, "0.2"])
def test_invert_intensity_must_be_a_probability(p):
    with pytest.raises(UsageError, match="invert_intensity"):
        TrainConfig(dataset="d", name="n", invert_intensity=p).validate()


def test_train_command_refuses_an_inversion_probability_outside_0_1(tmp_path, capsys):
    from napari_gi_seg.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", str(tmp_path), "--name", "inv", "--invert-intensity", "1.5"])
    assert e.value.code == 2
    assert "--invert-intensity: must be a probability in [0, 1], got 1.5" in capsys.readouterr().err
