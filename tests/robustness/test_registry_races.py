"""The registry under concurrency and hostile names: two processes registering the
same name get distinct versions, run folders are unique, work folders inside the
registry and names that escape it are refused."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from fault_helpers import child_env

from napari_gi_seg.models import registry
from napari_gi_seg.models.spec import ClassInfo, ModelSpec

RACER = """
import os, sys, time
from pathlib import Path
from napari_gi_seg.models import registry
from napari_gi_seg.models.spec import ModelSpec, ClassInfo
go, weights, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
(go.parent / f"ready-{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.005)
for _ in range(n):
    spec = ModelSpec(name="raced", encoder="resnet18", input_size=(32, 32), classes=[ClassInfo(1, "liver")],
                     description=str(os.getpid()))
    e = registry.register_model(spec, weights_path=weights, next_free=True)
    run = registry.new_run_dir("raced", e.version)
    print(e.version, run.name, flush=True)
"""


def _weights(tmp_path):
    from safetensors.numpy import save_file

    w = tmp_path / "w.safetensors"
    save_file({"x": np.arange(4, dtype=np.float32)}, str(w))
    return w


def test_concurrent_registrations_get_distinct_versions(tmp_path, _isolated_user_dir):
    w = _weights(tmp_path)
    go = tmp_path / "go"
    env = child_env(NAPARI_GI_SEG_HOME=str(_isolated_user_dir))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(go), str(w), "3"], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    t0 = time.time()
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.time() - t0 < 60:
        time.sleep(0.01)  # both imported and spinning on the go file
    go.touch()
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    rows = [line.split() for out in outs for line in out.strip().splitlines()]
    versions = sorted(int(v) for v, _ in rows)
    assert versions == [1, 2, 3, 4, 5, 6]  # six registrations, six versions: none shared, none lost
    assert len({run for _, run in rows}) == 6  # one run folder per run
    entries = [e for e in registry.list_models() if e.name == "raced"]
    assert sorted(e.version for e in entries) == versions
    pids = set()
    for e in entries:
        spec = e.spec()
        assert spec.version == e.version and e.weights_path.read_bytes() == w.read_bytes()
        pids.add(spec.description)
    assert len(pids) == 2  # both processes registered
    assert not [p for p in (registry.user_models_root() / "raced").iterdir() if not p.name.isdigit()]


def test_explicit_version_is_never_overwritten(tmp_path):
    w = _weights(tmp_path)
    spec = ModelSpec(name="fixed", encoder="resnet18", input_size=(32, 32), classes=[ClassInfo(1, "liver")])
    registry.register_model(spec, weights_path=w)
    before = (registry.user_models_root() / "fixed" / "1" / "spec.json").read_bytes()
    with pytest.raises(registry.VersionExistsError, match="fixed:1"):
        registry.register_model(ModelSpec.from_dict({**spec.to_dict(), "description": "other"}), weights_path=w)
    assert (registry.user_models_root() / "fixed" / "1" / "spec.json").read_bytes() == before


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "", ".hidden", "..", "x" * 65, "a\\b", "名前"])
def test_register_model_refuses_names_that_escape(tmp_path, name):
    w = _weights(tmp_path)
    with pytest.raises(ValueError, match="model name"):
        ModelSpec(name=name, classes=[ClassInfo(1, "liver")])
    spec = ModelSpec(name="ok", encoder="resnet18", input_size=(32, 32), classes=[ClassInfo(1, "liver")])
    spec.name = name  # a spec changed after validation still cannot direct the registry
    root = registry.user_models_root()
    with pytest.raises(ValueError, match="model name"):
        registry.register_model(spec, weights_path=w)
    with pytest.raises(ValueError, match="model name"):
        registry.reserve_version(name)
    assert list(root.iterdir()) == [] and not (root.parent.parent / "escaped").exists()


def test_symlinked_name_folder_cannot_escape(tmp_path):
    w = _weights(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (registry.user_models_root() / "linked").symlink_to(outside, target_is_directory=True)
    spec = ModelSpec(name="linked", encoder="resnet18", input_size=(32, 32), classes=[ClassInfo(1, "liver")])
    with pytest.raises(ValueError, match="outside the registry"):
        registry.register_model(spec, weights_path=w)
    assert list(outside.iterdir()) == []


def test_work_folder_inside_the_registry_is_refused(tmp_path, capsys):
    from napari_gi_seg import cli

    w = _weights(tmp_path)
    spec = ModelSpec(name="card", encoder="resnet18", input_size=(32, 32), classes=[ClassInfo(1, "liver")])
    e = registry.register_model(spec, weights_path=w, extra_files={"MODEL_CARD.md": lambda s: f"# {s.key}\n"})
    card = (e.folder / "MODEL_CARD.md").read_bytes()
    assert card == b"# card:1\n"
    for bad in (e.folder, registry.user_models_root() / "new", registry.BUNDLED_ROOT / "x"):
        with pytest.raises(ValueError, match="inside the model registry"):
            registry.check_work_dir(bad)
    rc = cli.main(["finetune", str(tmp_path), "--model", "card", "--name", "ft", "--work-dir", str(e.folder)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "inside the model registry" in err[0]
    assert (e.folder / "MODEL_CARD.md").read_bytes() == card and sorted(p.name for p in e.folder.iterdir()) == [
        "MODEL_CARD.md",
        "model.safetensors",
        "spec.json",
    ]


def test_run_folders_are_unique_and_resume_finds_the_unfinished_one():
    runs = {registry.new_run_dir("net", 1) for _ in range(20)}
    assert len(runs) == 20 and all(r.is_dir() and r.name.startswith("net-v1-") for r in runs)
    assert registry.find_resumable_run("net") is None  # no checkpoint yet
    a, b = sorted(runs)[:2]
    (a / "checkpoint_last.pt").write_bytes(b"1")
    time.sleep(0.01)
    (b / "checkpoint_last.pt").write_bytes(b"2")
    assert registry.find_resumable_run("net") == b  # the newest unfinished run
    registry.mark_run_registered(b, registry.ModelEntry("net", 1, b, False))
    assert json.loads((b / registry.RUN_REGISTERED_FILE).read_text()) == {"model": "net:1"}
    assert registry.find_resumable_run("net") == a  # a registered run is never resumed
    assert registry.find_resumable_run("ne") is None  # another name's runs are not ours
