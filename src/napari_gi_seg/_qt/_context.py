"""State shared by the dock widgets of one viewer (Qt-free apart from napari layers).

A *case* is one image layer with the editable Labels layer made for it. Its
:class:`CaseContext` keeps what the widgets need beside the layers: the model's
class names and colours (from the model spec, never hard-coded), the model's own
prediction (a hidden Labels layer), the per-slice model uncertainty ``(z,)`` and
the per-slice review state (:class:`napari_gi_seg.curation.review.ReviewTracker`).

The case owns its edits whichever widgets are docked: it listens to its Labels
layer's ``paint`` event (napari's brush, fill, erase, polygon and every
``data_setitem``), so a clinician's stroke marks the slice EDITED even with only
the Segment widget docked. Writes of the model are made inside
:meth:`CaseContext.model_writing` and are not counted as edits.

napari hands widgets docked from the Plugins menu (or ``add_plugin_dock_widget``,
``napari -w``) a ``PublicOnlyProxy`` of the viewer, whose layers are proxies made
afresh on every access; everything here works on the real objects behind them
(:func:`._napari_private.unwrap`, the one adapter of napari's private API), so the
weak references below point at real layers.

Plain facts (class names, model key, geometry) also go into the Labels layer's
``metadata`` so that writers and the session store see them; runtime objects
(uncertainty, tracker) live only here, keyed weakly by the (real) Labels layer.

The display rules every route shares (radiological camera, styling of opened
labels) are in :mod:`._display`.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

import numpy as np
from psygnal import Signal

from ._napari_private import unwrap

#: Layer-name suffixes of the layers a case owns.
LABELS_SUFFIX = " segmentation"
PREDICTION_SUFFIX = " prediction"
#: Metadata key, on both Labels layers, naming the image layer they belong to.
IMAGE_KEY = "gi_seg_image_layer"

_CONTEXTS: weakref.WeakKeyDictionary[Any, CaseContext] = weakref.WeakKeyDictionary()
_WIDGETS: dict[int, list[weakref.ref]] = {}


class CaseContext:
    """Runtime state of one case (one image + its editable labels).

    Attributes
    ----------
    image_layer, labels_layer, prediction_layer:
        napari layers; ``prediction_layer`` is hidden and may be ``None`` before the
        first segmentation.
    class_names
        ``{label value: name}`` including ``0: "background"``.
    colours
        ``{label value: "#rrggbb"}`` for the foreground classes.
    model_key
        ``"name:version"`` of the model that produced the prediction, or ``None``.
    activation
        ``"softmax"`` or ``"sigmoid"``: the model's output activation.
    slice_uncertainty
        ``(z,)`` float32 per-slice uncertainty of the last runs
        (:func:`napari_gi_seg.curation.review.slice_uncertainty`, computed in the
        segmentation worker), NaN for slices never segmented; ``None`` before a run.
    tracker
        :class:`~napari_gi_seg.curation.review.ReviewTracker` with one state per slice.

    ``changed`` is emitted (no arguments) after a segmentation batch, a correction,
    a review mark or a restore, so widgets can refresh their read-outs.
    """

    changed = Signal()

    def __init__(
        self,
        image_layer,
        labels_layer,
        class_names: dict[int, str],
        colours: dict[int, str] | None = None,
        model_key: str | None = None,
    ):
        from ..curation.review import ReviewTracker

        image_layer, labels_layer = unwrap(image_layer), unwrap(labels_layer)
        self._image_ref = weakref.ref(image_layer)
        self._labels_ref = weakref.ref(labels_layer)
        self._prediction_ref: weakref.ref | None = None
        self.class_names = {int(k): str(v) for k, v in class_names.items()}
        self.class_names.setdefault(0, "background")
        self.colours = dict(colours or {})
        self.model_key = model_key
        self.activation = "softmax"
        self.slice_uncertainty: np.ndarray | None = None
        self.tracker = ReviewTracker(int(labels_layer.data.shape[0]))
        self._model_writes = 0
        labels_layer.events.paint.connect(self._on_paint)
        #: True for the editable layer the widgets made (Segment, restore); False for
        #: a Labels layer opened from a file and adopted (e.g. manual ground truth),
        #: which Segment never writes into.
        self.made_here = False

    # ------------------------------------------------------------------ layers
    @property
    def image_layer(self):
        return self._image_ref()

    @property
    def labels_layer(self):
        return self._labels_ref()

    @property
    def prediction_layer(self):
        return self._prediction_ref() if self._prediction_ref is not None else None

    @prediction_layer.setter
    def prediction_layer(self, layer) -> None:
        self._prediction_ref = weakref.ref(unwrap(layer)) if layer is not None else None

    # ------------------------------------------------------------------ edits
    @contextlib.contextmanager
    def model_writing(self):
        """Within this block, writes into the Labels layer are the model's, not
        the clinician's: their ``paint`` events do not mark slices EDITED."""
        self._model_writes += 1
        try:
            yield self
        finally:
            self._model_writes -= 1

    def _on_paint(self, event) -> None:
        """A paint/fill/erase/``data_setitem`` on the Labels layer: mark the touched
        slices EDITED (unless the model is writing) and emit :attr:`changed`."""
        if self._model_writes:
            return
        zs = slices_from_paint(getattr(event, "value", None), self.tracker.n_slices)
        if zs:
            self.tracker.mark_edited(sorted(zs))
            self.changed.emit()

    @property
    def prediction(self) -> np.ndarray | None:
        """``(z, y, x)`` uint8 model prediction, or ``None``."""
        layer = self.prediction_layer
        return None if layer is None else np.asarray(layer.data)

    @property
    def foreground_names(self) -> dict[int, str]:
        """``{index: name}`` without background (what the exporter wants)."""
        return {k: v for k, v in sorted(self.class_names.items()) if k != 0}

    def fingerprint(self) -> str:
        """Session key of the image (:func:`napari_gi_seg.curation.session.image_fingerprint`)."""
        from ..curation.session import image_fingerprint

        return image_fingerprint(np.asarray(self.image_layer.data))

    def uncertainty(self) -> np.ndarray | None:
        """``(z,)`` float32 per-slice uncertainty (NaN: never segmented), or ``None``."""
        return self.slice_uncertainty

    def uncertainty_at(self, z: int) -> float | None:
        """Uncertainty of slice ``z``, or ``None`` when it was never segmented."""
        u = self.slice_uncertainty
        if u is None or not 0 <= int(z) < u.shape[0] or not np.isfinite(u[int(z)]):
            return None
        return float(u[int(z)])

    def set_uncertainty(self, zs, values) -> None:
        """Store the uncertainty of slices ``zs`` (``(n,)`` values) in the ``(z,)`` array."""
        n = self.tracker.n_slices
        if self.slice_uncertainty is None or self.slice_uncertainty.shape != (n,):
            self.slice_uncertainty = np.full(n, np.nan, dtype=np.float32)
        self.slice_uncertainty[np.asarray(zs, dtype=int)] = np.asarray(values, dtype=np.float32)


