"""``napari-gi-seg demo``: the clinician's loop on the CHAOS sample in one command.

With a display: opens napari with the CHAOS T2-SPIR sample (patient 1), docks the
Segment, Correct-and-review, Export and Fine-tune widgets and starts segmenting
with the default model; the manual labels are kept as a hidden layer
(``"<image> ground truth"``) for comparison.

Headless (``--headless``, or no display): load -> segment -> Dice against the
sample's manual labels, per organ (:func:`napari_gi_seg.evaluation.metrics.dice_per_class`;
classes are matched by name between the model spec and the sample), writes the
labels as NIfTI with the source affine and an overlay PNG, and prints the table.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_path
from ._privacy import recorded_among


def has_display() -> bool:
    """True when a GUI can open (always on macOS/Windows; X11/Wayland on Linux)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def load_sample():
    """The CHAOS sample as ``(image Volume, ground-truth labels (z, y, x) uint8,
    {label value: organ name})`` via the plugin's sample-data command."""
    from ._sample_data import chaos_sample
    from .io.volume import volume_from_layer_metadata

    (img, ikw, _), (lab, lkw, _) = chaos_sample()
    image = volume_from_layer_metadata(np.asarray(img), ikw["metadata"], ikw.get("scale"))
    image.metadata["source_path"] = ikw["metadata"].get("source_path", "image_1.nii.gz")
    names = {int(k): str(v) for k, v in lkw["metadata"]["class_names"].items()}
    return image, np.asarray(lab, dtype=np.uint8), names


def overlay_png(
    path: Path,
    image: np.ndarray,
    labels: np.ndarray,
    truth: np.ndarray | None,
    colours: dict[int, str],
    title: str = "",
    n_panels: int = 3,
    orientation: tuple[str, str] | None = None,
    class_names: dict[int, str] | None = None,
) -> Path:
    """Save ``n_panels`` axial slices (spread over the labelled range) with the
    prediction filled in the class colours and the ground truth as white contours.

    Parameters
    ----------
    path: the PNG to write (atomically: temp file, then rename).
    image, labels, truth: ``(z, y, x)`` image, predicted labels, manual labels (or ``None``).
    colours: ``{label value: "#rrggbb"}``.
    title: the figure's title.
    n_panels: number of slices shown.
    orientation: ``(vertical, horizontal)`` from
        :func:`napari_gi_seg.evaluation.overlay.display_orientation`: the slices are shown
        radiologically (anterior up, patient right on the left); ``None`` as stored.
    class_names: ``{label value: organ}`` for the legend (default: ``"class <v>"``).

    Returns
    -------
    ``path``.
    """
    import matplotlib

    from .evaluation.overlay import add_legend, to_display

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    zs = np.nonzero(labels.reshape(labels.shape[0], -1).any(1))[0]
    if zs.size == 0:
        zs = np.arange(labels.shape[0])
    picks = [int(zs[int(round(q * (zs.size - 1)))]) for q in np.linspace(0.2, 0.8, n_panels)]
    k = int(max(colours, default=0))
    cols = [(0, 0, 0, 0)] + [matplotlib.colors.to_rgba(colours.get(i, "#ffffff"), 0.45) for i in range(1, k + 1)]
    cmap = ListedColormap(cols)
    fig, axes = plt.subplots(1, n_panels, figsize=(4 * n_panels, 4.7), dpi=100)
    lo, hi = np.percentile(image, (0.5, 99.5))
    for ax, z in zip(np.atleast_1d(axes), picks):
        ax.imshow(to_display(image[z], orientation), cmap="gray", vmin=lo, vmax=hi)
        lab = to_display(np.where(labels[z] <= k, labels[z], 0), orientation)
        ax.imshow(lab, cmap=cmap, vmin=0, vmax=k, interpolation="nearest")
        if truth is not None:
            tz = to_display(truth[z], orientation)
            for c in np.unique(tz):
                if c:
                    ax.contour(tz == c, levels=[0.5], colors="white", linewidths=0.7)
        ax.set_title(f"slice z={z}", fontsize=9)
        ax.axis("off")
    if orientation is not None:
        np.atleast_1d(axes)[0].text(
            0.02, 0.5, "R", color="yellow", transform=np.atleast_1d(axes)[0].transAxes, fontsize=9, va="center"
        )
    names = class_names or {i: f"class {i}" for i in colours}
    add_legend(fig, names, colours, {"manual (white contour)": "0.3"} if truth is not None else None)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


