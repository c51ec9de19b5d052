"""The ignore label contributes nothing to the loss or its gradient (softmax and multi-label)."""

from __future__ import annotations

import torch

from napari_gi_seg.datasets import IGNORE_INDEX
from napari_gi_seg.training.trainer import segmentation_loss


def _grad(logits, target, multilabel):
    x = logits.clone().requires_grad_(True)
    segmentation_loss(x, target, multilabel).backward()
    return x.grad


def test_ignored_pixel_does_not_change_the_gradient_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 8, 8, generator=g)
    target = torch.randint(0, 5, (2, 8, 8), generator=g)
    target[0, 3, 4] = 2
    ign = target.clone()
    ign[0, 3, 4] = IGNORE_INDEX
    other = logits.clone()
    other[0, :, 3, 4] = torch.tensor([9.0, -3.0, 4.0, 0.5, -7.0])  # arbitrary prediction at the ignored pixel
    g_ign, g_other = _grad(logits, ign, False), _grad(other, ign, False)
    assert torch.all(g_ign[0, :, 3, 4] == 0)
    assert torch.allclose(g_ign, g_other, atol=1e-7)  # what the net predicts there does not matter
    # whereas a real label at that pixel does change the gradient (the test can fail)
    g_lab, g_lab2 = (
        _grad(logits, target, False),
        _grad(logits, target.index_put((torch.tensor(0), torch.tensor(3), torch.tensor(4)), torch.tensor(4)), False),
    )
    assert g_lab[0, :, 3, 4].abs().sum() > 0
    assert not torch.allclose(g_lab, g_lab2)
    assert torch.isfinite(segmentation_loss(logits, torch.full_like(target, IGNORE_INDEX), False))


def test_ignored_pixel_does_not_change_the_gradient_multilabel():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    target = (torch.rand(2, 3, 8, 8, generator=g) > 0.5).float()
    ign = target.clone()
    ign[1, :, 5, 2] = IGNORE_INDEX
    other = logits.clone()
    other[1, :, 5, 2] = torch.tensor([6.0, -6.0, 2.0])
    g_ign, g_other = _grad(logits, ign, True), _grad(other, ign, True)
    assert torch.all(g_ign[1, :, 5, 2] == 0)
    assert torch.allclose(g_ign, g_other, atol=1e-7)
    flipped = target.clone()
    flipped[1, :, 5, 2] = 1 - flipped[1, :, 5, 2]
    assert not torch.allclose(_grad(logits, target, True), _grad(logits, flipped, True))
