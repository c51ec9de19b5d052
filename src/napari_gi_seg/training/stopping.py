"""How a training run stops when asked to (Ctrl-C / SIGINT, SIGTERM, the widget's stop
file, a ``cancel()`` callable): the policy, in one place.

* The request is noticed after the optimiser step in progress (the cancel callable is
  polled after every step).
* The run then **finishes the current epoch**, so the checkpoint, the learning-rate
  schedule and the epoch's row describe a whole epoch, as an uninterrupted run would
  have them. The wait is bounded: after :data:`DEFAULT_GRACE_S` seconds
  (``TrainConfig.stop_grace_s``) the epoch is ended where it is and checkpointed **as a
  partial epoch** (``epoch_steps`` < steps per epoch in ``checkpoint_last.pt``, and
  ``"partial": true`` in its ``metrics.csv`` row); ``--resume`` then runs the missing
  steps of that epoch first, so the resumed run takes exactly as many optimiser steps,
  on the same one-cycle schedule, as one that was never stopped.
* The epoch is validated and checkpointed, the best epoch so far is kept, and the log
  says what happened: when the request came (epoch and step), whether the epoch was
  completed or cut (after how many of its steps), and what ``--resume`` continues with.
* A second signal aborts at once (:class:`KeyboardInterrupt`; the last checkpoint is the
  one of the previous epoch).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["DEFAULT_GRACE_S", "StopControl"]

log = logging.getLogger(__name__)

#: Longest wait (seconds) for the current epoch to finish after a stop request.
DEFAULT_GRACE_S = 120.0


class StopControl:
    """Polls ``cancel`` after each step and decides whether the epoch goes on.

    Parameters
    ----------
    cancel : callable or None
        ``cancel() -> bool``; ``True`` once a stop is requested.
    grace_s : float
        How long the current epoch may still run after the request (seconds; 0: stop
        after the step in progress).
    """

    def __init__(self, cancel: Callable[[], bool] | None, grace_s: float = DEFAULT_GRACE_S):
        self.cancel, self.grace_s = cancel, float(grace_s)
        self.requested_at: float | None = None
        self.where = ""

    @property
    def requested(self) -> bool:
        """True once a stop was requested."""
        return self.requested_at is not None

    def after_step(self, epoch: int, epochs: int, step: int, steps: int) -> bool:
        """Call after optimiser step ``step`` (1-based) of ``steps`` in 0-based ``epoch``;
        returns ``True`` when the epoch must end now (grace spent), ``False`` to go on."""
        if self.requested_at is None:
            if self.cancel is None or not self.cancel():
                return False
            self.requested_at = time.time()
            self.where = f"epoch {epoch + 1}/{epochs}, step {step}/{steps}"
            if step < steps:
                log.warning(
                    "stop requested at %s: finishing the epoch (%d more steps, at most %.0f s), then checkpoint",
                    self.where,
                    steps - step,
                    self.grace_s,
                )
        if step >= steps:
            return False
        return time.time() - self.requested_at >= self.grace_s

    def report(self, epoch: int, done: int, steps: int) -> str:
        """The log line after the epoch ended with ``done`` of ``steps`` steps."""
        if done >= steps:
            return (
                f"stop requested at {self.where}: epoch {epoch + 1} completed ({steps} steps) and checkpointed; "
                f"--resume continues with epoch {epoch + 2}"
            )
        return (
            f"stop requested at {self.where}: the {self.grace_s:.0f} s wait ran out, epoch {epoch + 1} ended after "
            f"{done} of {steps} steps and was checkpointed as a partial epoch; --resume runs its "
            f"{steps - done} remaining steps first"
        )
