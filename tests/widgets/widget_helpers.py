"""Helpers shared by the widget tests (imported by conftest and the tests)."""

from __future__ import annotations

import numpy as np

#: Classes of the CHAOS T2-SPIR labels (label values 1..4), as a model spec lists them.
CHAOS_CLASSES = [
    {"index": 1, "name": "liver"},
    {"index": 2, "name": "right_kidney", "mirror": "left_kidney"},
    {"index": 3, "name": "left_kidney", "mirror": "right_kidney"},
    {"index": 4, "name": "spleen"},
]
TINY_NAME = "tiny-chaos"


def tiny_spec(version: int = 1):
    from napari_gi_seg.models.spec import ModelSpec

    return ModelSpec(
        name=TINY_NAME,
        version=version,
        architecture="Unet",
        encoder="mobilenet_v2",
        context_offsets=(-1, 0, 1),
        input_size=(64, 64),
        classes=[dict(c) for c in CHAOS_CLASSES],
        description="untrained 64 px test model",
    )


def wait_worker(qtbot, widget, timeout_ms: int = 120_000) -> None:
    """Block (processing Qt events) until a widget's worker/process has finished."""
    qtbot.waitUntil(lambda: not widget.is_running, timeout=timeout_ms)


def np_equal(a, b) -> bool:
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))
