""" "New structure..." for the Correct page, and the Fine-tune page's list of new
structures: thin Qt over :mod:`napari_gi_seg.curation.structures` (the policy: the
TG-263 names offered, the checks, the label value of a new structure).

Hooks (one line each, so the Correct page's own code stays as it is)::

    # Correct page, where its buttons are laid out:
    layout.addWidget(new_structure_button(self))
    # Fine-tune page, under the base-model row:
    form.addRow(new_structures_label(self))

``new_structure_button(page)`` needs ``page.context()`` (the case: ``class_names``,
``colours``, ``labels_layer``), and calls ``page._refresh_classes()`` and
``page.select_class(value)`` when they exist. The new structure is added to the case
(so the session autosave keeps it, and the NIfTI/RTSTRUCT/SEG writers and the
exporter, which take the names from the case and the layer's metadata, write it with
its name) and selected for the brush and the correction tools.
"""

from __future__ import annotations

from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QColorDialog,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QWidget,
)

from ..curation.structures import TG263_ABDOMEN, StructureError, add_structure, new_structure, structure_for

__all__ = [
    "NewStructureDialog",
    "add_structure_to_case",
    "new_structure_button",
    "new_structures_label",
    "new_structures_text",
]


class NewStructureDialog(QDialog):
    """Name (an editable list of the TG-263 abdominal names) and colour of a new
    structure; :meth:`structure` checks them against the case's classes.

    Parameters
    ----------
    existing : dict
        ``{value: name}`` of the case's classes.
    parent : QWidget, optional
    """

    def __init__(self, existing: dict[int, str], parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("New structure")
        self.setMinimumWidth(340)
        self.existing = {int(k): str(v) for k, v in existing.items() if int(k) != 0}
        taken = {v.lower() for v in self.existing.values()}
        self.name = QComboBox()
        self.name.setEditable(True)
        self.name.setToolTip("AAPM TG-263 names are offered; any name of letters, digits, '_', '-' may be typed")
        for s in TG263_ABDOMEN:
            try:
                new_structure(s.name, "", self.existing)
            except StructureError:
                continue  # the case has it already (e.g. Liver as "liver")
            if s.name.lower() not in taken:
                self.name.addItem(s.name)
        self.colour = QPushButton()
        self.colour.clicked.connect(self._pick_colour)
        self.error = QLabel("")
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #e6194b")
        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.buttons.accepted.connect(self._accept)
        self.buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow("Name", self.name)
        form.addRow("Colour", self.colour)
        form.addRow(self.error)
        form.addRow(self.buttons)
        self.name.currentTextChanged.connect(self._name_changed)
        self._colour = ""
        self._name_changed(self.name.currentText())

    def _set_colour(self, hex_colour: str) -> None:
        self._colour = hex_colour
        self.colour.setText(hex_colour)
        self.colour.setStyleSheet(f"background-color: {hex_colour}")

    def _name_changed(self, text: str) -> None:
        self._set_colour(structure_for(text or "structure").colour)

    def _pick_colour(self) -> None:
        c = QColorDialog.getColor(QColor(self._colour), self, "Structure colour")
        if c.isValid():
            self._set_colour(c.name())

    def structure(self):
        """The checked :class:`~napari_gi_seg.curation.structures.Structure`; raises
        :class:`~napari_gi_seg.curation.structures.StructureError`."""
        return new_structure(self.name.currentText(), self._colour, self.existing)

    def _accept(self) -> None:
        try:
            self.structure()
        except StructureError as e:
            self.error.setText(str(e))
            self.adjustSize()  # the wrapped message fits
            return
        self.accept()


def add_structure_to_case(ctx, structure) -> int:
    """Add ``structure`` to the case ``ctx`` (a ``CaseContext``): its class names and
    colours, restyled labels (and prediction) layers. Returns the new label value.

    Raises :class:`~napari_gi_seg.curation.structures.StructureError` (name taken)."""
    from ._context import style_labels_layer

    names, colours, value = add_structure(ctx.class_names, ctx.colours, structure)
    ctx.class_names, ctx.colours = names, colours
    style_labels_layer(ctx.labels_layer, ctx.class_names, ctx.colours)
    pred = getattr(ctx, "prediction_layer", None)
    if pred is not None:
        style_labels_layer(pred, ctx.class_names, ctx.colours)
    ctx.changed.emit()  # the session autosave and the other pages follow
    return value


def new_structure_button(page) -> QPushButton:
    """A "New structure..." button for the Correct page ``page`` (see the module
    docstring). Clicking it opens :class:`NewStructureDialog` for the current case."""
    button = QPushButton("New structure...")
    button.setToolTip("Add a structure to this case (e.g. Stomach), draw it, review, export, fine-tune")

    def clicked() -> None:
        ctx = getattr(page, "context", None)  # a property (Correct page) or a method (a case controller)
        ctx = ctx() if callable(ctx) else ctx
        if ctx is None:
            return
        dlg = NewStructureDialog(ctx.class_names, page)
        if dlg.exec_() != QDialog.Accepted:
            return
        value = add_structure_to_case(ctx, dlg.structure())
        if hasattr(page, "_refresh_classes"):
            page._refresh_classes()
        if hasattr(page, "select_class"):
            page.select_class(value)
        ctx.labels_layer.selected_label = value

    button.clicked.connect(clicked)
    page.new_structure_button = button
    return button


def new_structures_text(dataset, base_key: str) -> str:
    """The Fine-tune page's line about new structures: which of the dataset's classes
    the base model lacks (they will be appended after its classes), or ``""``; a
    dataset that cannot be read gives ``""`` (the page reports that error itself)."""
    from ..datasets import DatasetFormatError, open_dataset
    from ..models import registry
    from ..models.grow import new_class_names

    try:
        spec = registry.get_entry(base_key).spec()
        ds = open_dataset(dataset)
    except (DatasetFormatError, OSError, ValueError, LookupError):
        return ""
    new = new_class_names(spec, ds.class_names)
    if not new:
        return ""
    k = len(spec.classes)
    added = ", ".join(f"{n} ({k + i + 1})" for i, n in enumerate(new))
    per = ds.annotated_classes()
    counts = ", ".join(f"{n} on {sum(n in a for a in per.values())} of {len(per)} case(s)" for n in new)
    return f"New structures: {added}, appended after {spec.key}'s {k} classes; annotated: {counts}"


def new_structures_label(page) -> QLabel:
    """A label for the Fine-tune page ``page`` (its ``folder_edit`` and ``base_combo``)
    that lists the dataset's new structures (:func:`new_structures_text`), updated when
    the dataset folder or the base model changes."""
    label = QLabel("")
    label.setWordWrap(True)

    def update(*_) -> None:
        label.setText(new_structures_text(page.folder_edit.text().strip(), page.base_combo.currentText()))

    page.folder_edit.textChanged.connect(update)
    page.base_combo.currentTextChanged.connect(update)
    page.new_structures_label = label
    update()
    return label
