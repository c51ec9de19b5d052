"""Where things live on disk: the shared data folder and the user folder."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path | None:
    """The real-data folder: ``$NAPARI_GI_SEG_DATA``, else ``../shared/data`` beside
    the repository (a source checkout), else ``None``."""
    env = os.environ.get("NAPARI_GI_SEG_DATA")
    if env:
        return Path(env)
    cand = REPO_ROOT.parent / "shared" / "data"
    return cand if cand.is_dir() else None


def user_dir() -> Path:
    """The per-user folder for models, sessions and caches: ``$NAPARI_GI_SEG_HOME``,
    else the platform's user data folder (platformdirs), created on demand."""
    env = os.environ.get("NAPARI_GI_SEG_HOME")
    if env:
        p = Path(env)
    else:
        from platformdirs import user_data_dir

        p = Path(user_data_dir("napari-gi-seg", appauthor=False))
    p.mkdir(parents=True, exist_ok=True)
    return p


def default_dataset_dir() -> Path:
    """Where exported corrections go unless another folder is chosen.

    Returns
    -------
    Path
        ``<user_dir>/datasets/corrections`` (not created here).
    """
    return user_dir() / "datasets" / "corrections"


def runs_dir() -> Path:
    """The folder of training and fine-tuning run folders.

    Returns
    -------
    Path
        ``<user_dir>/runs`` (not created here).
    """
    return user_dir() / "runs"
