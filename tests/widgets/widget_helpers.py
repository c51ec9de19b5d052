"""Helpers shared by the widget tests (imported by conftest and the tests)."""

from __future__ import annotations

import numpy as np

from _tiny import CHAOS_CLASSES, TINY_NAME, tiny_spec  # noqa: F401  (re-exported for the widget tests)


def wait_worker(qtbot, widget, timeout_ms: int = 120_000) -> None:
    """Block (processing Qt events) until a widget's worker/process has finished."""
    qtbot.waitUntil(lambda: not widget.is_running, timeout=timeout_ms)


def np_equal(a, b) -> bool:
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))