def run_headless(
    out_dir: str | Path, model: str | None = None, device: str = "auto", tta: bool = False, quiet: bool = False
) -> dict[str, Any]:
    """Segment the CHAOS sample, score it and write ``<out>/image_1_segmentation.nii.gz``
    and ``<out>/image_1_overlay.png``.

    Returns ``{"model", "dice": {organ: Dice}, "mean_dice", "seconds", "labels_path",
    "overlay_path", "device", "seen_in_training"}`` (``seen_in_training``: patient 1
    is among the model's training patients, so its Dice is a fit, not an estimate).
    Raises ``LookupError`` when the model is not
    registered (the message lists the registered ones).
    """
    from .engine.inference import segment_volume
    from .evaluation.evaluate import match_classes
    from .evaluation.metrics import dice_per_class
    from .io.nifti import write_nifti
    from .models.registry import get_entry, load_model

    out = Path(out_dir)
    image, truth, truth_names = load_sample()
    entry = get_entry(model)
    spec, net = load_model(entry.key, device="cpu")
    res = segment_volume(image, spec, net, device=device, tta=tta)
    dice: dict[str, float] = {}
    try:
        pairs = match_classes(spec.class_names, truth_names)
    except ValueError:  # a model of other organs: no Dice, still the labels and overlay
        pairs = []
    for m in pairs:
        mi, ti, name = m.model_index, m.dataset_value, m.name
        dice[name] = dice_per_class(
            (res.labels == mi).astype(np.uint8), (truth == ti).astype(np.uint8), [1], ignore_index=None
        )[1]
    mean = float(np.mean(list(dice.values()))) if dice else float("nan")
    labels_path = write_nifti(image, out / f"{image.name}_segmentation.nii.gz", res.labels)
    from .evaluation.overlay import display_orientation

    overlay = overlay_png(
        out / f"{image.name}_overlay.png",
        image.data,
        res.labels,
        truth,
        {c.index: c.colour for c in spec.classes},
        title=f"{entry.key} on CHAOS T2-SPIR patient 1: mean Dice {mean:.3f} (fill: model, white: manual)",
        orientation=display_orientation(image),
        class_names={c.index: c.name for c in spec.classes},
    )
    result = {
        "model": entry.key,
        "dice": dice,
        "mean_dice": mean,
        "seconds": res.seconds,
        "device": res.device,
        "labels_path": str(labels_path),
        "overlay_path": str(overlay),
        # the sample is CHAOS patient 1: say so when the model trained on it
        "seen_in_training": bool(recorded_among((spec.training or {}).get("train_patients"), ["1"])),
    }
    if not quiet:
        print(
            f"model {entry.key} on CHAOS T2-SPIR patient 1 ({image.shape[0]} slices, {res.device}, {res.seconds:.1f} s)"
        )
        w = max([len(n) for n in dice] + [9])
        for n, d in dice.items():
            print(f"  {n.ljust(w)}  Dice {d:.4f}")
        print(f"  {'mean'.ljust(w)}  Dice {mean:.4f}")
        if result["seen_in_training"]:
            print(
                f"  (patient 1 is one of {entry.key}'s training patients: this shows the pipeline works, "
                "not the accuracy on a new scan; the model card gives that estimate)"
            )
        print(f"labels:  {labels_path}\noverlay: {overlay}")
    return result


def main(
    headless: bool = False,
    out: str | Path | None = None,
    model: str | None = None,
    device: str = "auto",
    tta: bool = False,
) -> int:
    """Entry point of ``napari-gi-seg demo``; returns the exit status."""
    if headless or not has_display():
        run_headless(out or "demo-output", model=model, device=device, tta=tta)
        return 0
    import napari

    from .models.registry import get_entry

    get_entry(model)  # a clear error before any window opens
    from ._qt.demo import open_demo_viewer

    open_demo_viewer(model=model, device=device)
    napari.run()
    return 0