def slices_from_paint(item, n_slices: int) -> set[int]:
    """Slice indices (z) touched by one napari paint history item.

    Parameters
    ----------
    item
        The ``value`` of a Labels layer's ``paint`` event: a list of history atoms,
        either ``_MaskedPaintAtom`` objects with a ``slice_key`` bounding box (brush,
        fill, erase, polygon) or ``(indices, before, after)`` tuples (``data_setitem``).
    n_slices
        Number of slices ``z`` of the layer.

    Returns
    -------
    The set of touched ``z`` in ``0..n_slices-1``.
    """
    zs: set[int] = set()
    for atom in item or []:
        key = getattr(atom, "slice_key", None)
        if key is not None:
            s = key[0]
            if isinstance(s, slice):
                zs.update(range(*s.indices(n_slices)))
            else:
                zs.add(int(s))
            continue
        try:
            idx = atom[0]
            zs.update(int(v) for v in np.unique(np.asarray(idx[0])))
        except (TypeError, IndexError):
            continue
    return {z for z in zs if 0 <= z < n_slices}


def get_context(labels_layer) -> CaseContext | None:
    """The context of a Labels layer made by the widgets, or ``None``."""
    if labels_layer is None:
        return None
    return _CONTEXTS.get(unwrap(labels_layer))


