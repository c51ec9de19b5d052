"""The session half of the Correct-and-review widget: autosave, restore, earlier copies.

Over :mod:`napari_gi_seg.curation.session`: the GUI thread only copies the case's
arrays (:meth:`~napari_gi_seg.curation.session.Autosaver.snapshot`), the write runs in a
napari ``thread_worker``. A saved session is offered for restore when the same pixels
are opened again; "No" keeps it as a dated copy that *Restore earlier session...*
brings back.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QInputDialog, QMessageBox

from ..constants import RESTORE_ENV, SYNC_ENV, env_flag
from . import _context as C
from .controller import controller_of


def _flush_autosavers(autosavers: list) -> None:
    """Save every dirty case (called on close; must not reference the widget).
    A save still being written in a worker is waited for (up to 10 s) first, so
    an older snapshot never lands after this newer one."""
    import time

    for a in list(autosavers):
        t_end = time.monotonic() + 10.0
        while getattr(a, "writing", False) and time.monotonic() < t_end:
            time.sleep(0.01)
        try:
            if a.dirty:
                a.save_now()
        except Exception:  # noqa: BLE001 - closing must never crash
            pass


class SessionMixin:
    """Session methods of :class:`~.correct_widget.CorrectWidget` (needs ``viewer``,
    ``_ctx``, ``_autosavers``, ``_autosaver_list``, ``_asked``, ``_save_worker``,
    ``session_label`` and ``select_labels``)."""

    # ------------------------------------------------------------------ sessions
    def _store(self):
        from ..curation.session import SessionStore

        return SessionStore()

    def _state_of(self, ctx):
        """Everything a session holds for ``ctx`` (called by the Autosaver)."""
        return controller_of(self.viewer, ctx).session_state()

    def _autosaver(self, ctx):
        from ..curation.session import Autosaver

        a = self._autosavers.get(id(ctx))
        if a is None:
            a = Autosaver(self._store(), ctx.fingerprint(), lambda ctx=ctx: self._state_of(ctx))
            self._autosavers[id(ctx)] = a
            self._autosaver_list.append(a)
            # the snapshot buffers are allocated off the GUI thread, before the first save
            from napari.qt.threading import create_worker

            create_worker(a.prepare_buffers, tuple(ctx.labels_layer.data.shape), _start_thread=True)
        return a

    def _mark_dirty(self, ctx) -> None:
        try:
            self._autosaver(ctx).mark_dirty()
        except Exception as e:  # noqa: BLE001 - bookkeeping must not break editing
            self.session_label.setText(f"autosave unavailable: {e}")

    def autosave_now(self, force: bool = False, wait: bool = False):
        """Save the selected case if it changed since the last save (``force``:
        always).

        The GUI thread only copies the arrays (:meth:`Autosaver.snapshot`); the
        compression, fsync and rename run in a napari ``thread_worker``
        (:meth:`Autosaver.write`). With ``wait`` (or ``NAPARI_GI_SEG_SYNC=1``) the
        write runs here and the session file is returned. Returns the worker
        (started) or the file; ``None`` when there was nothing to save or a save is
        still being written (the case stays dirty; the next tick saves it)."""
        ctx = self._ctx
        if ctx is None or ctx.labels_layer is None or ctx.image_layer is None:
            return None
        a = self._autosaver(ctx)
        if not (force or a.dirty):
            return None
        if self._save_worker is not None:
            a.mark_dirty()
            return None
        try:
            snap = a.snapshot()
        except (OSError, ValueError) as e:
            self.session_label.setText(f"autosave unavailable: {e}")
            return None
        if wait or env_flag(SYNC_ENV):
            try:
                path = a.write(snap)
            except (OSError, ValueError) as e:
                self._save_failed(e)
                return None
            self._saved(path)
            return path
        from napari.qt.threading import create_worker

        worker = create_worker(a.write, snap, _start_thread=False)
        worker.returned.connect(self._saved)
        worker.errored.connect(self._save_failed)
        worker.finished.connect(self._save_done)
        self._save_worker = worker
        worker.start()
        return worker

    def _saved(self, path) -> None:
        from datetime import datetime

        self.session_label.setText(f"saved {datetime.now():%H:%M:%S}")

    def _save_failed(self, exc) -> None:
        from napari.utils.notifications import show_error

        show_error(f"Autosave failed: {exc}")
        self.session_label.setText(f"autosave failed: {exc}")

    def _save_done(self) -> None:
        self._save_worker = None

    @property
    def is_saving(self) -> bool:
        """True while a session file is being written in a worker."""
        return self._save_worker is not None

    def offer_restore(self, image_layer) -> bool:
        """If a saved session exists for ``image_layer``'s pixels, ask whether to
        restore it (``NAPARI_GI_SEG_RESTORE=yes|no`` answers without asking).

        "No" keeps that session as a dated copy
        (:meth:`~napari_gi_seg.curation.session.SessionStore.archive`), so the new
        work's autosave never overwrites it; :meth:`restore_earlier` brings it back.
        Returns True when restored."""
        import os

        if image_layer is None or getattr(image_layer, "ndim", 0) != 3:
            return False
        try:
            from ..curation.session import image_fingerprint

            fp = image_fingerprint(np.asarray(image_layer.data))
            if fp in self._asked or self._store().find(fp) is None:
                return False
        except Exception:  # noqa: BLE001 - a broken store must not block opening images
            return False
        self._asked.add(fp)
        answer = os.environ.get(RESTORE_ENV, "").strip().lower()
        if answer not in ("yes", "1", "true", "no", "0", "false"):
            btn = QMessageBox.question(
                self,
                "Restore session",
                f"A saved correction session exists for {image_layer.name}. Restore it?\n\n"
                "No: start afresh; the saved session is kept as a dated copy "
                "(Correct tab > Restore earlier session...).",
                QMessageBox.Yes | QMessageBox.No,
                QMessageBox.Yes,
            )
            answer = "yes" if btn == QMessageBox.Yes else "no"
        if answer in ("no", "0", "false"):
            self._keep_as_copy(fp, image_layer.name)
            return False
        return self.restore_session(image_layer) is not None

    def _keep_as_copy(self, fp: str, name: str) -> None:
        from napari.utils.notifications import show_error, show_info

        try:
            copy = self._store().archive(fp)
        except OSError as e:
            show_error(f"Could not keep the earlier session of {name}: {e}")
            return
        if copy is not None:
            show_info(
                f"The earlier session of {name} was kept; Correct tab > Restore earlier session... brings it back."
            )
            self.session_label.setText("earlier session kept as a dated copy")

    def earlier_sessions(self, image_layer=None) -> list:
        """Dated copies of the sessions of ``image_layer`` (default: the selected case's
        image), newest first (:meth:`~napari_gi_seg.curation.session.SessionStore.copies`)."""
        from ..curation.session import image_fingerprint

        img = image_layer if image_layer is not None else getattr(self._ctx, "image_layer", None)
        if img is None:
            return []
        return self._store().copies(image_fingerprint(np.asarray(img.data)))

    def restore_earlier(self, path=None, image_layer=None):
        """Restore a dated copy (``path``; asked for among :meth:`earlier_sessions` when
        ``None``) into the case of ``image_layer`` (default: the selected case's image).
        Returns the case or ``None``."""
        from napari.utils.notifications import show_info

        img = image_layer if image_layer is not None else getattr(self._ctx, "image_layer", None)
        if img is None:
            imgs = C.image_layers(self.viewer)
            img = imgs[-1] if imgs else None
        copies = self.earlier_sessions(img) if img is not None else []
        if path is None:
            if not copies:
                show_info("No earlier session of this scan was kept.")
                return None
            labels = [_copy_label(p) for p in copies]
            choice, ok = QInputDialog.getItem(self, "Restore earlier session", "Saved at (UTC):", labels, 0, False)
            if not ok:
                return None
            path = copies[labels.index(choice)]
        return self.restore_session(img, path=path)

    def restore_session(self, image_layer, path=None):
        """Restore the saved session of ``image_layer`` (or the dated copy ``path``):
        labels, prediction, review state and classes go into its
        ``"<image> segmentation"`` case, which becomes the active layer (the prediction
        stays hidden and locked). Returns the case or ``None``."""
        from napari.utils.notifications import show_error, show_info

        from ..curation.session import case_from_session, image_fingerprint

        try:
            data = self._store().load(image_fingerprint(np.asarray(image_layer.data)), path=path)
        except (OSError, ValueError, LookupError) as e:
            show_error(f"Could not restore the session of {image_layer.name}: {e}")
            return None
        if tuple(data.labels.shape) != tuple(image_layer.data.shape):
            show_error(
                f"Session for {image_layer.name} has shape {data.labels.shape}, the image {image_layer.data.shape}; "
                "not restored"
            )
            return None
        state = case_from_session(data)
        ctx = C.ensure_case(self.viewer, image_layer, state.class_names, state.colours, state.model_key)
        ctl = controller_of(self.viewer, ctx)
        ctl.apply_session(state)
        # restored while napari inserts the image: napari then makes the image active,
        # so the layer rules are applied again once the insertion is over
        QTimer.singleShot(0, lambda: ctl.show_case() if ctl.labels_layer in self.viewer.layers else None)
        self.select_labels(ctx.labels_layer)
        self._autosaver(ctx)
        if path is not None:
            self._mark_dirty(ctx)  # the restored copy becomes the scan's session at the next save
        show_info(f"Restored the session of {image_layer.name} ({ctx.tracker.counts()['reviewed']} reviewed slices)")
        return ctx


def _copy_label(path) -> str:
    """``"2026-12-02 15:59:36"`` from a dated copy's name (its save time, UTC)."""
    import datetime as _dt

    stamp = path.name.split(".")[1].split("-")[0]
    try:
        return _dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").strftime("%Y-%m-%d %H:%M:%S") + (
            "" if "-" not in path.name.split(".")[1] else f" ({path.name.split('.')[1].split('-')[1]})"
        )
    except ValueError:
        return path.name
