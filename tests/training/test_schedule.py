"""The one-cycle schedule over a wall-clock budget (``train --budget-minutes``)."""

from __future__ import annotations

import pytest
import torch

from napari_gi_seg.training import schedule
from napari_gi_seg.training.schedule import BudgetOneCycle, one_cycle_lr


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(schedule.time, "perf_counter", c)
    return c


def _opt():
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)


def test_one_cycle_lr_is_torch_one_cycle():
    """Same curve as torch's OneCycleLR (cosine, 10 % warm-up, div 10, final div 100)."""
    opt = _opt()
    n = 200
    ref = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=2e-3, total_steps=n + 1, pct_start=0.1, div_factor=10.0, final_div_factor=100.0
    )
    for step in range(n + 1):
        # torch ends the warm-up at step pct * total_steps - 1 and the cycle at total_steps - 1
        w = 0.1 * (n + 1) - 1
        frac = 0.1 * step / w if step <= w else 0.1 + 0.9 * (step - w) / (n - w)
        assert one_cycle_lr(frac, 2e-3) == pytest.approx(ref.get_last_lr()[0], rel=1e-6)
        opt.step()
        ref.step()
    assert one_cycle_lr(0.0, 2e-3) == pytest.approx(2e-4)
    assert one_cycle_lr(0.1, 2e-3) == pytest.approx(2e-3)
    assert one_cycle_lr(1.0, 2e-3) == pytest.approx(2e-6)


def test_budget_schedule_spans_the_budget_and_ignores_pauses(clock):
    opt = _opt()
    s = BudgetOneCycle(opt, 1e-2, budget_s=100.0, total_steps=10**6)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)  # starts at max_lr / 10
    for _ in range(10):  # 10 steps of 1 s: 10 % of the budget = the end of the warm-up
        clock.t += 1.0
        s.step()
    assert s.fraction() == pytest.approx(0.1)
    assert s.get_last_lr()[0] == pytest.approx(1e-2)
    clock.t += 1000.0  # validation between epochs: not counted once the clock restarts
    s.restart_clock()
    clock.t += 1.0
    s.step()
    assert s.fraction() == pytest.approx(0.11) and not s.spent
    while not s.spent:
        clock.t += 1.0
        s.step()
    assert s.last_epoch == 100 and s.get_last_lr()[0] == pytest.approx(1e-5)  # max_lr / 10 / 100


def test_budget_schedule_ends_at_total_steps_and_resumes(clock):
    s = BudgetOneCycle(_opt(), 1e-2, budget_s=1e9, total_steps=20)
    for _ in range(5):
        clock.t += 2.0
        s.step()
    st = s.state_dict()
    assert st == {"kind": "budget", "budget_s": 1e9, "elapsed_s": 10.0, "total_steps": 20, "last_epoch": 5}
    s2 = BudgetOneCycle(_opt(), 1e-2, budget_s=1e9, total_steps=20)
    s2.load_state_dict(st)  # --resume: the spent seconds and steps count
    assert s2.fraction() == pytest.approx(0.25) and s2.get_last_lr() == s.get_last_lr()
    for _ in range(15):
        s2.step()
    assert s2.spent
    with pytest.raises(ValueError, match="budget"):
        BudgetOneCycle(_opt(), 1e-2, budget_s=0, total_steps=5)