def set_context(labels_layer, ctx: CaseContext) -> None:
    """Attach ``ctx`` to (the real layer behind) ``labels_layer``."""
    _CONTEXTS[unwrap(labels_layer)] = ctx


def class_names_from_layer(layer) -> dict[int, str]:
    """``{value: name}`` from a layer's ``metadata['class_names']`` (keys may be
    strings after a JSON round trip) or its ``features`` (``index``/``class_name``)."""
    md = getattr(layer, "metadata", {}) or {}
    names = md.get("class_names")
    if isinstance(names, dict) and names:
        return {int(k): str(v) for k, v in names.items()}
    if isinstance(names, (list, tuple)) and names:
        return {0: "background", **{i + 1: str(n) for i, n in enumerate(names)}}
    feats = getattr(layer, "features", None)
    if feats is not None and "index" in feats and "class_name" in feats:
        return {int(i): str(n) for i, n in zip(feats["index"], feats["class_name"])}
    return {}


def labels_colormap(colours: dict[int, str]):
    """A napari ``DirectLabelColormap`` painting each class in its spec colour;
    background (0) and unknown values are transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    cd: dict[int | None, Any] = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    cd.update({int(k): v for k, v in colours.items() if int(k) != 0})
    return DirectLabelColormap(color_dict=cd)


def style_labels_layer(layer, class_names: dict[int, str], colours: dict[int, str]) -> None:
    """Give a Labels layer the classes' colours, a ``class_name`` feature (shown in
    the status bar under the cursor) and ``metadata['class_names']``."""
    import pandas as pd

    idx = sorted(class_names)
    layer.colormap = labels_colormap(colours)
    layer.features = pd.DataFrame({"index": idx, "class_name": [class_names[i] for i in idx]})
    layer.metadata["class_names"] = {int(i): class_names[i] for i in idx}


def image_layers(viewer) -> list:
    """The viewer's 3D Image layers (candidates for segmentation)."""
    from napari.layers import Image

    return [lyr for lyr in viewer.layers if isinstance(lyr, Image) and lyr.ndim == 3 and not lyr.rgb]


def editable_labels(viewer) -> list:
    """The viewer's 3D Labels layers a clinician edits (the hidden model predictions excluded)."""
    from napari.layers import Labels

    return [
        lyr
        for lyr in viewer.layers
        if isinstance(lyr, Labels) and lyr.ndim == 3 and not lyr.name.endswith(PREDICTION_SUFFIX)
    ]


def refresh_labels_combo(viewer, combo, event=None) -> None:
    """Refill a combo box with :func:`editable_labels` names, keeping the selection.

    A case the widgets just made (a layer ``inserted`` event with ``made_here``) is
    selected; else the current name if still there; else the newest case made here.
    Signals of the combo are blocked while it is refilled.
    """
    current = combo.currentText()
    names = [lyr.name for lyr in editable_labels(viewer)]
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(names)
    made = [n for n in names if getattr(get_context(viewer.layers[n]), "made_here", False)]
    new = getattr(event, "value", None) if event is not None and getattr(event, "type", "") == "inserted" else None
    if new is not None and getattr(new, "name", None) in names and getattr(get_context(new), "made_here", False):
        combo.setCurrentText(new.name)
    elif current in names:
        combo.setCurrentText(current)
    elif made:
        combo.setCurrentText(made[-1])
    combo.blockSignals(False)


def find_case(viewer, image_layer=None, labels_layer=None) -> CaseContext | None:
    """The case the widgets made for ``image_layer`` (its ``"<image> segmentation"``
    layer), or the context of ``labels_layer``; ``None`` if there is none."""
    viewer, image_layer = unwrap(viewer), unwrap(image_layer)
    if labels_layer is not None:
        return get_context(labels_layer)
    for lyr in viewer.layers:
        ctx = _CONTEXTS.get(lyr)
        if ctx is not None and ctx.made_here and ctx.image_layer is image_layer:
            return ctx
    return None


