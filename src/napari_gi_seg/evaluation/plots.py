"""Plots of training and evaluation figures (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_history"]


def plot_history(history: list[dict], path: str | Path) -> Path:
    """Training curve PNG: training loss and validation mean Dice per epoch.

    Parameters
    ----------
    history : list of dict
        Epoch rows as the trainer writes them (``epoch``, ``train_loss`` and, on
        validated epochs, ``val_mean_dice``).
    path : str or Path
        The PNG to write (600 x 350 px).

    Returns
    -------
    Path
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ep = [r["epoch"] for r in history]
    ax.plot(ep, [r["train_loss"] for r in history], label="train loss", color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    vd = [(r["epoch"], r["val_mean_dice"]) for r in history if r.get("val_mean_dice") is not None]
    if vd:
        ax2 = ax.twinx()
        ax2.plot(*zip(*vd), label="val mean Dice", color="tab:orange")
        ax2.set_ylabel("validation mean Dice")
        ax2.set_ylim(0, 1)
    ax.set_title("training curve")
    fig.tight_layout()
    from .._atomic import atomic_path

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path
