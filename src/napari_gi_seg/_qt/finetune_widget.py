"""Fine-tune dock widget: train a new model version on exported corrections.

Runs ``napari-gi-seg finetune DATASET --base MODEL --name NAME --epochs N --jsonl``
as a separate process (``QProcess``): training never blocks the viewer, Cancel
kills the process (the registry is written atomically, so a killed run leaves no
half-registered model), and every epoch's JSON line updates the loss and
validation-Dice curves. On success the new model is registered by the CLI; the
widget refreshes the Segment widget's model list and selects the new version.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from qtpy.QtCore import QProcess, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import _context as C


def finetune_command(
    dataset: str | Path, base: str, name: str, epochs: int, device: str = "auto", extra: list[str] | None = None
) -> list[str]:
    """The argv (``[python, -m, napari_gi_seg.cli, finetune, ...]``) the widget runs."""
    return [
        sys.executable,
        "-m",
        "napari_gi_seg.cli",
        "finetune",
        str(dataset),
        "--model",
        base,
        "--name",
        name,
        "--epochs",
        str(int(epochs)),
        "--device",
        device,
        "--jsonl",
        *(extra or []),
    ]


def parse_jsonl_line(line: str) -> dict | None:
    """One stdout line -> dict, or ``None`` for anything that is not a JSON object
    (log lines are tolerated)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