def ensure_case(
    viewer, image_layer, class_names: dict[int, str], colours: dict[int, str], model_key: str | None = None
) -> CaseContext:
    """The case for ``image_layer``, creating its editable Labels layer
    (``"<image> labels"``, same shape, scale, translate and geometry metadata) when
    there is none. An existing case adopts the new classes when they differ."""
    viewer, image_layer = unwrap(viewer), unwrap(image_layer)
    ctx = find_case(viewer, image_layer)
    if ctx is None:
        shape = tuple(image_layer.data.shape)
        md = {k: v for k, v in dict(image_layer.metadata).items() if k not in ("is_labels",)}
        md[IMAGE_KEY] = image_layer.name
        md["is_labels"] = True
        from napari.layers import Labels

        labels = Labels(
            np.zeros(shape, dtype=np.uint8),
            name=image_layer.name + LABELS_SUFFIX,
            scale=image_layer.scale,
            translate=image_layer.translate,
            metadata=md,
            opacity=0.6,
        )
        ctx = CaseContext(image_layer, labels, class_names, colours, model_key)
        ctx.made_here = True
        set_context(labels, ctx)  # before insertion: widgets listening to `inserted` see the case
        style_labels_layer(labels, ctx.class_names, ctx.colours)
        viewer.add_layer(labels)
    else:
        ctx.class_names = {int(k): str(v) for k, v in class_names.items()}
        ctx.class_names.setdefault(0, "background")
        ctx.colours = dict(colours)
        ctx.model_key = model_key
    style_labels_layer(ctx.labels_layer, ctx.class_names, ctx.colours)
    if model_key is not None:
        ctx.labels_layer.metadata["model_key"] = model_key
    return ctx


def ensure_prediction_layer(viewer, ctx: CaseContext):
    """The hidden ``"<image> prediction"`` Labels layer of a case (created on demand)."""
    viewer = unwrap(viewer)
    layer = ctx.prediction_layer
    if layer is None or layer not in viewer.layers:
        img = ctx.image_layer
        layer = viewer.add_labels(
            np.zeros(ctx.labels_layer.data.shape, dtype=np.uint8),
            name=img.name + PREDICTION_SUFFIX,
            scale=img.scale,
            translate=img.translate,
            metadata={IMAGE_KEY: img.name, "is_labels": True},
            visible=False,
            opacity=0.5,
        )
        ctx.prediction_layer = layer
    style_labels_layer(layer, ctx.class_names, ctx.colours)
    if ctx.model_key:
        layer.metadata["model_key"] = ctx.model_key
    return layer


def adopt_labels_layer(viewer, labels_layer) -> CaseContext | None:
    """Make a context for a Labels layer the widgets did not create (e.g. opened
    from a file): its image is the layer named in its metadata, else the first 3D
    image of the same shape. ``None`` when no image matches.

    Class names come from the layer (``metadata['class_names']`` or ``features``);
    colours from the case already made for the same image when the names agree
    (labels opened beside a model-segmented scan look like the model's), else from
    a registered model that knows the names (:func:`colours_for_names`)."""
    viewer, labels_layer = unwrap(viewer), unwrap(labels_layer)
    ctx = get_context(labels_layer)
    if ctx is not None:
        return ctx
    want = (labels_layer.metadata or {}).get(IMAGE_KEY)
    imgs = image_layers(viewer)
    match = [i for i in imgs if i.name == want] or [
        i for i in imgs if tuple(i.data.shape) == tuple(labels_layer.data.shape)
    ]
    if not match:
        return None
    names, colours = case_style_for(viewer, labels_layer, match[0])
    ctx = CaseContext(match[0], labels_layer, names, colours, labels_layer.metadata.get("model_key"))
    set_context(labels_layer, ctx)
    style_labels_layer(labels_layer, ctx.class_names, ctx.colours)
    return ctx


