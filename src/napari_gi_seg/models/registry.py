"""Model registry: bundled models (package data) plus user models.

Layout of both roots: ``<root>/<name>/<version>/{spec.json, model.safetensors,
MODEL_CARD.md, ...}``. The bundled root is read-only package data; the user root is
``<user_dir>/models`` (``$NAPARI_GI_SEG_HOME`` overrides the user folder). A version,
once written, is never overwritten.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..paths import user_dir
from .network import load_network, save_weights
from .spec import ModelSpec

BUNDLED_ROOT = Path(__file__).with_name("bundled")
DEFAULT_MODEL = "chaos-t2spir"
WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "spec.json"


class ModelNotFoundError(LookupError):
    """No registered model has the requested name (and version)."""


class VersionExistsError(FileExistsError):
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


def _scan(root: Path, bundled: bool) -> list[ModelEntry]:
    out = []
    if not root.is_dir():
        return out
    for name_dir in sorted(p for p in root.iterdir() if p.is_dir()):
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


def register_model(
    spec: ModelSpec,
    model: torch.nn.Module | None = None,
    weights_path: str | Path | None = None,
    extra_files: dict[str, str | Path] | None = None,
    root: str | Path | None = None,
    half: bool = False,
) -> ModelEntry:
    """Add ``spec`` with its weights (a network or an existing safetensors file).

    The folder is assembled in a temp dir and renamed into place, so a crash never
    leaves a half-registered model. ``root`` defaults to the user models folder
    (pass :data:`BUNDLED_ROOT` to ship a model with the package).

    Raises
    ------
    VersionExistsError
        If ``spec.name``/``spec.version`` already exists (bundled or user).
    """
    root = Path(root) if root is not None else user_models_root()
    dest = root / spec.name / str(spec.version)
    if dest.exists() or any(e.name == spec.name and e.version == spec.version for e in list_models()):
        raise VersionExistsError(
            f"model {spec.key} is already registered; versions are never overwritten (use version {next_version(spec.name)})"
        )
    if (model is None) == (weights_path is None):
        raise ValueError("give exactly one of model or weights_path")
    if not spec.created:
        spec.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if not spec.software_version:
        spec.software_version = __version__
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.version}-", dir=dest.parent))
    try:
        spec.save(tmp / SPEC_FILE)
        if model is not None:
            save_weights(model, tmp / WEIGHTS_FILE, half=half)
        else:
            shutil.copyfile(weights_path, tmp / WEIGHTS_FILE)
        for fname, src in (extra_files or {}).items():
            if Path(src).exists():
                shutil.copyfile(src, tmp / fname)
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ModelEntry(spec.name, spec.version, dest, root.resolve() == BUNDLED_ROOT.resolve())
