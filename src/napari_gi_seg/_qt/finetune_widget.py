"""Fine-tune dock widget: train a new model version on exported corrections.

Runs ``napari-gi-seg finetune DATASET --model BASE --name NAME --epochs N --jsonl``
as a separate process (``QProcess``): training never blocks the viewer. Every line is
one :class:`~napari_gi_seg.progress.ProgressEvent`: the base's held-back Dice
(``baseline``), optimiser steps (a napari progress bar), each epoch (the loss and
held-back-Dice curves) and the outcome (``done``).

Fine-tuning never silently makes things worse: the widget shows the held-back Dice
of the base and of the new model on the same held-back slices; a model worse than
its base is registered only when "register even if worse" is ticked or "Register
anyway" is clicked, and is never selected in Segment automatically.

Cancel stops gracefully: it creates the run's stop file and sends SIGTERM; the
trainer ends after the current step, validates, and keeps the best epoch in the run
folder ("Keep best epoch" registers it; "Resume" continues the run). Only when the
process has not ended after :attr:`FinetuneWidget.kill_timeout_s` is it killed. All
of the process's output goes to a log file (``<user folder>/logs/``), and the run
folder keeps its own ``train.log``.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import tempfile
from pathlib import Path

from qtpy.QtCore import QProcess, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
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

from ..constants import DEVICES
from ..paths import default_dataset_dir, user_dir
from . import _context as C
from ._curves import TrainingCurves
from ._progress import NapariProgress
from .controller import register_tool
from .structures import new_structures_label


def finetune_command(
    dataset: str | Path, base: str, name: str, epochs: int, device: str = "auto", extra: list[str] | None = None
) -> list[str]:
    """The argv the widget runs.

    Parameters
    ----------
    dataset : str or Path
        The dataset folder.
    base, name : str
        Base model key and the new model's name.
    epochs : int
        Epochs to train.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
    extra : list of str, optional
        More arguments (``--register-if-worse``, ``--resume``, ``--stop-file PATH``, ...).

    Returns
    -------
    list of str
        ``[python, -m, napari_gi_seg.cli, finetune, DATASET, --model, BASE, ...]``.
    """
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
    """One stdout line as a dict, or ``None`` for anything that is not a JSON object
    (log lines are tolerated).

    Parameters
    ----------
    line : str
        One line of the process's stdout.

    Returns
    -------
    dict or None
    """
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


class FinetuneWidget(QWidget):
    """Dock widget: dataset folder, base model, new model name, epochs, device,
    "register even if worse"; Fine-tune / Resume / Cancel / Register; the held-back
    Dice before and after; live curves of training loss and held-back mean Dice.

    Attributes
    ----------
    history : list of dict
        The epoch rows of the last run.
    dice_before, dice_after : float or None
        Held-back mean Dice of the base and of the new model (same held-back data).
    outcome : dict or None
        The last run's ``done`` event (``model``, ``registered``, ``reason``, ``worse``,
        ``stopped``, ``run_dir``, ``log_file``, ...).
    new_model_key : str or None
        ``"name:version"`` of the model registered by the last run (or by Register).
    exit_code : int or None
        The process's exit status.
    log_path : Path or None
        The file that holds all of the last process's output.
    kill_timeout_s : float
        Seconds Cancel waits for the graceful stop before killing the process.
    extra_args : list of str
        Appended to the command line (tests use tiny runs, e.g. ``["--max-steps-per-epoch", "2"]``).

    Signal ``run_finished(dict)``: ``{"ok", "model", "cancelled", "killed", "registered",
    "worse", "dice_before", "dice_after", "run_dir", "history"}``.
    """

    run_finished = Signal(object)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.extra_args: list[str] = []
        self.kill_timeout_s = 120.0
        self.history: list[dict] = []
        self.new_model_key: str | None = None
        self.exit_code: int | None = None
        self.dice_before: float | None = None
        self.dice_after: float | None = None
        #: held-back Dice per class of the base and of the best epoch so far
        self.per_class_before: dict[str, float] = {}
        self.per_class_after: dict[str, float] = {}
        self.outcome: dict | None = None
        self.log_path: Path | None = None
        self._proc: QProcess | None = None
        self._last_proc: QProcess | None = None
        self._buffer = ""
        self._stderr_tail: list[str] = []
        self._cancelled = self._killed = False
        self._stop_dir: tempfile.TemporaryDirectory | None = None
        self._log = None
        self._bars = NapariProgress("Fine-tuning", stages=("step", "validate"), parent=self)

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
        self.device_combo.addItems(DEVICES)
        self.if_worse_check = QCheckBox("register even if worse")
        self.if_worse_check.setToolTip(
            "Register the new model even when its held-back Dice is below the base's. By default such a "
            "model is kept unregistered in its run folder."
        )
        self.start_button = QPushButton("Fine-tune")
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue the interrupted fine-tune of this name from its last checkpoint")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.register_button = QPushButton("Keep best epoch")
        self.register_button.setEnabled(False)
        self.dice_label = QLabel("")
        self.dice_label.setWordWrap(True)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)

        form = QFormLayout()
        form.addRow("dataset", row)
        form.addRow("base model", self.base_combo)
        form.addRow(new_structures_label(self))  # structures the dataset adds to the base
        form.addRow("new name", self.name_edit)
        form.addRow("epochs", self.epochs_spin)
        form.addRow("device", self.device_combo)
        form.addRow(self.if_worse_check)
        buttons = QHBoxLayout()
        for b in (self.start_button, self.resume_button, self.cancel_button):
            buttons.addWidget(b)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.register_button)
        lay.addWidget(self.dice_label)
        lay.addWidget(self.status_label)
        self.curves = TrainingCurves()
        self.plot_label = self.curves.label
        lay.addWidget(self.plot_label)
        self._redraw()
        lay.addStretch(1)

        self.browse_button.clicked.connect(self._browse)
        self.start_button.clicked.connect(lambda: self.start())
        self.resume_button.clicked.connect(lambda: self.start(resume=True))
        self.cancel_button.clicked.connect(self.cancel)
        self.register_button.clicked.connect(lambda: self.register_candidate())
        self.refresh_models()
        register_tool(self.viewer, self)

    # ------------------------------------------------------------------ UI
    def _redraw(self) -> None:
        self.curves.draw(self.history, self.dice_before)

    def _show_dice(self) -> None:
        if self.dice_before is None:
            self.dice_label.setText("")
            return
        grown = bool(self.per_class_after) and any(k not in self.per_class_before for k in self.per_class_after)
        if grown:  # like for like: the base's classes only; the new structures on their own
            from ..training.finetune import held_back_comparison

            cmp = held_back_comparison(self.per_class_before, self.per_class_after)
            worse = self.outcome.get("worse") if self.outcome else cmp["after"] < cmp["before"] - 0.02
            text = (
                f"held-back mean Dice of the base's classes: base {cmp['before']:.3f} -> new {cmp['after']:.3f}"
                + (" (worse)" if worse else "")
                + "; new: "
                + ", ".join(f"{k} {v:.3f}" for k, v in cmp["new"].items())
            )
            self.dice_label.setText(text)
            return
        text = f"held-back mean Dice: base {self.dice_before:.3f}"
        if self.dice_after is not None:
            worse = self.dice_after < self.dice_before
            text += f" -> new {self.dice_after:.3f}" + (" (worse)" if worse else "")
        self.dice_label.setText(text)

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Dataset folder", self.folder_edit.text())
        if d:
            self.folder_edit.setText(d)

    def refresh_models(self) -> list[str]:
        """Re-read the registry into the base-model list.

        Returns
        -------
        list of str
            The registered keys.
        """
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
        """True while the fine-tuning process runs."""
        return self._proc is not None

    def target_name(self) -> str:
        """The new model's name: the name field, else the base's name."""
        return self.name_edit.text().strip() or self.base_combo.currentText().split(":")[0]

    def command(self, resume: bool = False) -> list[str]:
        """The command line for the current choices (see :func:`finetune_command`)."""
        extra = list(self.extra_args)
        if self.if_worse_check.isChecked():
            extra.append("--register-if-worse")
        if resume:
            extra.append("--resume")
        if self._stop_dir is not None:
            extra += ["--stop-file", str(Path(self._stop_dir.name) / "stop")]
        return finetune_command(
            self.folder_edit.text().strip(),
            self.base_combo.currentText(),
            self.target_name(),
            self.epochs_spin.value(),
            self.device_combo.currentText(),
            extra,
        )

    def start(self, resume: bool = False) -> bool:
        """Start fine-tuning (or resume the interrupted run of this name).

        Returns
        -------
        bool
            False (after an error notification) when the choices are incomplete, a run
            is in progress, or there is nothing to resume.
        """
        from napari.utils.notifications import show_error

        from ..training.runs import resumable_run

        if self.is_running:
            show_error("Fine-tuning is already running.")
            return False
        folder = Path(self.folder_edit.text().strip()).expanduser()
        if not (folder / "dataset.json").is_file() and not any(folder.glob("image_*.nii*")):
            show_error(f"{folder}: not an exported dataset (no dataset.json); export reviewed slices first.")
            return False
        if not self.base_combo.currentText():
            show_error("No base model registered.")
            return False
        if resume and resumable_run(self.target_name()) is None:
            show_error(f"No interrupted fine-tune of {self.target_name()!r} to resume.")
            return False
        self._stop_dir = tempfile.TemporaryDirectory(prefix="napari-gi-seg-stop-")
        argv = self.command(resume=resume)
        self.history, self.new_model_key, self.exit_code, self.outcome = [], None, None, None
        self.dice_before = self.dice_after = None
        self.per_class_before, self.per_class_after = {}, {}
        self._buffer, self._stderr_tail, self._cancelled, self._killed = "", [], False, False
        self._open_log(argv)
        self._redraw()
        self._show_dice()
        proc = QProcess()  # owned by Python (self._proc), not by the widget
        proc.setProgram(argv[0])
        proc.setArguments(argv[1:])
        proc.readyReadStandardOutput.connect(self._read_stdout)
        proc.readyReadStandardError.connect(self._read_stderr)
        proc.finished.connect(self._on_finished)
        proc.errorOccurred.connect(self._on_process_error)
        self._proc = proc
        self._set_running(True)
        verb = "Resuming" if resume else "Fine-tuning"
        self.status_label.setText(f"{verb} {self.base_combo.currentText()} on {folder.name}...")
        proc.start()
        return True

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.resume_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if running:
            self.register_button.setEnabled(False)

    def _open_log(self, argv: list[str]) -> None:
        logs = user_dir() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"finetune-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S-%f')}.log"
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in _on_finished
        self._log.write("$ " + " ".join(argv[1:]) + "\n")

    def _write_log(self, text: str) -> None:
        if self._log is not None and not self._log.closed:
            self._log.write(text)
            self._log.flush()

    def cancel(self) -> None:
        """Stop gracefully: create the stop file and send SIGTERM; the best epoch so far
        is kept. The process is killed if it has not ended after :attr:`kill_timeout_s`."""
        if self._proc is None:
            return
        self._cancelled = True
        if self._stop_dir is not None:
            (Path(self._stop_dir.name) / "stop").touch()
        self._proc.terminate()
        self.cancel_button.setEnabled(False)
        self.status_label.setText("Stopping after the current step (the best epoch so far is kept)...")
        proc = self._proc
        QTimer.singleShot(int(self.kill_timeout_s * 1000), lambda: self._kill_if_running(proc))

    def _kill_if_running(self, proc: QProcess) -> None:
        if self._proc is proc and proc.state() != QProcess.NotRunning:
            self._killed = True
            self._write_log(f"[widget] no graceful stop after {self.kill_timeout_s:.0f} s: killed\n")
            proc.kill()

    def _read_stdout(self) -> None:
        if self._proc is None:
            return
        text = bytes(self._proc.readAllStandardOutput()).decode(errors="replace")
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self._handle_line(line)

    def _read_stderr(self) -> None:
        if self._proc is None:
            return
        text = bytes(self._proc.readAllStandardError()).decode(errors="replace")
        self._write_log(text)
        self._stderr_tail = (self._stderr_tail + text.splitlines())[-20:]

    def _handle_line(self, line: str) -> None:
        obj = parse_jsonl_line(line)
        if obj is None:
            if line.strip():
                self._write_log(line + "\n")
            return
        ev = obj.get("event")
        if ev in ("step", "validate"):
            from ..progress import ProgressEvent

            self._bars(ProgressEvent(ev, int(obj.get("done") or 0), obj.get("total"), str(obj.get("message", ""))))
            return
        self._write_log(line + "\n")
        if ev == "baseline":
            self.dice_before = obj.get("dice_before")
            self.per_class_before = {
                k: (float("nan") if v is None else float(v)) for k, v in (obj.get("per_class_before") or {}).items()
            }
            self._show_dice()
            self._redraw()
        elif ev == "epoch":
            self.history.append(obj)
            vd = obj.get("val_mean_dice")
            if vd is not None and (self.dice_after is None or vd > self.dice_after):  # the best epoch is kept
                self.dice_after = vd
                self.per_class_after = {
                    k[len("val_dice_") :]: float(v)
                    for k, v in obj.items()
                    if k.startswith("val_dice_") and isinstance(v, (int, float))
                }
            self.status_label.setText(
                f"epoch {obj['epoch']}: loss {obj.get('train_loss', float('nan')):.4f}"
                + (f", held-back Dice {vd:.3f}" if vd is not None else "")
            )
            self._show_dice()
            self._redraw()
        elif ev == "done":
            self.outcome = obj
            self.dice_after = obj.get("dice_after")
            if obj.get("per_class_after"):
                self.per_class_after = {
                    k: (float("nan") if v is None else float(v)) for k, v in obj["per_class_after"].items()
                }
            if obj.get("registered"):
                self.new_model_key = obj.get("model")
            self._show_dice()

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
        self._bars.close()
        # the finished QProcess (Python-owned, no Qt parent) is kept until the next
        # run: releasing it inside its own `finished` signal deletes it mid-emission
        self._last_proc, self._proc = self._proc, None
        self.exit_code = int(exit_code)
        self._write_log(f"[widget] exit status {self.exit_code}\n")
        if self._log is not None:
            self._log.close()
        if self._stop_dir is not None:
            self._stop_dir.cleanup()
            self._stop_dir = None
        self._set_running(False)
        out = self.outcome or {}
        ok = self.exit_code == 0 and bool(out)
        if not ok:
            last = next((ln for ln in reversed(self._stderr_tail) if ln.strip()), f"exit status {self.exit_code}")
            if self._killed:
                self.status_label.setText(
                    f"Killed after {self.kill_timeout_s:.0f} s without a graceful stop; Resume continues from the "
                    f"last checkpoint. Log: {self.log_path}"
                )
            elif self._cancelled:
                self.status_label.setText(f"Cancelled. Log: {self.log_path}")
            else:
                show_error(f"Fine-tuning failed: {last} (log: {self.log_path})")
                self.status_label.setText(f"Failed: {last}\nLog: {self.log_path}")
        elif out.get("registered"):
            msg = f"Registered {self.new_model_key}"
            msg += self._after_register(worse=bool(out.get("worse")))
            show_info(msg)
            self.status_label.setText(msg)
        else:
            # not registered: stopped (keep the best epoch?) or worse than the base (register anyway?)
            stopped = out.get("stopped") == "cancelled"
            self.register_button.setText("Keep best epoch" if stopped else "Register anyway")
            self.register_button.setEnabled(True)
            self.status_label.setText(
                (
                    f"Stopped after {len(self.history)} epoch(s); the best epoch is kept in the run folder. "
                    "Keep it as a new version, or Resume."
                    if stopped
                    else self._not_registered_text(out)
                )
                + f"\nLog: {out.get('log_file') or self.log_path}"
            )
        self.run_finished.emit(
            {
                "ok": ok,
                "model": self.new_model_key,
                "cancelled": self._cancelled,
                "killed": self._killed,
                "registered": bool(out.get("registered")),
                "worse": out.get("worse"),
                "dice_before": self.dice_before,
                "dice_after": self.dice_after,
                "run_dir": out.get("run_dir"),
                "history": list(self.history),
            }
        )

    def _after_register(self, worse: bool) -> str:
        """Refresh the model lists; select the new model in Segment unless it is worse."""
        from napari.utils.notifications import show_error

        self.refresh_models()
        from .segment_widget import SegmentWidget

        seg = C.find_widget(self.viewer, SegmentWidget)
        if seg is None:
            return "."
        seg.refresh_models()
        if worse:
            return f" (worse than the base on the held-back slices: Segment keeps {seg.model_key()})."
        try:
            seg.select_model(self.new_model_key)
        except LookupError as e:
            show_error(str(e))
            return "."
        return " and selected it in Segment."

    def register_candidate(self):
        """Register the model the last run left unregistered (the best epoch of a
        stopped run, or a model worse than its base): an explicit choice.

        Returns
        -------
        ModelEntry or None
            The registered model; ``None`` (after an error notification) when there is
            no candidate.
        """
        from napari.utils.notifications import show_error, show_info

        from ..training.runs import register_run

        run_dir = (self.outcome or {}).get("run_dir")
        if not run_dir:
            show_error("No fine-tuned model to register.")
            return None
        try:
            entry = register_run(run_dir, allow_worse=True)
        except (OSError, ValueError) as e:
            show_error(f"Could not register: {e}")
            return None
        self.new_model_key = entry.key
        self.register_button.setEnabled(False)
        ft = entry.spec().metrics.get("finetune", {})
        msg = f"Registered {entry.key}" + self._after_register(worse=bool(ft.get("worse")))
        show_info(msg)
        self.status_label.setText(msg)
        return entry

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt name
        """Closing the widget stops a running fine-tune (nothing is registered)."""
        if self._proc is not None:
            self._cancelled = True
            self._proc.kill()
            self._proc.waitForFinished(5000)
        super().closeEvent(event)

    def _not_registered_text(self, out: dict) -> str:
        """Why the run was not registered, in the widget's own terms (its buttons and
        check box; the core's reason names the CLI's flag)."""
        if out.get("worse") and out.get("new_classes"):  # grown: the core says which old class fell
            why = str(out.get("reason", "")).split(": not registered")[0]
            return (
                f"Not registered: {why}. Press 'Register anyway' to keep it as a new version, or tick "
                "'register even if worse' before the next run."
            )
        if out.get("worse") and self.dice_before is not None and self.dice_after is not None:
            return (
                f"Not registered: the held-back Dice fell from {self.dice_before:.3f} to {self.dice_after:.3f}. "
                "Press 'Register anyway' to keep it as a new version, or tick "
                "'register even if worse' before the next run."
            )
        return f"Not registered: {out.get('reason', '')}"