def colours_for_names(names: dict[int, str]) -> dict[int, str]:
    """``{value: "#rrggbb"}`` for ``{value: name}``: each organ in the colour a
    registered model gives it (the default model first), else a distinct default."""
    from ..models.spec import DEFAULT_COLOURS

    by_name: dict[str, str] = {}
    try:
        from ..models.registry import DEFAULT_MODEL, list_models

        entries = sorted(list_models(), key=lambda e: e.name != DEFAULT_MODEL)
        for e in entries:
            try:
                for c in e.spec().classes:
                    by_name.setdefault(c.name, c.colour)
            except ValueError:
                continue
    except Exception:  # noqa: BLE001 - a broken registry must not stop styling
        pass
    return {int(k): by_name.get(v, DEFAULT_COLOURS[int(k) % len(DEFAULT_COLOURS)]) for k, v in names.items() if k}


def case_style_for(viewer, labels_layer, image_layer=None) -> tuple[dict[int, str], dict[int, str]]:
    """``(class_names, colours)`` for a Labels layer the widgets did not make.

    A case made by Segment for ``image_layer`` (or for an image of the same shape)
    lends its names and colours when the layer has no names of its own or the same
    names; otherwise the layer's names with :func:`colours_for_names`. Unnamed
    values become ``"label <v>"``."""
    viewer = unwrap(viewer)
    names = class_names_from_layer(labels_layer)
    shape = tuple(labels_layer.data.shape)
    cases = [
        c
        for c in (_CONTEXTS.get(lyr) for lyr in viewer.layers)
        if c is not None and c.made_here and c.labels_layer is not labels_layer
    ]
    cases = [c for c in cases if c.image_layer is image_layer] + [
        c for c in cases if c.image_layer is not image_layer and tuple(c.labels_layer.data.shape) == shape
    ]
    for c in cases:
        fg = {k: v for k, v in names.items() if k}
        if not fg or set(fg.values()) <= set(c.foreground_names.values()):
            if not fg or all(c.class_names.get(k) == v for k, v in fg.items()):
                return dict(c.class_names), dict(c.colours)
            # same organs, other values: keep the layer's values, the case's colours
            by_name = {v: c.colours.get(k) for k, v in c.class_names.items()}
            return {0: "background", **fg}, {k: by_name.get(v) or "#ffffff" for k, v in fg.items()}
    if not names:
        present = [int(v) for v in np.unique(np.asarray(labels_layer.data)) if v != 0]
        names = {v: f"label {v}" for v in present}
    names = {0: "background", **{k: v for k, v in names.items() if k}}
    return names, colours_for_names(names)


def current_slice(viewer, layer) -> int:
    """Index (z) of the slice shown for ``layer``, clipped to its range."""
    coords = layer.world_to_data(
        viewer.dims.point[-layer.ndim :] if len(viewer.dims.point) >= layer.ndim else viewer.dims.point
    )
    z = int(round(float(coords[0])))
    return int(np.clip(z, 0, layer.data.shape[0] - 1))


def set_current_slice(viewer, layer, z: int) -> None:
    """Show slice ``z`` of ``layer`` (converts the data index to world units)."""
    axis = viewer.dims.ndim - layer.ndim
    world_z = float(layer.data_to_world([z] + [0] * (layer.ndim - 1))[0])
    pt = list(viewer.dims.point)
    pt[axis] = world_z
    viewer.dims.point = pt


# ---------------------------------------------------------------- widget registry
def register_widget(viewer, widget) -> None:
    """Remember a dock widget of ``viewer`` so sibling widgets can find it
    (:func:`find_widget`). A tool registers through
    :func:`napari_gi_seg._qt.controller.register_tool`, which also installs the
    viewer's display rules."""
    viewer = unwrap(viewer)
    refs = [r for r in _WIDGETS.get(id(viewer), []) if r() is not None]
    refs.append(weakref.ref(widget))
    _WIDGETS[id(viewer)] = refs


def find_widget(viewer, cls):
    """The most recently created live widget of class ``cls`` in ``viewer``, or ``None``."""
    for r in reversed(_WIDGETS.get(id(unwrap(viewer)), [])):
        w = r()
        if w is not None and isinstance(w, cls):
            try:
                w.objectName()  # raises RuntimeError once the C++ object is deleted
            except RuntimeError:
                continue
            return w
    return None
