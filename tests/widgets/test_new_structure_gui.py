"""'New structure...' on the Correct page: a TG-263 name offered, added to the case
after the model's classes, drawn, kept in the session, exported with its name, and
listed by the Fine-tune page's helper (real CHAOS scan, the tiny model)."""

from __future__ import annotations

import json

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QApplication

from napari_gi_seg._qt.export_widget import ExportWidget
from napari_gi_seg._qt.finetune_widget import FinetuneWidget
from napari_gi_seg._qt.structures import (
    NewStructureDialog,
    new_structure_button,
    new_structures_label,
    new_structures_text,
)


def _accept_dialog_with(name: str):
    """Answer the next modal New-structure dialog with ``name``."""

    def answer():
        dlg = next(w for w in QApplication.topLevelWidgets() if isinstance(w, NewStructureDialog) and w.isVisible())
        dlg.name.setCurrentText(name)
        dlg.buttons.accepted.emit()

    QTimer.singleShot(50, answer)


def test_new_structure_drawn_and_exported(qtbot, segmented, tmp_path, tiny_key):
    viewer, layer, seg, cor = segmented
    button = new_structure_button(cor)
    ctx = cor.context
    dlg = NewStructureDialog(ctx.class_names)
    offered = [dlg.name.itemText(i) for i in range(dlg.name.count())]
    assert offered[:4] == ["Stomach", "Bowel_Small", "Bowel_Large", "Duodenum"]
    assert "Liver" not in offered and "Kidney_R" not in offered  # the model has them (liver, right_kidney)
    dlg.name.setCurrentText("right_kidney")
    dlg.buttons.accepted.emit()
    assert dlg.result() == 0 and "exists already" in dlg.error.text()

    _accept_dialog_with("Stomach")
    qtbot.mouseClick(button, Qt.LeftButton)
    assert ctx.class_names[5] == "Stomach" and ctx.colours[5].startswith("#")
    assert cor.class_combo.currentData() == 5 and ctx.labels_layer.selected_label == 5
    assert ctx.labels_layer.metadata["class_names"][5] == "Stomach"
    # draw it on one slice (as the brush would), review, export with its name through the Export page
    labels = np.array(ctx.labels_layer.data)
    labels[12, 100:120, 150:170] = 5
    ctx.labels_layer.data = labels
    cor.go_to(12)
    cor.mark_reviewed_and_next()
    exp = ExportWidget(viewer)
    qtbot.addWidget(exp)
    out = exp.export(tmp_path / "ds")
    assert out is not None
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"]["Stomach"] == 5 and meta["labels"]["ignore"] == 6
    assert next(iter(meta["annotated_classes"].values()))[-1] == "Stomach"
    assert "Stomach (5)" in new_structures_text(out, tiny_key)
    ft = FinetuneWidget(viewer)  # the Fine-tune page lists it once the hook line adds the label
    qtbot.addWidget(ft)
    label = new_structures_label(ft)
    ft.base_combo.setCurrentText(tiny_key)
    ft.folder_edit.setText(str(out))
    assert "New structures: Stomach (5)" in label.text() and "Stomach on 1 of 1 case(s)" in label.text()
    assert cor._state_of(ctx)["info"]["class_names"]["5"] == "Stomach"  # kept in the session's autosave
    from napari_gi_seg.datasets import open_dataset

    case = open_dataset(out).cases[0].load()
    assert np.count_nonzero(case.target[12] == 5) == 400
    assert case.annotated == ("liver", "right_kidney", "left_kidney", "spleen", "Stomach")  # every structure
