"""Learning-rate schedules of the trainer.

The one-cycle schedule (Smith & Topin 2019, "Super-convergence"; the cosine form of
``torch.optim.lr_scheduler.OneCycleLR``): warm up from ``max_lr / div_factor`` to
``max_lr`` over the first ``pct_start`` of training, then cosine-anneal to
``max_lr / div_factor / final_div_factor``. :class:`torch.optim.lr_scheduler.OneCycleLR`
runs it over a known number of steps; :class:`BudgetOneCycle` runs it over a
wall-clock budget, so a run given N minutes completes one whole cycle in N minutes
however fast the machine steps (``train --budget-minutes``, the peer benchmark).
:func:`one_cycle` builds the step-count schedule used by the trainer and by patient
adaptation (:mod:`napari_gi_seg.training.adaptation`).
"""

from __future__ import annotations

import math
import time

import torch

from ..errors import InputError

__all__ = ["one_cycle_lr", "one_cycle", "BudgetOneCycle"]


def one_cycle_lr(
    frac: float, max_lr: float, pct_start: float = 0.1, div_factor: float = 10.0, final_div_factor: float = 100.0
) -> float:
    """Learning rate at fraction ``frac`` (clipped to 0..1) of a cosine one-cycle
    schedule with peak ``max_lr`` (same curve as ``OneCycleLR(anneal_strategy="cos")``)."""
    frac = min(max(float(frac), 0.0), 1.0)
    lo, hi, end = max_lr / div_factor, max_lr, max_lr / div_factor / final_div_factor

    def cos(a: float, b: float, t: float) -> float:
        return b + (a - b) / 2 * (1 + math.cos(math.pi * t))

    if frac < pct_start:
        return cos(lo, hi, frac / pct_start)
    return cos(hi, end, (frac - pct_start) / (1 - pct_start))


def one_cycle(
    optimizer: torch.optim.Optimizer,
    max_lr: float,
    total_steps: int,
    pct_start: float = 0.1,
    div_factor: float = 10.0,
    final_div_factor: float = 100.0,
) -> torch.optim.lr_scheduler.OneCycleLR:
    """The cosine one-cycle schedule over ``total_steps`` optimiser steps.

    ``torch.optim.lr_scheduler.OneCycleLR(anneal_strategy="cos")`` (momentum cycled as
    there): from ``max_lr / div_factor`` up to ``max_lr`` over the first ``pct_start``
    of the steps, then down to ``max_lr / div_factor / final_div_factor``
    (:func:`one_cycle_lr` gives the same curve).

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
    max_lr : float
        Peak learning rate.
    total_steps : int
        Optimiser steps of the whole cycle (at least 1); ``step()`` may be called that
        many times.
    pct_start, div_factor, final_div_factor : float
        As ``OneCycleLR``.

    Returns
    -------
    torch.optim.lr_scheduler.OneCycleLR

    Notes
    -----
    Torch ends the warm-up at step ``pct_start * total_steps - 1``; where that is exactly
    0 (10 steps at 10 %, 50 at 2 %) its first phase divides by zero, so ``pct_start`` is
    then raised by one part in a million (the curve is unchanged at every step).
    """
    total = max(1, int(total_steps))
    if float(pct_start * total) - 1 == 0:
        pct_start *= 1 + 1e-6
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=max_lr,
        total_steps=total,
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
    )


class BudgetOneCycle:
    """One-cycle learning rate on the elapsed fraction of a wall-clock budget.

    The fraction is ``max(training seconds / budget, steps / total_steps)``: the cycle
    ends when the budget is spent or ``total_steps`` steps were taken, whichever comes
    first. Training seconds are counted between :meth:`step` calls from the last
    :meth:`restart_clock` (call it at the start of every epoch), so validation and
    checkpointing between epochs do not use up the budget. Same interface as
    ``OneCycleLR`` where the trainer uses it (``step``, ``get_last_lr``,
    ``state_dict``/``load_state_dict``, ``total_steps``, ``last_epoch``); the state
    holds the seconds spent, so ``--resume`` continues the cycle where it stopped.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
    max_lr : float
        Peak learning rate.
    budget_s : float
        Training budget in seconds (> 0).
    total_steps : int
        Upper bound of optimiser steps (``epochs x steps per epoch``).
    pct_start, div_factor, final_div_factor : float
        As ``OneCycleLR``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_lr: float,
        budget_s: float,
        total_steps: int,
        pct_start: float = 0.1,
        div_factor: float = 10.0,
        final_div_factor: float = 100.0,
    ):
        if not budget_s > 0:
            raise InputError(f"budget must be > 0 seconds, got {budget_s}")
        self.optimizer, self.max_lr, self.budget_s = optimizer, float(max_lr), float(budget_s)
        self.total_steps, self.last_epoch, self.elapsed_s = max(1, int(total_steps)), 0, 0.0
        self.pct_start, self.div_factor, self.final_div_factor = pct_start, div_factor, final_div_factor
        self._t = time.perf_counter()
        self._apply()

    def fraction(self) -> float:
        """Fraction of the cycle done, 0..1."""
        return min(1.0, max(self.elapsed_s / self.budget_s, self.last_epoch / self.total_steps))

    @property
    def spent(self) -> bool:
        """True once the budget (or ``total_steps``) is used up."""
        return self.fraction() >= 1.0

    def restart_clock(self) -> None:
        """Start counting training time from now (time since the last step is not counted)."""
        self._t = time.perf_counter()

    def _apply(self) -> None:
        lr = one_cycle_lr(self.fraction(), self.max_lr, self.pct_start, self.div_factor, self.final_div_factor)
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def step(self) -> None:
        """Count one optimiser step and the time since the previous one; set the next lr."""
        now = time.perf_counter()
        self.elapsed_s += now - self._t
        self._t = now
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The learning rate of each parameter group."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """Numbers only (a checkpoint holds no objects)."""
        return {
            "kind": "budget",
            "budget_s": self.budget_s,
            "elapsed_s": self.elapsed_s,
            "total_steps": self.total_steps,
            "last_epoch": self.last_epoch,
        }

    def load_state_dict(self, st: dict) -> None:
        """Continue a saved cycle (the seconds already spent count against the budget)."""
        self.elapsed_s = float(st.get("elapsed_s", 0.0))
        self.last_epoch = int(st.get("last_epoch", 0))
        self._apply()
