"""The Fine-tune widget's live curves: training loss and held-back mean Dice per
epoch, drawn with matplotlib's Agg renderer into a ``QLabel`` pixmap (no
``FigureCanvasQTAgg``, whose deletion with an undocked widget crashed PySide6 at
interpreter exit)."""

from __future__ import annotations

from qtpy.QtWidgets import QLabel

__all__ = ["TrainingCurves"]


class TrainingCurves:
    """A ``QLabel`` (:attr:`label`) showing the curves of :meth:`draw`."""

    def __init__(self):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.6, 2.4), dpi=100, layout="constrained")
        FigureCanvasAgg(self.figure)
        self.ax_loss = self.figure.add_subplot(111)
        self.ax_dice = self.ax_loss.twinx()
        self.label = QLabel()
        self.label.setMinimumHeight(200)

    def draw(self, history: list[dict], dice_before: float | None = None) -> None:
        """Redraw from the epoch rows.

        Parameters
        ----------
        history : list of dict
            Epoch rows (``epoch``, ``train_loss``, ``val_mean_dice``).
        dice_before : float, optional
            The base model's held-back Dice (a dotted line).
        """
        from matplotlib.ticker import MaxNLocator
        from qtpy.QtGui import QImage, QPixmap

        ax, bx = self.ax_loss, self.ax_dice
        ax.clear()
        bx.clear()
        ep = [r.get("epoch") for r in history]
        loss = [r.get("train_loss") for r in history]
        vd = [(r.get("epoch"), r.get("val_mean_dice")) for r in history if r.get("val_mean_dice") is not None]
        if ep:
            ax.plot(ep, loss, "o-", color="#4363d8", label="training loss")
        if vd:
            bx.plot([e for e, _ in vd], [d for _, d in vd], "s-", color="#e6194b", label="held-back Dice")
        if dice_before is not None:
            bx.axhline(dice_before, color="#e6194b", linestyle=":", linewidth=1, label="base")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
        if ep:
            ax.set_xlim(min(ep) - 0.5, max(ep) + 0.5)  # one epoch: integer ticks, not 0.94 ... 1.05
        bx.yaxis.set_label_position("right")  # clear() moves a twin's axis back to the left
        bx.yaxis.tick_right()
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss", color="#4363d8", fontsize=8)
        bx.set_ylabel("held-back Dice (dots: base)", color="#e6194b", fontsize=8)
        bx.set_ylim(0, 1)
        ax.set_title("fine-tuning", fontsize=9)
        canvas = self.figure.canvas
        canvas.draw()
        w, h = canvas.get_width_height()
        buf = bytes(canvas.buffer_rgba())
        img = QImage(buf, w, h, 4 * w, QImage.Format_RGBA8888).copy()
        self.label.setPixmap(QPixmap.fromImage(img))
