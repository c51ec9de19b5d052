"""The promptable model kind: its spec, the registry keeping it apart from the semantic
models, the bundled model answering a box, and the training data read from CHAOS's
own DICOM layout (the opposed phase paired with Ground PNG n + 1)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gi_seg.models.spec import ClassInfo, ModelSpec
from napari_gi_seg.training.prompt_train import prompt_spec


def test_promptable_spec_round_trip_and_rules():
    spec = prompt_spec()
    assert spec.kind == "promptable" and spec.in_channels == 3 + 4 and spec.out_channels == 1
    again = ModelSpec.from_dict(spec.to_dict())
    assert again == spec
    d = spec.to_dict()
    with pytest.raises(ValueError, match="needs prompt_channels"):
        ModelSpec.from_dict({**d, "prompt_channels": []})
    with pytest.raises(ValueError, match="prompt_channels must be distinct names"):
        ModelSpec.from_dict({**d, "prompt_channels": ["box", "lasso"]})
    with pytest.raises(ValueError, match="promptable models only"):
        ModelSpec(name="x", classes=[ClassInfo(1, "liver")], prompt_channels=("box",))
    with pytest.raises(ValueError, match="kind"):
        ModelSpec.from_dict({**d, "kind": "magic"})


def test_registry_keeps_promptable_models_apart():
    from napari_gi_seg.interactive import PromptModelBackend, load_backend
    from napari_gi_seg.models.registry import get_entry, list_models

    prompt_keys = {e.key for e in list_models(kind="promptable")}
    if not prompt_keys:
        pytest.skip("no promptable model bundled")
    assert not prompt_keys & {e.key for e in list_models()}  # the Segment tab never lists them
    assert prompt_keys <= {e.key for e in list_models(kind=None)}
    key = sorted(prompt_keys)[0]
    assert get_entry(key).spec().kind == "promptable"
    backend = load_backend(None)
    assert isinstance(backend, PromptModelBackend) and backend is load_backend(None)  # loaded once
    with pytest.raises(ValueError, match="not promptable"):
        load_backend("chaos-t2spir")


def test_chaos_dicom_phases_pair_with_their_ground_truth(data_dir):
    from napari_gi_seg.training.prompt_data import load_chaos_mr

    root = data_dir / "chaos_mr_dicom"
    if not root.is_dir():
        pytest.skip("chaos_mr_dicom not available")
    t2, t1_in, t1_out = load_chaos_mr(root, ["1"])
    # SOURCE.md: patient 1 has 36 T2-SPIR and 35 T1-DUAL slices per phase
    assert t2.image.shape[0] == 36 and t1_in.image.shape[0] == t1_out.image.shape[0] == 35
    # both T1 phases are labelled by the same Ground PNGs (opposed phase n -> PNG n + 1)
    np.testing.assert_array_equal(t1_in.labels, t1_out.labels)
    assert set(np.unique(t2.labels)) == {0, 1, 2, 3, 4}
    # the echoes differ (not one series read twice)
    assert not np.array_equal(t1_in.image, t1_out.image)


def test_prompt_training_folds_are_the_package_split(chaos_dicom_dir):
    """``prompt_train --fold K`` trains on the package's patient folds: fold 0 is the
    bundled model's (FOLD0_TRAIN / FOLD0_TEST), and the four held-out sets cover the 16
    CHAOS patients once each."""
    from napari_gi_seg.training.prompt_train import FOLD0_TEST, FOLD0_TRAIN, fold_patients, held_out_patients

    assert fold_patients(chaos_dicom_dir, 0) == (sorted(FOLD0_TRAIN, key=int), FOLD0_TEST)
    held = [p for k in range(4) for p in fold_patients(chaos_dicom_dir, k)[1]]
    assert sorted(held, key=int) == held_out_patients(chaos_dicom_dir, []) and len(set(held)) == 16
    train, test = fold_patients(chaos_dicom_dir, 2)
    assert held_out_patients(chaos_dicom_dir, train) == test
