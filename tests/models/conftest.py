"""Fixtures for the model-format tests: a spec of the shared tiny model (the per-test
user folder ``model_home`` comes from ``tests/conftest.py``)."""

from __future__ import annotations

import pytest

from _tiny import tiny_spec


@pytest.fixture
def small_spec():
    """The tiny model's spec (Unet/mobilenet_v2, 64 px, 3-slice context, 4 CHAOS
    classes with a left/right kidney pair) named ``unit-test``, with a metric."""
    return tiny_spec(name="unit-test", metrics={"validation": {"mean_dice": 0.5}})
