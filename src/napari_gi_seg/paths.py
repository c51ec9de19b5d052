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


def public_path(path: str | Path, root: str | Path | None = None, root_name: str | None = None) -> str:
    """How a path is written into anything that may leave this computer (model specs,
    model cards, run configs, evaluation reports): never the absolute local path.

    ``path`` inside ``root`` -> ``"<root_name>/<relative path>"`` (POSIX separators);
    anything else -> the last component only (``"Dataset501_Corrections"``).

    Parameters
    ----------
    path: the local file or folder.
    root: a folder whose name may be shown (e.g. the dataset folder).
    root_name: the label of ``root`` (default its folder name).

    Returns
    -------
    str
        A relative, machine-independent description; ``""`` for an empty path.
    """
    p = Path(path)
    if root is not None:
        try:
            rel = p.resolve().relative_to(Path(root).resolve())
        except (ValueError, OSError):
            pass
        else:
            label = root_name or Path(root).resolve().name
            return f"{label}/{rel.as_posix()}" if rel.parts else label
    return p.name


SECRET_FILE = "installation.key"


def installation_secret() -> bytes:
    """The per-installation secret key (32 random bytes) used to pseudonymise case
    ids (HMAC-SHA256, see :func:`napari_gi_seg.curation.export.pseudonym`).

    Stored in ``<user_dir>/installation.key``, created on first use with mode 0600
    (``O_CREAT | O_EXCL``, so two processes starting together agree on one key). The
    key never leaves this computer; without it a case id cannot be traced back to a
    file or folder name by guessing.

    Raises
    ------
    OSError
        The user folder is not writable or the key file is unreadable.
    """
    import secrets

    path = user_dir() / SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process may be writing it right now
            key = path.read_bytes()
            if len(key) >= 32:
                return key
            import time

            time.sleep(0.02)
        raise OSError(
            f"{path}: installation key is damaged (shorter than 32 bytes); delete it to make a new one"
        ) from None
    try:
        key = secrets.token_bytes(32)
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key
