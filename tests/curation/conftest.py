"""Fixtures for the GUI-free clinical core (corrections, review, sessions, export).

The real CHAOS T2-SPIR patient comes from the shared fixtures in ``tests/conftest.py``
(fails under ``CI=true`` when the data is missing, skips elsewhere).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_gi_seg.io.nifti import read_nifti
from napari_gi_seg.io.volume import Volume


@pytest.fixture(scope="session")
def chaos_labels_volume(chaos_label_path) -> Volume:
    """CHAOS patient 1 manual labels, ``(37, 256, 256)`` uint8, spacing (7.7, 1.25, 1.25) mm."""
    return read_nifti(chaos_label_path, as_labels=True)


@pytest.fixture(scope="session")
def chaos_image_volume(chaos_image_path) -> Volume:
    """CHAOS patient 1 T2-SPIR image, ``(37, 256, 256)`` float32."""
    return read_nifti(chaos_image_path, as_labels=False)


@pytest.fixture
def chaos_labels(chaos_labels_volume) -> np.ndarray:
    """A fresh writable copy of the manual labels ``(z, y, x)`` uint8."""
    return chaos_labels_volume.data.copy()


@pytest.fixture(scope="session")
def chaos_class_names() -> dict[int, str]:
    """The label values of the CHAOS data (``chaos_mr_t2spir/SOURCE.md``): this is a
    fact about the test data, not a model's class list."""
    return {1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"}
