"""Names the package shares between the CLI, the core and the widgets (one place each).

Devices
    :data:`DEVICES` are the ``--device`` choices of every subcommand and the device
    lists of the dock widgets; ``"auto"`` picks CUDA, then MPS, then the CPU
    (:func:`napari_gi_seg.engine.inference.resolve_device`). :data:`PRECISIONS` are the
    inference precisions (``segment --precision``).

Environment switches
    ``NAPARI_GI_SEG_HOME`` (:data:`HOME_ENV`) moves the user folder (models,
    sessions, logs); ``NAPARI_GI_SEG_DATA`` (:data:`DATA_ENV`) names the real-data
    folder; ``NAPARI_GI_SEG_SYNC=1`` (:data:`SYNC_ENV`) makes the dock's jobs run in
    the calling thread (tests, scripts); ``NAPARI_GI_SEG_RESTORE=yes|no``
    (:data:`RESTORE_ENV`) answers the "restore the saved session?" question without a
    dialog.
"""

from __future__ import annotations

import os

#: ``--device`` choices and the widgets' device lists.
DEVICES = ("auto", "cpu", "cuda", "mps")
#: ``--precision`` choices of inference (:func:`napari_gi_seg.engine.inference.autocast_dtype`).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

HOME_ENV = "NAPARI_GI_SEG_HOME"
DATA_ENV = "NAPARI_GI_SEG_DATA"
SYNC_ENV = "NAPARI_GI_SEG_SYNC"
RESTORE_ENV = "NAPARI_GI_SEG_RESTORE"


def env_flag(name: str) -> bool:
    """True when the environment variable ``name`` is set to anything but ``""``/``"0"``."""
    return os.environ.get(name, "") not in ("", "0")
