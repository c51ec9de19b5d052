"""Export dock widget: write the reviewed case into an nnU-Net v2 training dataset.

Layout and wiring over :func:`napari_gi_seg.curation.export.export_case`, run as the case
controller's job (:mod:`napari_gi_seg._qt.controller`): only REVIEWED slices carry
labels, every other slice becomes the ignore label; the model key and the
per-slice correction Dice go to ``provenance.json``. "Save RTSTRUCT..." writes the
whole labels layer as a DICOM RT Structure Set for the planning system (images read
from a DICOM series only; :func:`napari_gi_seg.io.write_labels`). Errors are shown as
napari notifications, never raised into the event loop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..curation.structures import rt_roi_names
from ..paths import default_dataset_dir
from . import _context as C
from .controller import CaseController, case_for_labels, register_tool


def _export_job(
    folder, image, labels, reviewed, names, case_id, group, prediction, model_key, progress=None, cancel=None
):
    """Job body: :func:`napari_gi_seg.curation.export.export_case` (worker thread)."""
    from ..curation.export import export_case

    return export_case(
        folder,
        image,
        labels,
        reviewed,
        names,
        case_id=case_id,
        group=group,
        prediction=prediction,
        model_key=model_key,
        progress=progress,
    )


class ExportWidget(QWidget):
    """Dock widget: labels layer, dataset folder (line edit + Browse), optional case
    id and patient/group, Export button and a read-out of what was written."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = C.unwrap(napari_viewer)  # the real viewer, also when napari hands a proxy
        self._job = None
        self.labels_combo = QComboBox()
        self.labels_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.labels_combo.setMinimumContentsLength(10)  # long layer names must not widen the dock
        self.folder_edit = QLineEdit(str(default_dataset_dir()))
        self.browse_button = QPushButton("Browse...")
        row = QHBoxLayout()
        row.addWidget(self.folder_edit)
        row.addWidget(self.browse_button)
        self.case_edit = QLineEdit()
        self.case_edit.setPlaceholderText("automatic (from the image name)")
        self.group_edit = QLineEdit()
        self.group_edit.setPlaceholderText("patient / group for splits (optional)")
        self.summary_label = QLabel("")
        self.summary_label.setWordWrap(True)
        self.export_button = QPushButton("Export reviewed slices")
        self.rtstruct_button = QPushButton("Save RTSTRUCT...")
        self.rtstruct_button.setToolTip("All slices as a DICOM RT Structure Set referencing the DICOM series")
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)

        form = QFormLayout()
        form.addRow("labels", self.labels_combo)
        form.addRow("dataset", row)
        form.addRow("case id", self.case_edit)
        form.addRow("group", self.group_edit)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.summary_label)
        lay.addWidget(self.export_button)
        lay.addWidget(self.rtstruct_button)
        lay.addWidget(self.result_label)
        lay.addStretch(1)

        self.browse_button.clicked.connect(self._browse)
        self.export_button.clicked.connect(lambda: self.export(wait=False))
        self.rtstruct_button.clicked.connect(lambda: self.save_rtstruct())
        self.labels_combo.currentIndexChanged.connect(self._update_summary)
        self.viewer.layers.events.inserted.connect(self._refresh)
        self.viewer.layers.events.removed.connect(self._refresh)
        self._refresh()
        register_tool(self.viewer, self)

    def _refresh(self, event=None) -> None:
        C.refresh_labels_combo(self.viewer, self.labels_combo, event)
        self._update_summary()

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Dataset folder (nnU-Net v2 raw layout)", self.folder_edit.text())
        if d:
            self.folder_edit.setText(d)

    def controller(self) -> CaseController | None:
        """The case controller of the selected Labels layer (adopting a layer opened from a file)."""
        name = self.labels_combo.currentText()
        if not name or name not in self.viewer.layers:
            return None
        return case_for_labels(self.viewer, self.viewer.layers[name])

    def context(self) -> C.CaseContext | None:
        """The case of the selected Labels layer (adopting a layer opened from a file)."""
        ctl = self.controller()
        return None if ctl is None else ctl.case

    def _update_summary(self, *args) -> None:
        ctx = self.context()
        if ctx is not getattr(self, "_watched", None):
            old = getattr(self, "_watched", None)
            if old is not None:
                try:
                    old.changed.disconnect(self._update_summary)
                except (TypeError, ValueError, RuntimeError):
                    pass
            if ctx is not None:
                ctx.changed.connect(self._update_summary)
            self._watched = ctx
        if ctx is None:
            self.summary_label.setText("No case: run Segment or open labels beside their image.")
            return
        n = len(ctx.tracker.reviewed_slices())
        self.summary_label.setText(
            f"{n} of {ctx.tracker.n_slices} slices reviewed; unreviewed slices are exported as the ignore label."
            + (f"<br>model: {ctx.model_key}" if ctx.model_key else "")
        )

    def export(self, dataset_dir: str | Path | None = None, wait: bool = True) -> Path | None:
        """Export the selected case as the controller's job.

        With ``wait`` (what scripts and tests call) the job runs here and the dataset
        folder is returned; the button runs it in a worker thread
        (``wait=False``, unless ``NAPARI_GI_SEG_SYNC=1``) and the result appears in the
        read-out. ``None`` after an error notification (nothing reviewed, class names
        that differ from the dataset's, unwritable folder, ...)."""
        from napari.utils.notifications import show_error

        from ..errors import ConflictError

        ctl = self.controller()
        if ctl is None or ctl.image_layer is None:
            show_error("Nothing to export: no labels layer with its image in the viewer.")
            return None
        folder = Path(dataset_dir if dataset_dir is not None else self.folder_edit.text().strip()).expanduser()
        if not str(folder).strip() or str(folder) == ".":
            show_error("Choose a dataset folder first.")
            return None
        reviewed = ctl.tracker.reviewed_slices()
        if not reviewed:
            show_error(
                "No slice is marked reviewed (Shift-R in Correct and review); only reviewed slices are exported."
            )
            return None
        case = ctl.case
        args = (
            folder,
            ctl.image_volume(),
            np.array(ctl.labels(), dtype=np.uint8, copy=True),
            reviewed,
            case.foreground_names,
            self.case_edit.text().strip() or None,
            self.group_edit.text().strip() or None,
            None if case.prediction is None else np.array(case.prediction, copy=True),
            case.model_key,
        )
        name = ctl.image_layer.name
        self.export_button.setEnabled(False)
        try:
            job = ctl.run(
                _export_job,
                *args,
                title=f"Exporting {name}",
                on_returned=lambda out: self._exported(out, len(reviewed), name),
                on_errored=self._export_failed,
                on_finished=self._export_done,
                sync=True if wait else None,
                parent=self,
            )
        except ConflictError as e:
            self.export_button.setEnabled(True)
            show_error(str(e))
            return None
        self._job = job
        return None if not wait or job.error is not None else Path(job.result)

    @property
    def is_running(self) -> bool:
        """An export is being written."""
        return self._job is not None and self._job.is_running

    def _export_done(self) -> None:
        try:
            self.export_button.setEnabled(True)
        except RuntimeError:  # the widget was closed while the export ran
            pass

    def _exported(self, out, n: int, name: str) -> None:
        from napari.utils.notifications import show_info

        show_info(f"Exported {n} reviewed slices of {name}.")
        try:
            self.result_label.setText(f"Exported {n} reviewed slices of {name} to {out}")
        except RuntimeError:  # the widget was closed while the export ran
            pass

    def _export_failed(self, exc) -> None:
        from napari.utils.notifications import show_error

        from .controller import error_text

        what = str(exc) if isinstance(exc, (ValueError, LookupError)) else error_text(exc)
        show_error(f"Export failed: {what}")
        self.result_label.setText(f"<span style='color:#e6194b'>Export failed: {what}</span>")

    def save_rtstruct(self, path: str | Path | None = None) -> Path | None:
        """Write the selected labels layer (all slices) as an RT Structure Set to
        ``path`` (asked for when ``None``); ROI names and colours from the
        case, ``ROIGenerationAlgorithm`` SEMIAUTOMATIC. Returns the file, or ``None``
        after an error notification (no DICOM image, cancelled, unwritable)."""
        from napari.utils.notifications import show_error, show_info

        from ..io import write_labels

        ctx = self.context()
        if ctx is None or ctx.image_layer is None:
            show_error("Nothing to save: no labels layer with its image in the viewer.")
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "RT Structure Set", "", "DICOM RTSTRUCT (*.dcm)")
            if not path:
                return None
        try:
            image = case_for_labels(self.viewer, ctx.labels_layer).image_volume()
            out = write_labels(
                Path(path) if str(path).lower().endswith(".dcm") else Path(f"{path}.dcm"),
                np.asarray(ctx.labels_layer.data),
                image,
                rt_roi_names(ctx.foreground_names),  # TG-263 ROI names for the planning system
                colours=ctx.colours,
                model_key=ctx.model_key,
                generation="SEMIAUTOMATIC",
            )
        except (OSError, ValueError) as e:
            show_error(f"RTSTRUCT not written: {e}")
            self.result_label.setText(f"<span style='color:#e6194b'>RTSTRUCT not written: {e}</span>")
            return None
        show_info(f"RT Structure Set written: {out}")
        self.result_label.setText(f"RT Structure Set written: {out}")
        return Path(out)
