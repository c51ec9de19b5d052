"""The one temp-then-rename helper: every file or folder the package writes goes
through here, so a crash, a ``kill -9`` or a full disk never leaves a half-written
file at a destination path.

Rules (the same for every writer)
---------------------------------
* The temporary file or folder lives **inside the destination folder** (never
  ``/tmp``: a rename across file systems is not atomic and fails with
  ``EXDEV``), under a hidden name with a recognisable prefix::

      .gi-seg-tmp-<pid>-<random>-<destination name>

  It ends with the destination's name, so libraries that pick the format from the
  extension (nibabel, tifffile, matplotlib) still see ``.nii.gz``/``.tif``/``.png``.
* Permissions follow the umask, as if the destination had been created directly:
  a file gets ``0o666 & ~umask`` (what ``open()`` gives), a folder ``0o777 & ~umask``
  (what ``mkdir`` gives), whatever mode the library that wrote the temporary chose.
  Only an explicit ``mode`` (e.g. ``0o600`` for session files) overrides it; a
  labels file or an RTSTRUCT with the patient's name is never made world-readable
  behind a ``umask 077``.
* When the writer is done the data is flushed to disk (``fsync`` of the file, or of
  every file of a folder), renamed onto the destination with :func:`os.replace`
  (atomic on POSIX and Windows for files) and the folder's entry is ``fsync``-ed.
* On any exception the temporary is removed and the exception re-raised; an
  ``OSError`` (``ENOSPC`` disk full, ``EACCES`` read-only folder, ...) is re-raised
  as the same type with ``filename`` set to the **destination** and a message that
  names it, so users never see a cryptic temp name.
* Temporaries left by killed runs are removed the next time anything is written to
  that folder (:func:`remove_stale`): when the pid in their name is not a running
  process on this machine, or when they are older than :data:`STALE_AFTER_S`
  (``$NAPARI_GI_SEG_STALE_TMP_MINUTES``; covers pid reuse and shared folders).

Fault injection (tests only): with ``$NAPARI_GI_SEG_FAULT_PAUSE_BEFORE_RENAME`` set
to a number of seconds, the helper prints ``gi-seg-fault: paused before rename of
<dest>`` on stderr and sleeps just before the final rename, so a test can
``kill -9`` the process at the worst moment; ``$NAPARI_GI_SEG_FAULT_PAUSE_MATCH``
limits that to destinations whose name contains the given text.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "TMP_PREFIX",
    "STALE_AFTER_S",
    "atomic_path",
    "atomic_dir",
    "write_bytes",
    "write_text",
    "write_json",
    "remove_stale",
    "is_temp_name",
    "current_umask",
    "default_file_mode",
    "default_dir_mode",
]

log = logging.getLogger(__name__)

#: Prefix of every temporary file or folder the package creates.
TMP_PREFIX = ".gi-seg-tmp-"
#: Temporaries older than this (seconds) are stale even if their pid is alive.
STALE_AFTER_S = 60.0 * float(os.environ.get("NAPARI_GI_SEG_STALE_TMP_MINUTES", "60"))
PAUSE_ENV = "NAPARI_GI_SEG_FAULT_PAUSE_BEFORE_RENAME"
PAUSE_MATCH_ENV = "NAPARI_GI_SEG_FAULT_PAUSE_MATCH"
_TMP_RE = re.compile(r"^" + re.escape(TMP_PREFIX) + r"(\d+)-[0-9a-f]+-")
_MAX_NAME = 200
_swept: set[str] = set()  # folders already cleaned by this process


def is_temp_name(name: str) -> bool:
    """True for names made by this module (``.gi-seg-tmp-<pid>-<hex>-...``)."""
    return bool(_TMP_RE.match(name))


def _temp_sibling(dest: Path) -> Path:
    tail = dest.name[-_MAX_NAME:]
    return dest.parent / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{tail}"


def current_umask() -> int:
    """The process's umask (Linux: read from ``/proc/self/status``, no change of state;
    elsewhere set and restored at once)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def default_file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open(path, "w")`` gives a new file."""
    return 0o666 & ~current_umask()


def default_dir_mode() -> int:
    """``0o777 & ~umask``: the mode ``mkdir`` gives a new folder."""
    return 0o777 & ~current_umask()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale(folder: str | Path, max_age_s: float | None = None) -> list[Path]:
    """Remove temporaries left in ``folder`` by killed runs; returns what was removed.

    A temporary is stale when the process in its name is gone (POSIX) or it is older
    than ``max_age_s`` (default :data:`STALE_AFTER_S`). Never raises (a folder that
    cannot be listed is skipped).
    """
    max_age = STALE_AFTER_S if max_age_s is None else max_age_s
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for e in entries:
        m = _TMP_RE.match(e.name)
        if not m:
            continue
        try:
            age = now - e.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if _pid_alive(int(m.group(1))) and age < max_age:
            continue
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
            removed.append(Path(e.path))
            log.info("removed stale temporary %s", e.path)
        except OSError:
            pass
    return removed


def _sweep_once(folder: Path) -> None:
    key = str(folder)
    if key not in _swept:
        _swept.add(key)
        remove_stale(folder)


def _fsync_path(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(p: Path) -> None:
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        _fsync_path(p)


def _pause_hook(dest: Path) -> None:
    pause = os.environ.get(PAUSE_ENV)
    match = os.environ.get(PAUSE_MATCH_ENV)
    if pause and (not match or match in dest.name):
        print(f"gi-seg-fault: paused before rename of {dest}", file=sys.stderr, flush=True)
        time.sleep(float(pause))


def _relabel(e: OSError, dest: Path) -> OSError:
    """The same kind of OSError, naming the destination instead of the temp file."""
    why = getattr(e, "gi_seg_reason", None) or e.strerror or str(e)
    try:
        new = type(e)(e.errno, f"{why} (writing {dest.name}; nothing was written)", str(dest))
    except TypeError:  # an OSError subclass with another constructor
        new = OSError(e.errno, f"{why} (writing {dest.name}; nothing was written)", str(dest))
    new.gi_seg_reason = why  # nested writers (a file inside a folder) do not repeat the suffix
    return new


def _remove(p: Path) -> None:
    with contextlib.suppress(OSError):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _prepare(dest: str | Path) -> tuple[Path, Path]:
    """Make ``dest``'s folder, sweep it of stale temporaries (once) and name a temporary.

    Parameters
    ----------
    dest : str or Path
        The final file or folder path.

    Returns
    -------
    dest : Path
        ``dest`` as a ``Path``.
    tmp : Path
        A fresh temporary name beside it (nothing is created there).

    Raises
    ------
    OSError
        The folder cannot be made; ``filename`` is ``dest``.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _relabel(e, dest) from e
    _sweep_once(dest.parent)
    return dest, _temp_sibling(dest)


