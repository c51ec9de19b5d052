"""Prompt tab: outline any structure with a box, clicks and scribbles, carry it
through the stack, commit it into the case's Labels layer.

Thin Qt over :class:`napari_gi_seg.interactive.PromptSession`. Prompts are placed on
three layers the widget adds beside the image (their real napari events drive it):

- ``"<image> prompt box"`` (Shapes, rectangle mode): a rectangle is the box on its slice;
- ``"<image> prompt points"`` (Points, add mode): a point is a click, green positive,
  magenta negative;
- ``"<image> prompt scribbles"`` (Labels, brush): label 1 strokes are positive, 2 negative.

The live object is the ``"<image> prompt preview"`` Labels layer. Keys on the prompt
layers (napari-nninteractive's): ``B`` box, ``P`` point, ``S`` scribble tool; ``T``
toggles positive/negative; ``Ctrl+Z`` undoes the last prompt; ``R`` resets the
object; ``Shift+P`` propagates it through the stack; ``C`` commits it.

Commit writes the object into the case's editable Labels layer under the chosen
structure through napari's undo history (one Ctrl-Z on that layer takes the whole
commit back) and the touched slices become EDITED; voxels of other structures are
kept unless *overwrite other structures* is ticked. The case comes from the case
controller (``_qt/controller.py``, :func:`active_case` / :func:`case_for_image`)
where the package has it, else from :mod:`._context`.

Model calls run in a napari ``thread_worker`` (``NAPARI_GI_SEG_SYNC=1``: in the
calling thread), one at a time, in the order the prompts came; the promptable network
is loaded once per process (:func:`napari_gi_seg.interactive.load_backend`).
"""

from __future__ import annotations

import logging
import os
from collections import deque

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import InputError
from . import _context as C

log = logging.getLogger(__name__)

SYNC_ENV = "NAPARI_GI_SEG_SYNC"
TOOLS = ("box", "point", "scribble")
POSITIVE_COLOUR = "#00e000"
NEGATIVE_COLOUR = "#ff00ff"
PREVIEW_COLOUR = "#ffd700"
SUFFIXES = {
    "box": " prompt box",
    "point": " prompt points",
    "scribble": " prompt scribbles",
    "preview": " prompt preview",
}


def _controller_api():
    """The case controller's functions (issue 18's ``_qt/controller.py``), or ``None``."""
    try:
        from . import controller  # type: ignore[attr-defined]
    except ImportError:
        return None
    return controller


