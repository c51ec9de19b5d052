"""The one optimisation step shared by the trainer and patient adaptation (``training.step``)."""

from __future__ import annotations

import pytest
import torch

from napari_gi_seg.datasets import IGNORE_INDEX
from napari_gi_seg.training.losses import segmentation_loss
from napari_gi_seg.training.schedule import one_cycle, one_cycle_lr
from napari_gi_seg.training.step import grad_scaler, optimisation_step


def test_step_returns_the_batch_loss_and_rate_then_moves_weights_and_schedule():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 3, 3, padding=1)
    x = torch.randn(2, 3, 16, 16)
    y = torch.randint(0, 3, (2, 16, 16))
    y[:, :4] = IGNORE_INDEX
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    sched = one_cycle(opt, 1e-2, 10)
    scaler = grad_scaler(torch.device("cpu"))
    assert not scaler.is_enabled()  # AMP only on CUDA
    w0 = net.weight.detach().clone()
    with torch.no_grad():
        expected = float(segmentation_loss(net(x), y, False))
    loss, lr = optimisation_step(net, x, y, opt, sched, scaler, multilabel=False)
    assert loss == pytest.approx(expected, rel=1e-6)
    assert lr == pytest.approx(one_cycle_lr(0.0, 1e-2))  # the first step runs at max_lr / 10
    assert sched.last_epoch == 1 and opt.param_groups[0]["lr"] > lr  # warming up
    assert not torch.equal(net.weight, w0)


@pytest.mark.parametrize(("steps", "pct"), [(10, 0.1), (50, 0.02), (12, 0.1), (40, 0.1)])
def test_one_cycle_runs_every_step_count(steps, pct):
    """10 steps at 10 % (adaptation) or 50 at 2 % (fine-tune) put torch's warm-up end at
    step 0, where OneCycleLR divides by zero; the cycle still starts at max_lr / 10 and
    ends at max_lr / 1000 after ``steps`` steps."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    sched = one_cycle(opt, 1e-2, steps, pct_start=pct)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3) and max(lrs) <= 1e-2 * (1 + 1e-9)
    assert lrs[-1] == pytest.approx(1e-5)
