"""Work-arounds for the Qt/napari process (nothing here is needed by the GUI-free core)."""

from __future__ import annotations

import sys
from pathlib import Path


def guard_triton_llvm_clash() -> bool:
    """Keep ``triton`` from loading into a process whose OpenGL driver already
    loaded Mesa's ``libLLVM``; returns True when the guard was installed.

    ``segmentation_models_pytorch`` imports ``timm`` -> ``torchvision.ops`` ->
    ``torch._dynamo``, which probes ``import triton``. Loading triton's own LLVM
    (``triton._C.libtriton``) after Mesa's llvmpipe/radeonsi has loaded the system
    ``libLLVM`` crashes the interpreter (segmentation fault; reproduced with napari
    0.9 under Xvfb, torch 2.15). When that library is mapped and triton is not yet
    imported, ``sys.modules["triton"] = None`` makes the probe raise ImportError,
    so torch runs without triton; eager-mode inference never uses it. Training
    runs in a separate process (the Fine-tune widget) and is not affected.
    """
    if "triton" in sys.modules or not sys.platform.startswith("linux"):
        return False
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    if "libLLVM" not in maps:
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]
    return True
