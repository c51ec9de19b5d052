"""Correction sessions: save, find and resume work on a scan (GUI-free).

A session is stored as **one file** ``<root>/<fingerprint>.npz`` (numpy's compressed
zip, :func:`numpy.savez_compressed`) holding the ``(z, y, x)`` uint8 labels, the
optional model prediction, the per-slice review states and a small JSON ``info``
dict. It is written through :func:`napari_gi_seg._atomic.atomic_path` (a temporary
file in the same folder, fsync, :func:`os.replace`): a crash or a full disk during a
save leaves the previous session readable.

Sessions are keyed by :func:`image_fingerprint` of the image data, so reopening the
same scan (whatever its path) offers to resume. Privacy: ``info`` keeps only the
keys in :data:`SESSION_INFO_KEYS` (model key, class names, colours); anything else a
caller passes (a layer name, which for a DICOM folder is often the patient's name,
a folder or file path) is dropped before writing.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_path
from ..errors import InputError
from ..io.fingerprint import image_fingerprint
from ..io.volume import InvalidInputError
from ..paths import user_dir
from .review import ReviewTracker

__all__ = [
    "image_fingerprint",
    "SessionData",
    "SessionStore",
    "Snapshot",
    "Autosaver",
    "CaseState",
    "state_from_case",
    "case_from_session",
]

_FP_RE = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
FORMAT_VERSION = 1
#: The only ``info`` keys a session file stores (no layer, file or folder names;
#: ``uncertainty`` is the model's per-slice figure, ``(z,)`` floats or null).
SESSION_INFO_KEYS = ("model_key", "class_names", "colours", "activation", "uncertainty")
log = logging.getLogger(__name__)


@dataclass
class SessionData:
    """A loaded session.

    ``labels``: ``(z, y, x)`` uint8; ``prediction``: ``(z, y, x)`` uint8 model output or
    ``None``; ``review``: the :class:`ReviewTracker`; ``info``: the caller's dict;
    ``saved_at``: UTC ISO 8601 time of the save (``"2025-01-31T12:00:00+00:00"``);
    ``path``: the session file.
    """

    labels: np.ndarray
    prediction: np.ndarray | None
    review: ReviewTracker
    info: dict
    saved_at: str
    path: Path | None = None


def _public_info(info: Mapping[str, Any] | None) -> dict:
    """``info`` restricted to :data:`SESSION_INFO_KEYS`."""
    info = dict(info or {})
    dropped = sorted(k for k in info if k not in SESSION_INFO_KEYS)
    if dropped:
        log.debug("session info keys not stored (privacy): %s", dropped)
    return {k: info[k] for k in SESSION_INFO_KEYS if k in info}


def _check_fp(fingerprint: str) -> str:
    if not isinstance(fingerprint, str) or not _FP_RE.match(fingerprint):
        raise InputError(f"bad session fingerprint {fingerprint!r}: expected 8-128 letters, digits, '_' or '-'")
    return fingerprint


class SessionStore:
    """Folder of saved sessions, ``root`` (default ``user_dir()/sessions``, created on
    demand; ``$NAPARI_GI_SEG_HOME`` moves it)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else user_dir() / "sessions"

    def path_for(self, fingerprint: str) -> Path:
        """The file a session with this fingerprint lives in (may not exist)."""
        return self.root / f"{_check_fp(fingerprint)}.npz"

    def save(
        self,
        fingerprint: str,
        labels: np.ndarray,
        prediction: np.ndarray | None,
        review: ReviewTracker,
        info: Mapping[str, Any] | None = None,
    ) -> Path:
        """Save atomically (temp file + :func:`os.replace`) and return the file path.

        ``labels`` / ``prediction``: ``(z, y, x)`` integer arrays (stored uint8);
        ``review.n_slices`` must equal ``z``; ``info`` must be JSON-serialisable; only
        its :data:`SESSION_INFO_KEYS` are stored (others are dropped).

        Raises ``ValueError`` for shape mismatches, labels > 255 or non-JSON ``info``;
        ``OSError`` from the file system (the previous save is then untouched).
        """
        path = self.path_for(fingerprint)
        labels = np.asarray(labels)
        if labels.ndim != 3:
            raise InputError(f"labels must be (z, y, x), got shape {labels.shape}")
        if review.n_slices != labels.shape[0]:
            raise InputError(f"review tracks {review.n_slices} slices but labels have {labels.shape[0]}")
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise InputError("labels must be in 0..255 to be saved as uint8")
        arrays: dict[str, np.ndarray] = {"labels": labels.astype(np.uint8, copy=False)}
        if prediction is not None:
            prediction = np.asarray(prediction)
            if prediction.shape != labels.shape:
                raise InputError(f"prediction shape {prediction.shape} differs from labels {labels.shape}")
            arrays["prediction"] = prediction.astype(np.uint8, copy=False)
        saved_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        try:
            meta = json.dumps(
                {
                    "format_version": FORMAT_VERSION,
                    "saved_at": saved_at,
                    "review": review.to_dict(),
                    "info": _public_info(info),
                }
            )
        except (TypeError, ValueError) as e:
            raise InputError(f"session info must be JSON-serialisable: {e}") from e
        arrays["meta_json"] = np.array(meta)
        with atomic_path(path, mode=0o600) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        return path

    def find(self, fingerprint: str) -> Path | None:
        """The session file for ``fingerprint``, or ``None``."""
        p = self.path_for(fingerprint)
        return p if p.is_file() else None

    def load(self, fingerprint: str, path: str | Path | None = None) -> SessionData:
        """Load a session (``path``: one of its dated :meth:`copies` instead).

        Raises ``FileNotFoundError`` when there is none and
        :class:`~napari_gi_seg.io.volume.InvalidInputError` (naming the file) when it
        is corrupt.
        """
        p = self.find(fingerprint) if path is None else Path(path)
        if p is None or not p.is_file():
            raise FileNotFoundError(f"no saved session for fingerprint {fingerprint} in {self.root}")
        try:
            with np.load(p, allow_pickle=False) as z:
                labels = np.array(z["labels"], dtype=np.uint8)
                prediction = np.array(z["prediction"], dtype=np.uint8) if "prediction" in z.files else None
                meta = json.loads(str(z["meta_json"]))
            review = ReviewTracker.from_dict(meta["review"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, json.JSONDecodeError) as e:
            raise InvalidInputError(p, f"corrupt session file: {e}") from e
        if review.n_slices != labels.shape[0]:
            raise InvalidInputError(p, f"review has {review.n_slices} slices but labels {labels.shape[0]}")
        info = _public_info(meta.get("info") if isinstance(meta.get("info"), dict) else {})
        return SessionData(labels, prediction, review, info, str(meta.get("saved_at", "")), p)

    def archive(self, fingerprint: str) -> Path | None:
        """Keep the current session of ``fingerprint`` as a dated copy
        ``<fingerprint>.<YYYYmmddTHHMMSSZ>.npz`` (its save time, UTC) and free the
        main file, so new work on the scan starts a new session while the old one
        stays restorable (:meth:`copies`, :meth:`load` with ``path``).

        Returns the copy, or ``None`` when there was no session. Raises ``OSError``
        from the file system (the session is then untouched)."""
        p = self.find(fingerprint)
        if p is None:
            return None
        stamp = _dt.datetime.fromtimestamp(p.stat().st_mtime, _dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        dest = self.root / f"{fingerprint}.{stamp}.npz"
        n = 1
        while dest.exists():
            dest = self.root / f"{fingerprint}.{stamp}-{n}.npz"
            n += 1
        p.replace(dest)
        return dest

    def copies(self, fingerprint: str) -> list[Path]:
        """Dated copies kept by :meth:`archive` for ``fingerprint``, newest first."""
        if not self.root.is_dir():
            return []
        fp = _check_fp(fingerprint)
        return sorted(self.root.glob(f"{fp}.*.npz"), key=lambda q: q.name, reverse=True)

    def delete(self, fingerprint: str) -> bool:
        """Remove a session; True if one existed."""
        p = self.path_for(fingerprint)
        try:
            p.unlink()
            return True
        except FileNotFoundError:
            return False

    def list(self) -> list[str]:
        """Fingerprints of all saved sessions, newest file first."""
        if not self.root.is_dir():
            return []
        files = [p for p in self.root.glob("*.npz") if not p.name.startswith(".") and _FP_RE.match(p.stem)]
        return [p.stem for p in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)]


@dataclass
class Snapshot:
    """A copy of a case's state taken for one save (so the save can run in a worker
    thread while the clinician keeps editing).

    ``labels``/``prediction``: ``(z, y, x)`` uint8 copies (``prediction`` may be
    ``None``); ``review``: a copy of the :class:`ReviewTracker`; ``info``: a copy of the
    caller's JSON-able dict.
    """

    labels: np.ndarray
    prediction: np.ndarray | None
    review: ReviewTracker
    info: dict


class Autosaver:
    """Autosave bookkeeping for one scan; the widget drives it from a ``QTimer``
    (every 30 s) and on close.

    ``get_state()`` returns the current state, either a mapping with keys
    ``labels``, ``prediction``, ``review``, ``info`` (``prediction``/``info``
    optional) or a tuple ``(labels, prediction, review, info)``, as for
    :meth:`SessionStore.save`.

    A save has two halves so that the GUI thread only copies: :meth:`snapshot`
    (copies the arrays, clears :attr:`dirty`; call it where the data is edited) and
    :meth:`write` (compress, fsync and rename; safe in a worker thread).
    :meth:`save_now` does both.

    The copies go into buffers kept between saves (allocated and touched by
    :meth:`prepare_buffers`, e.g. in a worker): filling memory the process already
    owns costs ~20 ms for 200 x 512 x 512 uint8, a fresh allocation several times
    that (page faults). A snapshot taken while the previous one is still being
    written gets fresh arrays instead.
    """

    def __init__(self, store: SessionStore, fingerprint: str, get_state: Callable[[], Any]):
        self.store = store
        self.fingerprint = _check_fp(fingerprint)
        self.get_state = get_state
        self.dirty = False
        self.last_saved: Path | None = None
        self.last_saved_at: _dt.datetime | None = None
        self._buffers: dict[str, np.ndarray] = {}
        self._busy = False  # a snapshot is out (being written): its buffers are in use

    @property
    def writing(self) -> bool:
        """True from :meth:`snapshot` until its :meth:`write` has finished."""
        return self._busy

    def prepare_buffers(self, shape: tuple[int, ...], prediction: bool = True) -> None:
        """Allocate (and touch) the ``(z, y, x)`` uint8 snapshot buffers now, so the
        first snapshot only copies; meant to run in a worker thread."""
        for name in ("labels", "prediction") if prediction else ("labels",):
            buf = self._buffers.get(name)
            if buf is None or buf.shape != tuple(shape):
                buf = np.empty(tuple(shape), dtype=np.uint8)
                buf.fill(0)
                self._buffers[name] = buf

    def _copy(self, name: str, arr) -> np.ndarray:
        a = np.asarray(arr)
        if a.dtype != np.uint8:
            return np.array(a, copy=True)  # SessionStore.save checks the range
        buf = self._buffers.get(name)
        if self._busy or buf is None or buf.shape != a.shape:
            buf = np.empty_like(a)
            if not self._busy:
                self._buffers[name] = buf
        np.copyto(buf, a)
        return buf

    def mark_dirty(self) -> None:
        """Something changed since the last save."""
        self.dirty = True

    def snapshot(self) -> Snapshot:
        """Copy the current state and clear :attr:`dirty` (edits after this set it
        again). Raises what ``get_state`` raises, with :attr:`dirty` unchanged."""
        state = self.get_state()
        if isinstance(state, Mapping):
            labels, prediction, review, info = (
                state["labels"],
                state.get("prediction"),
                state["review"],
                state.get("info") or {},
            )
        else:
            labels, prediction, review, *rest = state
            info = rest[0] if rest else {}
        snap = Snapshot(
            labels=self._copy("labels", labels),
            prediction=None if prediction is None else self._copy("prediction", prediction),
            review=ReviewTracker.from_dict(review.to_dict()),
            info=json.loads(json.dumps(dict(info or {}), default=str)),
        )
        self.dirty = False
        self._busy = True
        return snap

    def write(self, snap: Snapshot) -> Path:
        """Save a :meth:`snapshot` (:meth:`SessionStore.save`: compressed, fsync'd,
        atomic). Safe to call from a worker thread. On an exception :attr:`dirty` is
        set again (the next tick retries) and the previous save stays valid."""
        try:
            path = self.store.save(self.fingerprint, snap.labels, snap.prediction, snap.review, snap.info)
        except BaseException:
            self.dirty = True
            raise
        finally:
            self._busy = False
        self.last_saved = path
        self.last_saved_at = _dt.datetime.now(_dt.timezone.utc)
        return path

    def save_now(self) -> Path:
        """Snapshot and write now, in the calling thread (dirty or not). On an
        exception the flag stays set and the previous save stays valid."""
        was_dirty = self.dirty
        try:
            snap = self.snapshot()
        except BaseException:
            self.dirty = was_dirty
            raise
        try:
            return self.write(snap)
        except BaseException:
            self.dirty = self.dirty or was_dirty
            raise

    def save_if_dirty(self) -> Path | None:
        """:meth:`save_now` when :attr:`dirty`, else ``None`` (for the timer)."""
        return self.save_now() if self.dirty else None


@dataclass
class CaseState:
    """What a session holds of one case, independent of napari.

    Attributes
    ----------
    labels : ndarray
        ``(z, y, x)`` uint8 editable labels.
    prediction : ndarray or None
        ``(z, y, x)`` uint8 model output.
    review : ReviewTracker
        Per-slice review state (``z`` slices).
    class_names : dict
        ``{label value: name}`` including ``0: "background"``.
    colours : dict
        ``{label value: "#rrggbb"}`` of the foreground classes.
    model_key : str or None
        ``"name:version"`` of the model that predicted.
    activation : str
        ``"softmax"`` or ``"sigmoid"``.
    uncertainty : ndarray or None
        ``(z,)`` float32 per-slice uncertainty, NaN where never segmented.
    """

    labels: np.ndarray
    prediction: np.ndarray | None
    review: ReviewTracker
    class_names: dict
    colours: dict
    model_key: str | None = None
    activation: str = "softmax"
    uncertainty: np.ndarray | None = None


def state_from_case(case: CaseState) -> dict:
    """The state an :class:`Autosaver` saves for a case: ``{"labels", "prediction",
    "review", "info"}`` with ``info`` holding only :data:`SESSION_INFO_KEYS` values
    (JSON-able: string keys, NaN uncertainty as ``None``; never a layer name)."""
    u = case.uncertainty
    info = {
        "class_names": {str(k): v for k, v in case.class_names.items()},
        "colours": {str(k): v for k, v in case.colours.items()},
        "model_key": case.model_key,
        "activation": case.activation,
        "uncertainty": None if u is None else [None if not np.isfinite(v) else round(float(v), 5) for v in u],
    }
    return {"labels": np.asarray(case.labels), "prediction": case.prediction, "review": case.review, "info": info}


def case_from_session(data: SessionData) -> CaseState:
    """The inverse of :func:`state_from_case` for a loaded session: class names
    (``"label <v>"`` for values a session without names holds), colours, model
    key, activation and the ``(z,)`` uncertainty (dropped when its length is not
    the slice count)."""
    info = data.info or {}
    names = {int(k): str(v) for k, v in (info.get("class_names") or {}).items()}
    if not names:
        names = {0: "background", **{int(v): f"label {v}" for v in np.unique(data.labels) if v}}
    colours = {int(k): str(v) for k, v in (info.get("colours") or {}).items()}
    unc = info.get("uncertainty")
    u = None
    if isinstance(unc, list) and len(unc) == data.review.n_slices:
        u = np.array([np.nan if v is None else v for v in unc], dtype=np.float32)
    return CaseState(
        labels=np.asarray(data.labels, dtype=np.uint8),
        prediction=None if data.prediction is None else np.asarray(data.prediction, dtype=np.uint8),
        review=data.review,
        class_names=names,
        colours=colours,
        model_key=info.get("model_key"),
        activation=info.get("activation") or "softmax",
        uncertainty=u,
    )
