"""Fixtures for the engine and CLI tests: the real CHAOS patient 1 as volumes. The tiny
model (``tiny_model``, ``tiny_entry``) and the per-test user folder come from
``tests/conftest.py``."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def chaos_volume(chaos_volumes):
    """CHAOS patient 1 image Volume ``(37, 256, 256)`` float32."""
    return chaos_volumes[0]


@pytest.fixture(scope="session")
def chaos_labels(chaos_volumes):
    """CHAOS patient 1 label Volume ``(37, 256, 256)`` uint8."""
    return chaos_volumes[1]