class PromptWidget(QWidget):
    """Dock widget: image, structure, tools (box / point / scribble), positive or
    negative, propagate (with a slice limit), undo, reset, commit.

    Attributes
    ----------
    session : PromptSession or None
        The current object's session (one per image; re-made when the image changes).
    positive : bool
        Whether the next click or scribble adds (True) or removes.

    Signals: ``updated()`` after every prompt's answer reached the preview;
    ``committed(dict)`` with ``{"structure", "value", "slices", "voxels"}``.
    """

    updated = Signal()
    committed = Signal(object)

    def __init__(self, napari_viewer, parent=None, model=None):
        super().__init__(parent)
        self.viewer = C.unwrap(napari_viewer)
        self.session = None
        self.positive = True
        self._model = model
        self._image = None
        self._layers: dict[str, object] = {}
        self._queue: deque = deque()
        self._worker = None
        self._volume = None
        self._sent_scribble: dict[int, np.ndarray] = {}
        self._scribble_pending: set[int] = set()
        self._syncing = False

        self.image_combo = QComboBox()
        self.structure_combo = QComboBox()
        for c in (self.image_combo, self.structure_combo):
            c.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            c.setMinimumContentsLength(10)
        self.new_structure = QLineEdit()
        self.new_structure.setPlaceholderText("new structure, e.g. stomach")
        self.add_structure_button = QPushButton("Add")
        row = QHBoxLayout()
        row.addWidget(self.new_structure)
        row.addWidget(self.add_structure_button)
        self.tool_buttons = {t: QPushButton(f"{t.capitalize()} ({t[0].upper()})") for t in TOOLS}
        tools = QHBoxLayout()
        for b in self.tool_buttons.values():
            b.setCheckable(True)
            tools.addWidget(b)
        self.sign_button = QPushButton()
        self.max_slices = QSpinBox()
        self.max_slices.setRange(0, 999)
        self.max_slices.setSpecialValueText("all")
        self.max_slices.setToolTip("Propagation goes at most this many slices from each prompted slice")
        self.propagate_button = QPushButton("Propagate (Shift+P)")
        self.undo_button = QPushButton("Undo (Ctrl+Z)")
        self.reset_button = QPushButton("Reset (R)")
        self.commit_button = QPushButton("Commit (C)")
        self.overwrite_check = QCheckBox("overwrite other structures")
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)

        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("structure", self.structure_combo)
        form.addRow("", _wrap(row))
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(tools)
        lay.addWidget(self.sign_button)
        prop = QFormLayout()  # the slice limit on its own row: the dock is 330 px wide
        prop.addRow("max slices", self.max_slices)
        prop.addRow(self.propagate_button)
        lay.addLayout(prop)
        edit = QHBoxLayout()
        edit.addWidget(self.undo_button)
        edit.addWidget(self.reset_button)
        lay.addLayout(edit)
        lay.addWidget(self.overwrite_check)
        lay.addWidget(self.commit_button)
        lay.addWidget(self.status_label)
        lay.addStretch(1)

        for t, b in self.tool_buttons.items():
            b.clicked.connect(lambda _=False, t=t: self.set_tool(t))
        self.sign_button.clicked.connect(self.toggle_sign)
        self.propagate_button.clicked.connect(self.propagate)
        self.undo_button.clicked.connect(self.undo)
        self.reset_button.clicked.connect(self.reset)
        self.commit_button.clicked.connect(self.commit)
        self.add_structure_button.clicked.connect(self._add_structure)
        self.image_combo.currentIndexChanged.connect(self._image_changed)
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self._show_sign()
        self._refresh_images()
        C.register_widget(self.viewer, self)
        # MONAI's UNet pulls in torch._dynamo, which probes triton: keep triton's LLVM
        # out of a process where Mesa's is loaded (a segfault otherwise, see _compat)
        from ._compat import guard_triton_llvm_clash

        guard_triton_llvm_clash()

    # ------------------------------------------------------------ image and case
    def image_layer(self):
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _refresh_images(self, event=None) -> None:
        if self._syncing:
            return
        current = self.image_combo.currentText()
        names = [lyr.name for lyr in C.image_layers(self.viewer)]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        if self.image_layer() is not self._image:
            self._image_changed()
        self._refresh_structures()

    def _image_changed(self, *args) -> None:
        self._image = self.image_layer()
        self.session = None
        self._sent_scribble.clear()
        self._refresh_structures()

    def case(self):
        """The case (:class:`~._context.CaseContext`) of the selected image, or ``None``."""
        img = self.image_layer()
        return None if img is None else C.find_case(self.viewer, img)

    def _refresh_structures(self) -> None:
        current = self.structure_combo.currentText()
        ctx = self.case()
        names = [n for k, n in sorted(ctx.class_names.items()) if k] if ctx is not None else []
        self.structure_combo.blockSignals(True)
        self.structure_combo.clear()
        self.structure_combo.addItems(names)
        if current in names:
            self.structure_combo.setCurrentText(current)
        self.structure_combo.blockSignals(False)

    def _add_structure(self) -> None:
        name = self.new_structure.text().strip()
        if not name:
            self.status_label.setText("Type the new structure's name first.")
            return
        self.add_structure(name)
        self.new_structure.clear()

    def add_structure(self, name: str) -> int:
        """Add ``name`` to the case's classes (a new label value and colour; the case is
        created when the image has none) and select it. Returns its label value."""
        img = self.image_layer()
        if img is None:
            raise InputError("open an image first")
        ctx = self.case()
        names = dict(ctx.class_names) if ctx is not None else {0: "background"}
        colours = dict(ctx.colours) if ctx is not None else {}
        value = next((k for k, n in names.items() if n == name), None)
        if value is None:
            value = max(names) + 1
            names[value] = name
            colours[value] = C.colours_for_names(names).get(value, PREVIEW_COLOUR)
            api = _controller_api()
            if api is not None and hasattr(api, "case_for_image"):
                api.case_for_image(self.viewer, img, names, colours, ctx.model_key if ctx else None)
            else:
                C.ensure_case(self.viewer, img, names, colours, ctx.model_key if ctx else None)
        self._refresh_structures()
        self.structure_combo.setCurrentText(name)
        return int(value)

    # ------------------------------------------------------------ layers
    def _ensure_layers(self):
        img = self.image_layer()
        if img is None:
            raise InputError("open an image first")
        live = {
            k: v for k, v in self._layers.items() if v in self.viewer.layers and v.metadata.get("image") == img.name
        }
        if len(live) == 4:
            return live
        from napari.layers import Labels, Points, Shapes

        shape = tuple(img.data.shape)
        geo = dict(scale=img.scale, translate=img.translate)
        self._syncing = True
        try:
            if "preview" not in live:
                pv = Labels(np.zeros(shape, np.uint8), name=img.name + SUFFIXES["preview"], opacity=0.5, **geo)
                pv.colormap = C.labels_colormap({1: PREVIEW_COLOUR})
                pv.editable = False
                live["preview"] = self.viewer.add_layer(pv)
            if "scribble" not in live:
                sc = Labels(np.zeros(shape, np.uint8), name=img.name + SUFFIXES["scribble"], opacity=0.8, **geo)
                sc.colormap = C.labels_colormap({1: POSITIVE_COLOUR, 2: NEGATIVE_COLOUR})
                sc.brush_size = 5
                sc.events.paint.connect(self._on_scribble)
                live["scribble"] = self.viewer.add_layer(sc)
            if "box" not in live:
                bx = Shapes(
                    ndim=3, name=img.name + SUFFIXES["box"], edge_color="yellow", face_color="transparent", **geo
                )
                bx.edge_width = 1.5
                bx.events.data.connect(self._on_box)
                live["box"] = self.viewer.add_layer(bx)
            if "point" not in live:
                pt = Points(ndim=3, name=img.name + SUFFIXES["point"], size=5, face_color=POSITIVE_COLOUR, **geo)
                pt.events.data.connect(self._on_point)
                live["point"] = self.viewer.add_layer(pt)
        finally:
            self._syncing = False
        for k, lyr in live.items():
            lyr.metadata["image"] = img.name
            if k != "preview":
                self._bind_keys(lyr)
        self._layers = live
        return live

    def _bind_keys(self, layer) -> None:
        keys = {
            "b": lambda _=None: self.set_tool("box"),
            "p": lambda _=None: self.set_tool("point"),
            "s": lambda _=None: self.set_tool("scribble"),
            "t": lambda _=None: self.toggle_sign(),
            "r": lambda _=None: self.reset(),
            "c": lambda _=None: self.commit(),
            "Control-z": lambda _=None: self.undo(),
            "Shift-p": lambda _=None: self.propagate(),
        }
        for k, fn in keys.items():
            layer.bind_key(k, fn, overwrite=True)

    def layer(self, kind: str):
        """The prompt layer ``kind`` (``"box"``, ``"point"``, ``"scribble"``, ``"preview"``),
        made on first use."""
        return self._ensure_layers()[kind]

    def set_tool(self, tool: str) -> None:
        """Activate a prompt tool: its layer becomes the active one in its drawing mode."""
        layers = self._ensure_layers()
        lyr = layers[tool]
        self.viewer.layers.selection.active = lyr
        if tool == "box":
            lyr.mode = "add_rectangle"
        elif tool == "point":
            lyr.mode = "add"
        else:
            lyr.selected_label = 1 if self.positive else 2
            lyr.mode = "paint"
        for t, b in self.tool_buttons.items():
            b.setChecked(t == tool)

    def toggle_sign(self) -> None:
        """Switch between positive and negative clicks and scribbles (``T``)."""
        self.positive = not self.positive
        self._show_sign()
        sc = self._layers.get("scribble")
        if sc is not None:
            sc.selected_label = 1 if self.positive else 2
        pt = self._layers.get("point")
        if pt is not None:
            pt.current_face_color = POSITIVE_COLOUR if self.positive else NEGATIVE_COLOUR

    def _show_sign(self) -> None:
        self.sign_button.setText("Positive (T toggles)" if self.positive else "Negative (T toggles)")
        colour = POSITIVE_COLOUR if self.positive else NEGATIVE_COLOUR
        self.sign_button.setStyleSheet(f"color: {colour}; font-weight: bold")

    # ------------------------------------------------------------ prompt events
    def _session(self):
        """The session of the selected image, made on first use (in the worker: the
        promptable model is loaded there, once per process)."""
        if self.session is None:
            from ..interactive import PromptSession
            from ._compat import guard_triton_llvm_clash

            guard_triton_llvm_clash()
            self.session = PromptSession(self._volume, model=self._model)
        return self.session

    def _on_box(self, event) -> None:
        if self._syncing or getattr(event, "action", None) != "added":
            return
        lyr = self._layers["box"]
        if not len(lyr.data):
            return
        v = np.asarray(lyr.data[-1])
        z = int(round(float(v[0, 0])))
        y0, x0 = np.floor(v[:, 1:].min(0)).astype(int)
        y1, x1 = np.ceil(v[:, 1:].max(0)).astype(int)
        self._submit("add_box", z, int(y0), int(x0), int(y1), int(x1))

    def _on_point(self, event) -> None:
        if self._syncing or getattr(event, "action", None) != "added":
            return
        lyr = self._layers["point"]
        for i in event.data_indices:
            z, y, x = (float(c) for c in lyr.data[i])
            self._submit("add_point", int(round(z)), y, x, positive=self.positive)

    def _on_scribble(self, event) -> None:
        if self._syncing:
            return
        from qtpy.QtCore import QTimer

        lyr = self._layers["scribble"]
        zs = C.slices_from_paint(getattr(event, "value", None), lyr.data.shape[0])
        # napari emits ``paint`` before a brush dab is written: read the strokes after it
        self._scribble_pending.update(zs)
        QTimer.singleShot(0, self._read_scribbles)

    def _read_scribbles(self) -> None:
        lyr = self._layers.get("scribble")
        zs, self._scribble_pending = sorted(self._scribble_pending), set()
        if lyr is None:
            return
        for z in zs:
            sl = np.asarray(lyr.data[z])
            for value, positive in ((1, True), (2, False)):
                key = z * 4 + value
                sent = self._sent_scribble.get(key)
                stroke = sl == value
                if sent is not None:
                    stroke &= ~sent
                if stroke.any():
                    self._sent_scribble[key] = (sl == value).copy()
                    self._submit("add_scribble", z, stroke, positive=positive)

    # ------------------------------------------------------------ work
    @property
    def is_running(self) -> bool:
        """True while a prompt is being answered or more are queued."""
        return self._worker is not None or bool(self._queue) or bool(self._scribble_pending)

    def _submit(self, method: str, *args, **kwargs) -> None:
        self._queue.append((method, args, kwargs))
        if self._worker is None:
            self._next()

    def _next(self) -> None:
        if not self._queue:
            self._worker = None
            return
        method, args, kwargs = self._queue.popleft()
        img = self.image_layer()
        if img is None:
            self._queue.clear()
            self._on_error(ValueError("open an image first"))
            return
        if self.session is None:
            self._volume = np.asarray(img.data)

        def body():
            session = self._session()
            getattr(session, method)(*args, **kwargs)
            return session.mask

        if os.environ.get(SYNC_ENV, "") not in ("", "0"):
            self._worker = "sync"
            try:
                self._on_result(body())
            except Exception as e:  # noqa: BLE001 - shown, never a crash
                self._on_error(e)
            self._worker = None
            self._next()
            return
        from napari.qt.threading import create_worker

        w = create_worker(body, _start_thread=False)
        w.returned.connect(self._on_result)
        w.errored.connect(self._on_error)
        w.finished.connect(self._on_done)
        self._worker = w
        w.start()

    def _on_done(self) -> None:
        self._worker = None
        self._next()

    def _on_result(self, mask3) -> None:
        pv = self._layers.get("preview")
        if pv is not None:
            pv.data = mask3.astype(np.uint8)
        s = self.session
        secs = s.timings[-1][1] if s is not None and s.timings else 0.0
        n = int(mask3.any((1, 2)).sum())
        self.status_label.setText(
            f"Object on {n} slice(s); last answer {secs:.2f} s ({s.backend.kind} {s.backend.name})."
        )
        self.updated.emit()

    def _on_error(self, exc) -> None:
        log.warning("prompt failed: %s", exc)
        self.status_label.setText(f"Prompt not applied: {exc}")
        if self._layers and not self._queue:  # the refused prompt leaves the layers too
            self._sync_prompt_layers()

    def _sync_prompt_layers(self) -> None:
        """Show exactly the session's prompts on the layers (after undo and reset)."""
        s = self.session
        self._syncing = True
        try:
            pts, colours = [], []
            boxes = []
            scrib = np.zeros(self._layers["scribble"].data.shape, np.uint8)
            if s is not None:
                for z in s.prompted_slices:
                    p = s.prompts(z)
                    for y, x, pos in p.points:
                        pts.append((z, y, x))
                        colours.append(POSITIVE_COLOUR if pos else NEGATIVE_COLOUR)
                    if p.box is not None:
                        y0, x0, y1, x1 = p.box
                        boxes.append(np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], float))
                    for m, pos in p.scribbles:
                        scrib[z][m] = 1 if pos else 2
            pl = self._layers["point"]
            pl.data = np.array(pts, float).reshape(-1, 3)
            if pts:
                pl.face_color = colours
            bl = self._layers["box"]
            bl.data = []
            if boxes:
                bl.add_rectangles(boxes, edge_color="yellow", face_color="transparent")
            self._layers["scribble"].data = scrib
            self._sent_scribble = {
                z * 4 + v: scrib[z] == v for z in range(scrib.shape[0]) for v in (1, 2) if (scrib[z] == v).any()
            }
            self._layers["preview"].data = (s.mask if s is not None else np.zeros_like(scrib, bool)).astype(np.uint8)
        finally:
            self._syncing = False

    def propagate(self) -> None:
        """Carry the object through the stack (``Shift+P``), at most the *max* slices
        from each prompted slice."""
        if self.session is None or not self.session.prompted_slices:
            self.status_label.setText("Place a box, click or scribble first.")
            return
        self._submit("propagate", max_slices=self.max_slices.value() or None)

    def undo(self) -> None:
        """Undo the last prompt or propagation (``Ctrl+Z`` on the prompt layers)."""
        if self.is_running:
            return
        if self.session is None or not self.session.undo():
            self.status_label.setText("Nothing to undo.")
            return
        self._sync_prompt_layers()
        self.updated.emit()

    def reset(self) -> None:
        """Forget the current object and its prompts (``R``)."""
        if self.is_running:
            return
        if self.session is not None:
            self.session.new_object()
        if self._layers:
            self._sync_prompt_layers()
        self.status_label.setText("New object.")

    def commit(self) -> dict | None:
        """Write the object into the case's Labels layer under the chosen structure
        (``C``): one undo step there, touched slices EDITED, other structures kept unless
        *overwrite other structures*. Then a new object starts. Returns what was written."""
        if self.is_running or self.session is None or not self.session.mask.any():
            self.status_label.setText("Nothing to commit: outline an object first.")
            return None
        name = self.structure_combo.currentText()
        if not name:
            self.status_label.setText("Choose or add the structure to commit to.")
            return None
        ctx = self.case()
        value = next(k for k, n in ctx.class_names.items() if n == name)
        labels = np.asarray(ctx.labels_layer.data)
        m = self.session.mask
        if not self.overwrite_check.isChecked():
            m &= (labels == 0) | (labels == value)
        m &= labels != value  # only voxels that change
        coords = np.nonzero(m)
        api = _controller_api()
        if api is not None and hasattr(api, "controller_of"):
            api.controller_of(self.viewer, ctx).write_correction(coords, value)
        elif coords[0].size:
            ctx.labels_layer.data_setitem(coords, value)  # one undo step; the paint event marks EDITED
        zs = sorted({int(z) for z in np.unique(coords[0])})
        info = {"structure": name, "value": int(value), "slices": zs, "voxels": int(coords[0].size)}
        self.status_label.setText(f"Committed {info['voxels']} voxels of {name} on {len(zs)} slice(s).")
        self.reset()
        self.committed.emit(info)
        return info


def _wrap(layout) -> QWidget:
    w = QWidget()
    layout.setContentsMargins(0, 0, 0, 0)
    w.setLayout(layout)
    return w
