"""Fixtures for the model-format tests: the per-test user folder and a small spec."""

from __future__ import annotations

import pytest


@pytest.fixture
def model_home():
    """This test's empty user folder (``$NAPARI_GI_SEG_HOME``, set per test by the
    autouse fixture in ``tests/conftest.py``), so the registry starts empty."""
    from napari_gi_seg.paths import user_dir

    return user_dir()


@pytest.fixture
def small_spec():
    """Unet/resnet18 (fast to build), 32 px, 3-slice context, 4 classes with a
    left/right kidney pair."""
    from napari_gi_seg.models.spec import ClassInfo, ModelSpec

    return ModelSpec(
        name="unit-test",
        version=1,
        architecture="Unet",
        encoder="resnet18",
        input_size=(32, 32),
        classes=[
            ClassInfo(1, "liver"),
            ClassInfo(2, "right_kidney", mirror="left_kidney"),
            ClassInfo(3, "left_kidney", mirror="right_kidney"),
            ClassInfo(4, "spleen"),
        ],
        metrics={"validation": {"mean_dice": 0.5}},
    )
