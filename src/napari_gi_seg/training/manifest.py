"""The run-folder manifest ``run.json``: a record of one training or fine-tuning run.

Written when the run starts and updated as it ends, it holds what is needed to
understand or repeat the run (nnU-Net keeps the same kind of record): the
configuration, the seeded split, the dataset's name/layout/fingerprint, package
versions, hardware, the log file and the run's status
(``running`` -> ``finished`` | ``stopped`` | ``failed``, then ``registered`` or
``not-registered`` with the reason). Paths are stored relative to the run folder or as
bare names: no local absolute path is written.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST_FILE", "LOG_FILE", "environment", "write_manifest", "read_manifest"]

MANIFEST_FILE = "run.json"
LOG_FILE = "train.log"
_PACKAGES = ("napari-gi-seg", "torch", "segmentation-models-pytorch", "monai", "numpy", "nibabel", "safetensors")


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def environment(device: str | None = None) -> dict[str, Any]:
    """Package versions and hardware of this process.

    Parameters
    ----------
    device : str, optional
        The training device (``"cpu"``, ``"cuda"``, ``"cuda:0"``).

    Returns
    -------
    dict
        ``{"versions": {package: version}, "hardware": {"python", "platform",
        "machine", "cpus", "device", "gpu", "gpu_memory_gb"}}``.
    """
    versions = {}
    for p in _PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    hw: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "device": device,
        "gpu": None,
        "gpu_memory_gb": None,
    }
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            hw["gpu"], hw["gpu_memory_gb"] = props.name, round(props.total_memory / 2**30, 1)
            hw["cuda"] = torch.version.cuda
    except Exception:  # noqa: BLE001 - the record never fails a run
        pass
    return {"versions": versions, "hardware": hw}


def read_manifest(work_dir: str | Path) -> dict | None:
    """The run's ``run.json`` as a dict, or ``None`` when absent or unreadable.

    Parameters
    ----------
    work_dir : str or Path
        The run folder.
    """
    p = Path(work_dir) / MANIFEST_FILE
    try:
        obj = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def write_manifest(work_dir: str | Path, **fields: Any) -> Path:
    """Create or update ``<work_dir>/run.json`` (temp file, then rename).

    Parameters
    ----------
    work_dir : str or Path
        The run folder (must exist).
    **fields
        Top-level keys to set (merged into the existing record; ``updated`` is set
        to the current UTC time, ``created`` on the first write).

    Returns
    -------
    Path
        The manifest's path.
    """
    work = Path(work_dir)
    rec = read_manifest(work) or {"created": _utc_now(), "log_file": LOG_FILE}
    rec.update(fields)
    rec["updated"] = _utc_now()
    from .._atomic import write_json

    return write_json(work / MANIFEST_FILE, rec, default=str)
