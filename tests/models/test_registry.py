"""Model format and registry: spec + safetensors round trip, versions never
overwritten, pickle checkpoints refused, corrupt files reported clearly."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch

from napari_gi_seg.models import registry
from napari_gi_seg.models.network import UnsafeWeightsError, build_network, load_network, load_weights
from napari_gi_seg.models.spec import ModelSpec


def _net(spec, seed=0):
    torch.manual_seed(seed)
    return build_network(spec).eval()


def test_spec_and_weights_round_trip(small_spec, model_home):
    net = _net(small_spec)
    entry = registry.register_model(copy.deepcopy(small_spec), net)
    assert entry.folder == model_home / "models" / "unit-test" / "1"
    assert {p.name for p in entry.folder.iterdir()} >= {"spec.json", "model.safetensors"}
    user = [e for e in registry.list_models() if not e.bundled]  # bundled models may ship too
    assert [e.key for e in user] == ["unit-test:1"]

    spec2, net2 = registry.load_model("unit-test")
    d1, d2 = small_spec.to_dict(), spec2.to_dict()
    assert d2["created"] and d2["software_version"]  # filled in at registration
    assert d2["weights_sha256"] == hashlib.sha256(entry.weights_path.read_bytes()).hexdigest()  # and this
    for k in ("created", "software_version", "weights_sha256"):
        d1.pop(k), d2.pop(k)
    assert d1 == d2
    assert spec2.classes[1].mirror == "left_kidney" and spec2.metrics == {"validation": {"mean_dice": 0.5}}
    sd1, sd2 = net.state_dict(), net2.state_dict()
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    assert not net2.training


def test_half_precision_weights_load_as_float32(small_spec):
    net = _net(small_spec)
    entry = registry.register_model(copy.deepcopy(small_spec), net, half=True)
    stored = load_weights(entry.weights_path)
    key = next(k for k, v in net.state_dict().items() if v.is_floating_point() and v.ndim == 4)  # first conv
    assert stored[key].dtype == torch.float16
    _, net2 = registry.load_model("unit-test:1")
    w = net2.state_dict()[key]
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, net.state_dict()[key], atol=2e-3, rtol=1e-3)


def test_second_save_of_same_version_refused(small_spec):
    entry = registry.register_model(copy.deepcopy(small_spec), _net(small_spec, 0))
    before = entry.weights_path.read_bytes()
    with pytest.raises(registry.VersionExistsError, match="unit-test:1 is already registered.*version 2"):
        registry.register_model(copy.deepcopy(small_spec), _net(small_spec, 1))
    assert entry.weights_path.read_bytes() == before  # untouched
    assert registry.next_version("unit-test") == 2
    spec2 = copy.deepcopy(small_spec)
    spec2.version = 2
    spec2.parent = "unit-test:1"
    registry.register_model(spec2, _net(small_spec, 1))
    assert [e.key for e in registry.list_models() if e.name == "unit-test"] == ["unit-test:1", "unit-test:2"]
    assert registry.get_entry("unit-test").version == 2  # newest by default
    assert registry.get_entry("unit-test:1").version == 1
    # no temp folders left behind
    assert sorted(p.name for p in (entry.folder.parent).iterdir()) == ["1", "2"]


def test_pickle_checkpoint_refused(small_spec, tmp_path):
    net = _net(small_spec)
    for suffix in (".pt", ".pth", ".ckpt"):
        p = tmp_path / f"model{suffix}"
        torch.save(net.state_dict(), p)
        with pytest.raises(UnsafeWeightsError, match="pickle"):
            load_weights(p)
        with pytest.raises(UnsafeWeightsError):
            load_network(small_spec, p)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "pickle_renamed"])
def test_corrupt_safetensors_gives_clear_error(small_spec, tmp_path, damage):
    entry = registry.register_model(copy.deepcopy(small_spec), _net(small_spec))
    good = entry.weights_path.read_bytes()
    bad = tmp_path / "model.safetensors"
    if damage == "garbage":
        bad.write_bytes(b"this is not a safetensors file" * 10)
    elif damage == "truncated":
        bad.write_bytes(good[: len(good) // 2])
    else:  # a pickle checkpoint renamed to .safetensors must not be unpickled either
        torch.save(_net(small_spec).state_dict(), bad)
    with pytest.raises(ValueError, match=r"model\.safetensors: not a valid safetensors file"):
        load_weights(bad)


def test_weights_that_do_not_fit_the_spec(small_spec, tmp_path):
    entry = registry.register_model(copy.deepcopy(small_spec), _net(small_spec))
    other = ModelSpec.from_dict({**small_spec.to_dict(), "classes": [{"index": 1, "name": "liver"}]})
    with pytest.raises(ValueError, match="weights do not match spec"):
        load_network(other, entry.weights_path)


def test_missing_weights_and_invalid_spec(small_spec, tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        load_weights(tmp_path / "nothing.safetensors")
    p = tmp_path / "spec.json"
    p.write_text(json.dumps({**small_spec.to_dict(), "colour_map": "jet"}))
    with pytest.raises(ValueError, match=r"spec\.json: invalid model spec: unknown spec fields: \['colour_map'\]"):
        ModelSpec.load(p)
    p.write_text("{not json")
    with pytest.raises(ValueError, match="invalid model spec"):
        ModelSpec.load(p)


def test_unknown_model_lists_registered(small_spec):
    registry.register_model(copy.deepcopy(small_spec), _net(small_spec))
    with pytest.raises(registry.ModelNotFoundError, match=r"unknown model 'nope'; registered: .*unit-test:1"):
        registry.get_entry("nope")
    with pytest.raises(registry.ModelNotFoundError, match="version 7"):
        registry.get_entry("unit-test", 7)


def test_mirror_permutation(small_spec):
    # softmax: channel 0 background, 1 liver, 2 right_kidney, 3 left_kidney, 4 spleen
    assert small_spec.mirror_permutation() == [0, 1, 3, 2, 4]
    sig = ModelSpec.from_dict({**small_spec.to_dict(), "activation": "sigmoid"})
    assert sig.mirror_permutation() == [0, 2, 1, 3]
    with pytest.raises(ValueError, match="mirrors unknown class"):
        ModelSpec.from_dict({**small_spec.to_dict(), "classes": [{"index": 1, "name": "a", "mirror": "b"}]})