@contextlib.contextmanager
def atomic_path(dest: str | Path, *, mode: int | None = None) -> Iterator[Path]:
    """Context manager yielding a temporary path beside ``dest`` to write one file to
    (with any library); on success the file is fsync-ed and renamed onto ``dest``.

    Parameters
    ----------
    dest
        The final file path; its folder is created if missing. An existing file is
        replaced only when the write succeeds.
    mode
        Permission bits of the final file; ``None`` (default): ``0o666 & ~umask``, as
        ``open()`` would create it (:func:`default_file_mode`).

    Raises
    ------
    OSError
        The writer's or the rename's ``OSError`` (same type and ``errno``), with
        ``filename`` = ``dest``; the temporary is removed and ``dest`` is untouched.

    Examples
    --------
    >>> with atomic_path(out) as tmp:       # doctest: +SKIP
    ...     nib.save(img, tmp)
    """
    dest, tmp = _prepare(dest)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{dest}: the writer produced no file")
        os.chmod(tmp, default_file_mode() if mode is None else mode)
        _fsync_path(tmp)
        _pause_hook(dest)
        os.replace(tmp, dest)
    except OSError as e:
        _remove(tmp)
        raise _relabel(e, dest) from e
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(dest.parent)


@contextlib.contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Context manager yielding a temporary folder beside ``dest``; on success every
    file in it is fsync-ed and the folder is renamed to ``dest``.

    ``dest`` must not exist, or be an **empty** folder (e.g. one reserved with
    ``mkdir`` as a lock, see :func:`napari_gi_seg.models.registry.reserve_version`),
    which the rename replaces atomically (POSIX ``rename(2)``).

    Raises
    ------
    FileExistsError
        ``dest`` exists and is not an empty folder (nothing is replaced).
    OSError
        From the file system, naming ``dest``; the temporary folder is removed.
    """
    dest, tmp = _prepare(dest)
    try:
        tmp.mkdir()
        yield tmp
        os.chmod(tmp, default_dir_mode())  # as mkdir would have made dest
        for root, _dirs, files in os.walk(tmp):
            for f in files:
                _fsync_path(Path(root) / f)
        _fsync_dir(tmp)
        _pause_hook(dest)
        try:
            os.rename(tmp, dest)
        except OSError:
            if dest.is_dir() and not any(dest.iterdir()) and os.name == "nt":
                dest.rmdir()  # Windows cannot rename onto an empty folder
                os.rename(tmp, dest)
            elif dest.exists():
                raise FileExistsError(
                    17, "exists and is not an empty folder; nothing was replaced", str(dest)
                ) from None
            else:
                raise
    except OSError as e:
        _remove(tmp)
        if e.filename == str(dest):
            raise
        raise _relabel(e, dest) from e
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(dest.parent)


def write_bytes(dest: str | Path, data: bytes, *, mode: int | None = None) -> Path:
    """Atomically write ``data`` to ``dest`` (see :func:`atomic_path`); returns ``dest``."""
    dest = Path(dest)
    with atomic_path(dest, mode=mode) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return dest


def write_text(dest: str | Path, text: str, *, mode: int | None = None) -> Path:
    """Atomically write UTF-8 ``text`` to ``dest``; returns ``dest``."""
    return write_bytes(dest, text.encode("utf-8"), mode=mode)


def write_json(dest: str | Path, obj: Any, *, indent: int = 2, **dumps_kwargs: Any) -> Path:
    """Atomically write ``obj`` as JSON (``indent`` 2, trailing newline); returns ``dest``.

    Raises ``TypeError``/``ValueError`` from :func:`json.dumps` before anything is written.
    """
    return write_text(dest, json.dumps(obj, indent=indent, **dumps_kwargs) + "\n")
