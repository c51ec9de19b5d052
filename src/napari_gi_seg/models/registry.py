"""Model registry: bundled models (package data) plus user models.

Layout of both roots: ``<root>/<name>/<version>/{spec.json, model.safetensors,
MODEL_CARD.md, ...}``. The bundled root is read-only package data; the user root is
``<user_dir>/models`` (``$NAPARI_GI_SEG_HOME`` overrides the user folder). A version,
once written, is never overwritten.

Safety rules (docs/robustness.md):

* **Names** match :data:`~napari_gi_seg.models.spec.MODEL_NAME_PATTERN`
  (``^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$``) everywhere: the CLI, the spec and
  :func:`register_model`; the destination must also resolve inside the registry root.
* **Versions** are reserved atomically: ``mkdir <root>/<name>/<version>`` succeeds for
  exactly one process (POSIX ``mkdir`` is atomic), the loser tries the next version.
  The model is assembled in a temporary folder beside it and renamed onto the empty
  reserved folder (:func:`napari_gi_seg._atomic.atomic_dir`); a reservation left
  empty by a killed process is removed after :data:`STALE_RESERVATION_S`.
* **Run folders** (checkpoints, metrics, curve) are unique per run:
  ``<user_dir>/runs/<name>-v<version>-<UTC time>-<random>``, created with ``mkdir``;
  a work folder inside the registry is refused (:func:`check_work_dir`).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from .._atomic import atomic_dir, default_file_mode, write_bytes, write_json
from ..errors import GiSegError
from ..paths import user_dir
from .network import load_network, save_weights, weights_sha256
from .spec import ModelSpec, validate_model_name

BUNDLED_ROOT = Path(__file__).with_name("bundled")
DEFAULT_MODEL = "chaos-t2spir"
WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "spec.json"
#: Marker a finished run folder gets once its model is registered.
RUN_REGISTERED_FILE = "registered.json"
#: An empty (reserved) version folder older than this is a leftover of a killed run.
STALE_RESERVATION_S = 600.0


class ModelNotFoundError(GiSegError, LookupError):
    """No registered model has the requested name (and version)."""


class VersionExistsError(GiSegError, FileExistsError):
    """A model version is already registered; versions are never overwritten."""


@dataclass(frozen=True)
class ModelEntry:
    """One registered model version (``folder`` holds spec.json and the weights)."""

    name: str
    version: int
    folder: Path
    bundled: bool

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"

    def spec(self) -> ModelSpec:
        return ModelSpec.load(self.folder / SPEC_FILE)

    @property
    def weights_path(self) -> Path:
        return self.folder / WEIGHTS_FILE


def user_models_root() -> Path:
    """``<user_dir>/models``, created on demand."""
    p = user_dir() / "models"
    p.mkdir(parents=True, exist_ok=True)
    return p


def validate_name(name: object) -> str:
    """``name`` if it is a valid model name (:data:`~.spec.MODEL_NAME_PATTERN`).

    Raises
    ------
    ValueError
        Naming the bad name and the rule.
    """
    return validate_model_name(name)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _name_dir(root: Path, name: str) -> Path:
    validate_name(name)
    d = root / name
    if not _inside(d, root) or d.resolve() == root.resolve():
        raise ValueError(f"model name {name!r} resolves outside the registry {root}")
    return d


def _scan(root: Path, bundled: bool) -> list[ModelEntry]:
    out = []
    if not root.is_dir():
        return out
    for name_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            validate_name(name_dir.name)  # temp folders, hidden folders, foreign names
        except ValueError:
            continue
        for vdir in name_dir.iterdir():
            if vdir.is_dir() and vdir.name.isdigit() and (vdir / SPEC_FILE).exists() and (vdir / WEIGHTS_FILE).exists():
                out.append(ModelEntry(name_dir.name, int(vdir.name), vdir, bundled))
    return out


def list_models() -> list[ModelEntry]:
    """All registered versions, bundled first, sorted by name then version.
    A user model with the same name and version as a bundled one is ignored."""
    entries = {(e.name, e.version): e for e in _scan(BUNDLED_ROOT, True)}
    for e in _scan(user_models_root(), False):
        entries.setdefault((e.name, e.version), e)
    return sorted(entries.values(), key=lambda e: (not e.bundled, e.name, e.version))


def parse_key(key: str) -> tuple[str, int | None]:
    """``"name"`` -> (name, None); ``"name:3"`` -> (name, 3)."""
    if ":" in key:
        name, v = key.rsplit(":", 1)
        if not v.isdigit():
            raise ModelNotFoundError(f"bad model version in {key!r}; use NAME or NAME:VERSION")
        return name, int(v)
    return key, None


def get_entry(name: str | None = None, version: int | None = None) -> ModelEntry:
    """The entry for ``name`` (``"name"`` or ``"name:version"``; default model when
    ``None``), the newest version unless ``version`` is given.

    Raises :class:`ModelNotFoundError` listing the known names.
    """
    name = name or DEFAULT_MODEL
    n, v = parse_key(name)
    version = version if version is not None else v
    entries = [e for e in list_models() if e.name == n]
    if version is not None:
        entries = [e for e in entries if e.version == version]
    if not entries:
        known = sorted({e.key for e in list_models()})
        raise ModelNotFoundError(
            f"unknown model {name!r}{'' if version is None else f' version {version}'}; registered: {', '.join(known) or 'none'}"
        )
    return max(entries, key=lambda e: e.version)


def load_model(
    name: str | None = None, version: int | None = None, device: str | torch.device = "cpu"
) -> tuple[ModelSpec, torch.nn.Module]:
    """Load a registered model: ``(spec, network in eval mode on device)``."""
    e = get_entry(name, version)
    spec = e.spec()
    return spec, load_network(spec, e.weights_path, device)


def next_version(name: str) -> int:
    """1 + the highest registered version of ``name`` (1 if none)."""
    vs = [e.version for e in list_models() if e.name == name]
    return max(vs, default=0) + 1


def _remove_stale_reservations(name_dir: Path) -> None:
    """Remove empty version folders (reservations) older than :data:`STALE_RESERVATION_S`.
    ``rmdir`` only removes an empty folder, so a finished model is never touched."""
    now = time.time()
    try:
        vdirs = [p for p in name_dir.iterdir() if p.name.isdigit() and p.is_dir()]
    except OSError:
        return
    for v in vdirs:
        try:
            if now - v.stat().st_mtime > STALE_RESERVATION_S and not any(v.iterdir()):
                v.rmdir()
        except OSError:
            pass


def reserve_version(name: str, root: str | Path | None = None, start: int | None = None) -> tuple[int, Path]:
    """Reserve the next free version of ``name``: ``mkdir <root>/<name>/<version>``,
    atomic, so two processes never get the same one (the loser tries the next).

    Parameters
    ----------
    name: the model name (validated).
    root: registry root (default the user models folder).
    start: lowest version to try (default 1); versions registered anywhere (bundled
        or user) are skipped.

    Returns
    -------
    (version, folder)
        The reserved, empty folder; fill it with :func:`register_model` (which
        calls this itself) or remove it with ``rmdir``.

    Raises
    ------
    ValueError
        Bad name, or one that resolves outside the registry.
    OSError
        The registry is not writable.
    """
    root = Path(root) if root is not None else user_models_root()
    name_dir = _name_dir(root, name)
    name_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_reservations(name_dir)
    v = max(int(start or 1), next_version(name))
    while True:
        folder = name_dir / str(v)
        try:
            folder.mkdir()
        except FileExistsError:
            v += 1
            continue
        return v, folder


def register_model(
    spec: ModelSpec,
    model: torch.nn.Module | None = None,
    weights_path: str | Path | None = None,
    extra_files: dict[str, str | Path | Callable[[ModelSpec], str | bytes]] | None = None,
    root: str | Path | None = None,
    half: bool = False,
    next_free: bool = False,
) -> ModelEntry:
    """Add ``spec`` with its weights (a network or an existing safetensors file).

    The version folder is reserved with ``mkdir`` (the lock), assembled in a temporary
    folder beside it and renamed onto it, so a crash never leaves a half-registered
    model and two processes never share a version. ``root`` defaults to the user
    models folder (pass :data:`BUNDLED_ROOT` to ship a model with the package).
    ``spec.weights_sha256`` is set to the sha256 of the ``model.safetensors`` written,
    and every later load checks it (:func:`~napari_gi_seg.models.network.verify_weights`).

    Parameters
    ----------
    extra_files
        ``{file name: source}``; a source is a file (copied if it exists) or a
        callable that gets the final spec (its version may have changed, see
        ``next_free``) and returns the text or bytes (e.g. the model card).
    next_free
        ``False``: register exactly ``spec.version`` or raise. ``True``: take
        ``spec.version`` or, if another process took it meanwhile, the next free
        version (``spec.version`` is updated).

    Raises
    ------
    VersionExistsError
        ``next_free`` is false and ``spec.name``/``spec.version`` already exists.
    ValueError
        A bad model name (:func:`validate_name`), or one that resolves outside the
        registry; both or neither of ``model`` and ``weights_path``.
    OSError
        From the file system (naming the folder); nothing is registered.
    """
    root = Path(root) if root is not None else user_models_root()
    name_dir = _name_dir(root, spec.name)
    if (model is None) == (weights_path is None):
        raise ValueError("give exactly one of model or weights_path")
    if next_free:
        spec.version, dest = reserve_version(spec.name, root, start=spec.version)
    else:
        dest = name_dir / str(spec.version)
        taken = any(e.name == spec.name and e.version == spec.version for e in list_models())
        if not taken:
            name_dir.mkdir(parents=True, exist_ok=True)
            _remove_stale_reservations(name_dir)
            try:
                dest.mkdir()
            except FileExistsError:
                taken = True
        if taken:
            raise VersionExistsError(
                f"model {spec.key} is already registered; versions are never overwritten "
                f"(use version {next_version(spec.name)})"
            )
    if not spec.created:
        spec.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if not spec.software_version:
        spec.software_version = __version__
    try:
        with atomic_dir(dest) as tmp:
            if model is not None:
                save_weights(model, tmp / WEIGHTS_FILE, half=half)
            else:
                shutil.copyfile(weights_path, tmp / WEIGHTS_FILE)
            spec.weights_sha256 = weights_sha256(tmp / WEIGHTS_FILE)  # checked on every load
            write_json(tmp / SPEC_FILE, spec.to_dict())
            for fname, src in (extra_files or {}).items():
                if callable(src):
                    content = src(spec)
                    write_bytes(tmp / fname, content.encode() if isinstance(content, str) else content)
                elif Path(src).exists():
                    shutil.copyfile(src, tmp / fname)
            for f in tmp.iterdir():
                os.chmod(f, default_file_mode())  # as open() would under the user's umask
    except BaseException:
        try:
            dest.rmdir()  # release the reservation (only if still empty)
        except OSError:
            pass
        raise
    return ModelEntry(spec.name, spec.version, dest, root.resolve() == BUNDLED_ROOT.resolve())


# ----------------------------------------------------------------- run folders
def runs_root() -> Path:
    """``<user_dir>/runs``: one folder per training run."""
    return user_dir() / "runs"


def check_work_dir(work_dir: str | Path) -> Path:
    """Refuse a training work folder inside a model registry (it would overwrite a
    registered version's card, metrics and curve); returns the path.

    Raises
    ------
    ValueError
        ``work_dir`` resolves inside the user models folder or the bundled models.
    """
    p = Path(work_dir)
    for root in (user_models_root(), BUNDLED_ROOT):
        if _inside(p, root):
            raise ValueError(
                f"{p}: work folder is inside the model registry ({root}); choose a folder outside it "
                "(registered models are never written to)"
            )
    return p


def new_run_dir(name: str, version: int | None = None) -> Path:
    """Create a fresh, unique run folder ``<runs>/<name>-v<version>-<UTC time>-<random>``
    (``mkdir``, so two runs never share one) and return it.

    Raises ``ValueError`` for a bad name, ``OSError`` from the file system.
    """
    validate_name(name)
    root = runs_root()
    root.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    tag = f"{name}-v{version}" if version is not None else name
    while True:
        d = root / f"{tag}-{stamp}-{secrets.token_hex(3)}"
        try:
            d.mkdir()
        except FileExistsError:
            continue
        return d


def find_resumable_run(name: str) -> Path | None:
    """The newest run folder of ``name`` that has a ``checkpoint_last.pt`` and was not
    registered yet (no :data:`RUN_REGISTERED_FILE`), or ``None``."""
    validate_name(name)
    root = runs_root()
    if not root.is_dir():
        return None
    pat = re.compile(rf"^{re.escape(name)}(-v\d+)?-\d{{8}}T\d{{6}}Z-[0-9a-f]{{6}}$")
    cands = [
        d
        for d in root.iterdir()
        if pat.match(d.name)
        and d.is_dir()
        and (d / "checkpoint_last.pt").is_file()
        and not (d / RUN_REGISTERED_FILE).exists()
    ]
    return max(cands, key=lambda d: (d / "checkpoint_last.pt").stat().st_mtime, default=None)


def run_dir(name: str, version: int | None = None, resume: bool = False) -> Path:
    """The run folder of a training run without an explicit work folder: with
    ``resume``, the newest unfinished run of ``name`` (:func:`find_resumable_run`),
    else (or when there is none) a fresh one (:func:`new_run_dir`)."""
    if resume:
        found = find_resumable_run(name)
        if found is not None:
            return found
    return new_run_dir(name, version)


def mark_run_registered(work_dir: str | Path, entry: ModelEntry) -> None:
    """Record in a run folder which model version it produced (so ``--resume`` never
    continues a finished run). Never raises for a missing folder."""
    try:
        write_json(Path(work_dir) / RUN_REGISTERED_FILE, {"model": entry.key})
    except OSError:
        pass