class FinetuneWidget(QWidget):
    """Dock widget: dataset folder, base model, new model name, epochs, device;
    Start/Cancel; live curves of training loss and validation mean Dice.

    Attributes after a run: ``history`` (the epoch rows), ``new_model_key``
    (``"name:version"`` or ``None``), ``exit_code``. Signal ``run_finished(dict)``
    with ``{"ok": bool, "model": key | None, "cancelled": bool, "history": [...]}``.

    ``extra_args`` (list of strings) is appended to the command line (tests use
    ``["--max-steps-per-epoch", "2", "--size", "64"]``-style tiny runs).
    """

    run_finished = Signal(object)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.extra_args: list[str] = []
        self.history: list[dict] = []
        self.new_model_key: str | None = None
        self.exit_code: int | None = None
        self._proc: QProcess | None = None
        self._last_proc: QProcess | None = None
        self._buffer = ""
        self._stderr_tail: list[str] = []
        self._cancelled = False

        from .export_widget import default_dataset_dir

        self.folder_edit = QLineEdit(str(default_dataset_dir()))
        self.browse_button = QPushButton("Browse...")
        row = QHBoxLayout()
        row.addWidget(self.folder_edit)
        row.addWidget(self.browse_button)
        self.base_combo = QComboBox()
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("same name as the base (a new version)")
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 1000)
        self.epochs_spin.setValue(10)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        self.start_button = QPushButton("Fine-tune")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)

        form = QFormLayout()
        form.addRow("dataset", row)
        form.addRow("base model", self.base_combo)
        form.addRow("new name", self.name_edit)
        form.addRow("epochs", self.epochs_spin)
        form.addRow("device", self.device_combo)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.status_label)
        self._make_plot(lay)
        lay.addStretch(1)

        self.browse_button.clicked.connect(self._browse)
        self.start_button.clicked.connect(lambda: self.start())
        self.cancel_button.clicked.connect(self.cancel)
        self.refresh_models()
        C.register_widget(self.viewer, self)

    # ------------------------------------------------------------------ UI
    def _make_plot(self, lay) -> None:
        # matplotlib's Agg renderer into a QLabel pixmap: no FigureCanvasQTAgg, whose
        # deletion with an undocked widget crashed PySide6 at interpreter exit
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.6, 2.4), dpi=100, layout="constrained")
        FigureCanvasAgg(self.figure)
        self.ax_loss = self.figure.add_subplot(111)
        self.ax_dice = self.ax_loss.twinx()
        self.plot_label = QLabel()
        self.plot_label.setMinimumHeight(200)
        lay.addWidget(self.plot_label)
        self._redraw()

    def _redraw(self) -> None:
        from matplotlib.ticker import MaxNLocator
        from qtpy.QtGui import QImage, QPixmap

        ax, bx = self.ax_loss, self.ax_dice
        ax.clear()
        bx.clear()
        ep = [r.get("epoch") for r in self.history]
        loss = [r.get("train_loss") for r in self.history]
        vd = [(r.get("epoch"), r.get("val_mean_dice")) for r in self.history if r.get("val_mean_dice") is not None]
        if ep:
            ax.plot(ep, loss, "o-", color="#4363d8", label="training loss")
        if vd:
            bx.plot([e for e, _ in vd], [d for _, d in vd], "s-", color="#e6194b", label="validation Dice")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        bx.yaxis.set_label_position("right")  # clear() moves a twin's axis back to the left
        bx.yaxis.tick_right()
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss", color="#4363d8")
        bx.set_ylabel("validation mean Dice", color="#e6194b")
        bx.set_ylim(0, 1)
        ax.set_title("fine-tuning", fontsize=9)
        canvas = self.figure.canvas
        canvas.draw()
        w, h = canvas.get_width_height()
        buf = bytes(canvas.buffer_rgba())
        img = QImage(buf, w, h, 4 * w, QImage.Format_RGBA8888).copy()
        self.plot_label.setPixmap(QPixmap.fromImage(img))

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Dataset folder", self.folder_edit.text())
        if d:
            self.folder_edit.setText(d)

    def refresh_models(self) -> list[str]:
        """Re-read the registry into the base-model list; returns the keys."""
        from ..models.registry import DEFAULT_MODEL, list_models

        current = self.base_combo.currentText()
        keys = [e.key for e in list_models()]
        self.base_combo.clear()
        self.base_combo.addItems(keys)
        if current in keys:
            self.base_combo.setCurrentText(current)
        else:
            d = [k for k in keys if k.split(":")[0] == DEFAULT_MODEL]
            if d:
                self.base_combo.setCurrentText(d[-1])
        return keys

    # ------------------------------------------------------------------ process
    @property
    def is_running(self) -> bool:
        return self._proc is not None

    def command(self) -> list[str]:
        """The command line for the current choices."""
        base = self.base_combo.currentText()
        name = self.name_edit.text().strip() or base.split(":")[0]
        return finetune_command(
            self.folder_edit.text().strip(),
            base,
            name,
            self.epochs_spin.value(),
            self.device_combo.currentText(),
            self.extra_args,
        )

    def start(self) -> bool:
        """Start fine-tuning; False (after an error notification) when the choices
        are incomplete or a run is in progress."""
        from napari.utils.notifications import show_error

        if self.is_running:
            show_error("Fine-tuning is already running.")
            return False
        folder = Path(self.folder_edit.text().strip()).expanduser()
        if not (folder / "dataset.json").is_file():
            show_error(f"{folder}: not an exported dataset (no dataset.json); export reviewed slices first.")
            return False
        if not self.base_combo.currentText():
            show_error("No base model registered.")
            return False
        argv = self.command()
        self.history, self.new_model_key, self.exit_code = [], None, None
        self._buffer, self._stderr_tail, self._cancelled = "", [], False
        self._target_name = argv[argv.index("--name") + 1]
        self._redraw()
        proc = QProcess()  # owned by Python (self._proc), not by the widget
        proc.setProgram(argv[0])
        proc.setArguments(argv[1:])
        proc.readyReadStandardOutput.connect(self._read_stdout)
        proc.readyReadStandardError.connect(self._read_stderr)
        proc.finished.connect(self._on_finished)
        proc.errorOccurred.connect(self._on_process_error)
        self._proc = proc
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status_label.setText(f"Fine-tuning {argv[argv.index('--model') + 1]} on {folder.name}...")
        proc.start()
        return True

    def cancel(self) -> None:
        """Kill the training process (the model is not registered)."""
        if self._proc is not None:
            self._cancelled = True
            self._proc.kill()
            self.status_label.setText("Cancelling...")

    def _read_stdout(self) -> None:
        if self._proc is None:
            return
        self._buffer += bytes(self._proc.readAllStandardOutput()).decode(errors="replace")
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self._handle_line(line)

    def _read_stderr(self) -> None:
        if self._proc is None:
            return
        text = bytes(self._proc.readAllStandardError()).decode(errors="replace")
        self._stderr_tail = (self._stderr_tail + text.splitlines())[-20:]

    def _handle_line(self, line: str) -> None:
        obj = parse_jsonl_line(line)
        if obj is None:
            if line.strip().startswith("registered "):
                self.new_model_key = line.split()[1]
            return
        for k in ("registered", "model", "key"):
            v = obj.get(k)
            if isinstance(v, str) and ":" in v and "epoch" not in obj:
                self.new_model_key = v
        if "epoch" in obj:
            self.history.append(obj)
            vd = obj.get("val_mean_dice")
            self.status_label.setText(
                f"epoch {obj['epoch']}: loss {obj.get('train_loss', float('nan')):.4f}"
                + (f", validation Dice {vd:.3f}" if vd is not None else "")
            )
            self._redraw()

    def _on_process_error(self, err) -> None:
        if err == QProcess.FailedToStart:
            from napari.utils.notifications import show_error

            show_error(f"Could not start the fine-tuning process ({sys.executable}).")
            self._on_finished(-1, None)

    def _on_finished(self, exit_code, exit_status=None) -> None:
        from napari.utils.notifications import show_error, show_info

        if self._proc is None:
            return
        self._read_stdout()
        if self._buffer.strip():
            self._handle_line(self._buffer)
            self._buffer = ""
        self._read_stderr()
        # the finished QProcess (Python-owned, no Qt parent) is kept until the next
        # run: releasing it inside its own `finished` signal deletes it mid-emission
        self._last_proc, self._proc = self._proc, None
        self.exit_code = int(exit_code)
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        ok = self.exit_code == 0 and not self._cancelled
        if self._cancelled:
            self.status_label.setText("Cancelled; no model was registered.")
        elif not ok:
            last = next((ln for ln in reversed(self._stderr_tail) if ln.strip()), f"exit status {self.exit_code}")
            show_error(f"Fine-tuning failed: {last}")
            self.status_label.setText(f"Failed: {last}")
        else:
            from ..models.registry import ModelNotFoundError, get_entry

            if self.new_model_key is None:
                try:
                    self.new_model_key = get_entry(self._target_name).key
                except ModelNotFoundError:
                    self.new_model_key = None
            self.refresh_models()
            from .segment_widget import SegmentWidget

            seg = C.find_widget(self.viewer, SegmentWidget)
            if seg is not None:
                seg.refresh_models()
                if self.new_model_key:
                    try:
                        seg.select_model(self.new_model_key)
                    except LookupError as e:
                        show_error(str(e))
            msg = f"Registered {self.new_model_key}" + (" and selected it in Segment." if seg is not None else ".")
            show_info(msg)
            self.status_label.setText(msg)
        self.run_finished.emit(
            {"ok": ok, "model": self.new_model_key, "cancelled": self._cancelled, "history": list(self.history)}
        )

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt name
        """Closing the widget stops a running fine-tune (nothing is registered)."""
        if self._proc is not None:
            self.cancel()
            self._proc.waitForFinished(5000)
        super().closeEvent(event)
