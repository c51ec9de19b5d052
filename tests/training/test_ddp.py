"""DDP: ``torchrun --nproc_per_node 2`` on CPU (gloo) trains and registers exactly one model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def test_torchrun_two_processes_registers_one_model(chaos3, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found next to the Python interpreter"
    home = tmp_path / "home"
    env = {**os.environ, "NAPARI_GI_SEG_HOME": str(home), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "napari_gi_seg.cli",
        "train",
        str(chaos3),
        "--name",
        "ddp-tiny",
        "--size",
        "64",
        "--epochs",
        "2",
        "--max-steps-per-epoch",
        "2",
        "--batch-size",
        "2",
        "--val-fraction",
        "0.34",
        "--device",
        "cpu",
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    versions = sorted((home / "models").glob("*/*"))
    assert [v.relative_to(home / "models").as_posix() for v in versions] == ["ddp-tiny/1"]
    assert (versions[0] / "model.safetensors").exists()
    from napari_gi_seg.models.spec import ModelSpec

    spec = ModelSpec.load(versions[0] / "spec.json")
    assert spec.training["world_size"] == 2 and spec.training["epochs_run"] == 2
    assert p.stdout.count("registered ddp-tiny:1") == 1
    runs = [d.name for d in (home / "runs").iterdir()]
    assert len(runs) == 1 and runs[0].startswith("ddp-tiny-v1-")  # both ranks used rank 0's (unique) run folder
    assert (home / "runs" / runs[0] / "registered.json").is_file()
