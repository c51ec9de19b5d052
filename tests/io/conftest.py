"""Fixtures for the I/O tests: npe2's plugin manager with this plugin registered."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def npe2_pm():
    """npe2's global PluginManager with ``napari-gi-seg`` discovered from its entry point."""
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    assert "napari-gi-seg" in {m.name for m in pm.iter_manifests()}
    return pm
