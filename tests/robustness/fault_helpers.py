"""Helpers of the fault-injection tests (imported by the test modules; fixtures are in
``conftest.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python: this worktree's ``src`` first, one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_until_paused(code: str, *args: str, match: str = "", timeout: float = 60.0) -> str:
    """Run ``python -c code args...`` with the pause hook on; once it says it paused
    before the rename of a destination (containing ``match``), ``kill -9`` it and
    return that line. Fails the test if the child ends or times out first."""
    env = child_env(NAPARI_GI_SEG_FAULT_PAUSE_BEFORE_RENAME="60", NAPARI_GI_SEG_FAULT_PAUSE_MATCH=match)
    p = subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    t0 = time.time()
    seen = []
    try:
        for line in p.stderr:
            seen.append(line)
            if line.startswith("gi-seg-fault: paused before rename of"):
                os.kill(p.pid, signal.SIGKILL)
                p.wait(10)
                return line.strip()
            if time.time() - t0 > timeout:
                break
        pytest.fail("the writer never reached its final rename:\n" + "".join(seen[-30:]))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    return ""  # pragma: no cover


CHAOS_CLASSES = {1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"}


def temp_leftovers(folder: Path) -> list[str]:
    """Names of the atomic helper's temporaries under ``folder`` (recursively)."""
    from napari_gi_seg._atomic import is_temp_name

    return sorted(p.name for p in Path(folder).rglob("*") if is_temp_name(p.name))
