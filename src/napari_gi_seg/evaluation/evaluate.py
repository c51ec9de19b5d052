"""Evaluate a registered model on a labelled dataset: per-class and per-case Dice,
IoU, precision, recall, HD95 (mm), the radiotherapy contour metrics (surface Dice at
a stated tolerance, mean surface distance, added path length per organ and slice),
the UW-Madison Kaggle Hausdorff term and score, as JSON, a printed table and a
Markdown report with plots.

Used by ``napari-gi-seg evaluate DATASET [--model NAME] ...``; metric definitions and
empty-mask conventions are those of :mod:`napari_gi_seg.evaluation.metrics`.

Classes are matched **by name**: each dataset class whose name is one of the model's
classes is scored (dataset label value -> model class index); dataset classes the
model does not know are listed in ``skipped_classes``; no common name is an error.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._atomic import write_text
from ..datasets import IGNORE_INDEX, DatasetFormatError, SegDataset, detect_layout, open_dataset
from ..paths import public_path
from ..progress import ProgressCallback, emit
from .metrics import SURFACE_DICE_TOLERANCE_MM, aggregate, evaluate_case
from .plots import agg_pyplot, save_png


@dataclass
class ClassMatch:
    """One scored class: its ``name``, its label value (or channel + 1) in the dataset
    and its index in the model spec."""

    name: str
    dataset_value: int
    model_index: int


@dataclass
class Evaluation:
    """Result of :func:`evaluate_dataset`.

    ``summary``: JSON-ready dict (see :func:`evaluate_dataset`). ``slices``:
    ``{case_id: (image (y, x) float32, reference (y, x) uint8, prediction (y, x) uint8, z)}``,
    the mid slice of the reference organs per case, labels in model class indices
    (for the report's overlay images), flipped for display in the radiological
    convention (:mod:`napari_gi_seg.evaluation.overlay`). ``class_names``:
    ``{model index: organ}`` of the evaluated classes (the overlays' legend).
    """

    summary: dict
    slices: dict[str, tuple] = field(default_factory=dict)
    colours: dict[int, str] = field(default_factory=dict)
    class_names: dict[int, str] = field(default_factory=dict)


def match_classes(
    model_classes: Sequence[str] | dict[int, str],
    dataset_classes: Sequence[str] | dict[int, str],
    only: Sequence[str] | None = None,
) -> list[ClassMatch]:
    """Map dataset classes to model classes by name (the one class matcher of the
    package: ``evaluate``, the demo and the fine-tune class check use it).

    Parameters
    ----------
    model_classes : sequence of str or dict
        Names in model index order (index = position + 1) or ``{index: name}``
        (index 0, the background, is ignored).
    dataset_classes : sequence of str or dict
        Names in label-value order (value = position + 1) or ``{value: name}``.
    only : sequence of str, optional
        Restrict to these names.

    Returns
    -------
    list of ClassMatch
        One per shared name, in the dataset's label order.

    Raises
    ------
    ValueError
        When no name is shared (listing both sides), or when a name in ``only`` is not shared.
    """
    mc = dict(model_classes) if isinstance(model_classes, dict) else {i + 1: n for i, n in enumerate(model_classes)}
    dc = (
        dict(dataset_classes)
        if isinstance(dataset_classes, dict)
        else {i + 1: n for i, n in enumerate(dataset_classes)}
    )
    by_name = {n: i for i, n in mc.items() if i != 0}
    out = [ClassMatch(n, v, by_name[n]) for v, n in sorted(dc.items()) if v != 0 and n in by_name]
    if not out:
        raise ValueError(
            f"the dataset's classes {[n for v, n in sorted(dc.items()) if v != 0]} share no name with the model's "
            f"{list(by_name)}; rename them (classes.json / dataset.json) or pick another model"
        )
    if only:
        names = {m.name for m in out}
        bad = [n for n in only if n not in names]
        if bad:
            raise ValueError(
                f"--classes {bad} are not classes of both the model and the dataset (shared: {sorted(names)})"
            )
        out = [m for m in out if m.name in set(only)]
    return out


def _open(dataset, dataset_classes, model_names, sequences=None) -> tuple[SegDataset, bool]:
    if isinstance(dataset, SegDataset):
        return dataset, False
    root = Path(dataset)
    if dataset_classes is None and detect_layout(root) == "nifti-pairs" and not (root / "classes.json").exists():
        # Unnamed label values: assume they follow the model's class order (reported).
        return open_dataset(root, model_names, sequences=sequences), True
    return open_dataset(root, dataset_classes, sequences=sequences), False


def _select_cases(ds: SegDataset, cases: Sequence[str] | None):
    if not cases:
        return ds.cases
    want = [str(c) for c in cases]
    sel = [c for c in ds.cases if c.case_id in want or c.group in want]
    found = {c.case_id for c in sel} | {c.group for c in sel}
    missing = [w for w in want if w not in found]
    if missing:
        raise ValueError(f"{ds.root}: unknown case(s) {missing}; available: {[c.case_id for c in ds.cases][:20]}")
    return sel


def _mid_slice(ref: np.ndarray) -> int:
    fg = (ref != 0) & (ref != IGNORE_INDEX)
    if fg.ndim == 4:
        fg = fg.any(0)
    z = np.nonzero(fg.reshape(fg.shape[0], -1).any(1))[0]
    return int(np.median(z)) if z.size else fg.shape[0] // 2


def evaluate_dataset(
    dataset: str | Path | SegDataset,
    model: str | None = None,
    cases: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    dataset_classes: Sequence[str] | None = None,
    sequences: Sequence[str] | None = None,
    tta: bool = False,
    device: str = "auto",
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
    loaded_model: tuple | None = None,
) -> Evaluation:
    """Segment every case of ``dataset`` with ``model`` and score it.

    Parameters
    ----------
    dataset: a dataset folder of any layout (:func:`~napari_gi_seg.datasets.open_dataset`)
        or an opened :class:`SegDataset`.
    model: registry key ``"name"`` / ``"name:version"``; default: the registry default.
    cases: restrict to these case ids or patient ids (e.g. validation patients).
    classes: restrict to these class names.
    dataset_classes: the dataset's class names in label order, for NIfTI pairs without
        ``classes.json``; when omitted there, the model's class order is assumed
        (``summary["class_names_assumed"] = True``).
    sequences: CHAOS layout only: the contrasts to score (default all).
    tta: left-right flip test-time augmentation. device: ``auto``/``cpu``/``cuda``/``mps``.
    progress: gets an ``"evaluate"`` :class:`~napari_gi_seg.progress.ProgressEvent`
    (``done`` cases of ``total``, ``message`` the case id) before each case.
    loaded_model: ``(spec, network)`` to use instead of loading ``model``.

    Returns
    -------
    :class:`Evaluation` whose ``summary`` holds ``model``, ``dataset``, ``classes``,
    ``mean_dice`` (and ``mean_<metric>`` for every metric), ``per_class.<name>.<metric>``
    (means over cases, NaN -> ``None`` in JSON), ``per_case.<case_id>`` (``mean_dice``,
    ``per_class``), ``seconds``.

    Raises
    ------
    DatasetFormatError / ValueError
        Bad dataset, unknown cases, no class shared by model and dataset.
    ModelNotFoundError
        Unknown model.
    """
    from ..engine.inference import resolve_device, segment_volume
    from ..models import registry
    from .overlay import display_orientation, to_display

    t0 = time.time()
    if loaded_model is not None:
        spec, net = loaded_model
    else:
        spec, net = registry.load_model(model, device="cpu")
    model_names = [c.name for c in spec.classes]
    ds, assumed = _open(dataset, dataset_classes, model_names, sequences)
    matches = match_classes({c.index: c.name for c in spec.classes}, ds.class_names, classes)
    refs = _select_cases(ds, cases)
    if not refs:
        raise DatasetFormatError(f"{ds.root}: no cases to evaluate")
    dev = resolve_device(device)
    names = [m.name for m in matches]
    per_case, slices = {}, {}
    for i, ref in enumerate(refs):
        emit(progress, "evaluate", i, len(refs), ref.case_id)
        c = ref.load()
        res = segment_volume(
            c.image, spec, net, batch_size=batch_size, device=dev, tta=tta, return_probs=spec.activation == "sigmoid"
        )
        tgt = np.asarray(c.target)
        shape = c.image.shape
        pred = np.zeros((len(matches), *shape), np.uint8)
        refm = np.zeros((len(matches), *shape), np.uint8)
        for k, m in enumerate(matches):
            if spec.activation == "sigmoid":
                pred[k] = res.probs[m.model_index - 1] > 0.5
            else:
                pred[k] = res.labels == m.model_index
            if tgt.ndim == 4:
                refm[k] = tgt[m.dataset_value - 1]
            else:
                refm[k] = tgt == m.dataset_value
                refm[k][tgt == IGNORE_INDEX] = IGNORE_INDEX
        r = evaluate_case(pred, refm, c.image.spacing_mm, names, ignore_index=IGNORE_INDEX)
        r["group"] = c.group
        per_case[c.case_id] = r
        z = _mid_slice(refm)
        ref2 = np.zeros(shape[1:], np.uint8)
        pred2 = np.zeros(shape[1:], np.uint8)
        for k, m in enumerate(matches):
            ref2[(refm[k, z] == 1)] = m.model_index
            pred2[pred[k, z] != 0] = m.model_index
        orient = display_orientation(c.image)  # stored as shown: radiological
        slices[c.case_id] = (
            np.ascontiguousarray(to_display(np.asarray(c.image.data[z], np.float32), orient)),
            np.ascontiguousarray(to_display(ref2, orient)),
            np.ascontiguousarray(to_display(pred2, orient)),
            z,
        )
    agg = aggregate(per_case)
    summary = {
        "model": spec.key,
        "dataset": public_path(ds.root),
        "layout": ds.layout,
        "classes": names,
        "skipped_classes": [n for n in ds.class_names if n not in names],
        "class_names_assumed": assumed,
        "tta": bool(tta),
        "device": str(dev),
        "surface_dice_tolerance_mm": SURFACE_DICE_TOLERANCE_MM,
        "n_cases": len(per_case),
        **{k: v for k, v in agg.items() if k != "per_class"},
        "per_class": agg["per_class"],
        "per_case": per_case,
        "seconds": round(time.time() - t0, 2),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return Evaluation(
        summary, slices, {c.index: c.colour for c in spec.classes}, {m.model_index: m.name for m in matches}
    )


# ----------------------------------------------------------------- output
def _clean(o):
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.generic):
        return _clean(o.item())
    return o


def _atomic_write(path: Path, text: str) -> None:
    write_text(path, text)


def write_json(summary: dict, path: str | Path) -> Path:
    """Write the summary as strict JSON (NaN/inf -> ``null``), atomically."""
    path = Path(path)
    _atomic_write(path, json.dumps(_clean(summary), indent=2) + "\n")
    return path


def _f(v, nd=3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{nd}f}"


def format_table(summary: dict) -> str:
    """A plain-text per-organ table (Dice, IoU, precision, recall, HD95 mm, Kaggle HD
    term and score) with a mean row, followed by the number of cases."""
    cols = [
        ("dice", "Dice", 3),
        ("iou", "IoU", 3),
        ("precision", "prec", 3),
        ("recall", "recall", 3),
        ("hd95_mm", "HD95 mm", 1),
        ("surface_dice", "sDice", 3),
        ("msd_mm", "MSD mm", 2),
        ("apl_mm", "APL mm", 0),
        ("kaggle_hd", "kaggleHD", 3),
        ("kaggle_score", "kaggle", 3),
        ("ravd", "RAVD %", 1),
        ("assd_mm", "ASSD mm", 2),
        ("mssd_mm", "MSSD mm", 1),
    ]
    w = max([len("class")] + [len(n) for n in summary["per_class"]] + [len("mean")])
    head = f"{'class':<{w}}  " + "  ".join(f"{h:>8}" for _, h, _ in cols)
    lines = [head, "-" * len(head)]
    for n, m in summary["per_class"].items():
        lines.append(f"{n:<{w}}  " + "  ".join(f"{_f(m.get(k), nd):>8}" for k, _, nd in cols))
    lines.append(f"{'mean':<{w}}  " + "  ".join(f"{_f(summary.get('mean_' + k), nd):>8}" for k, _, nd in cols))
    undefined = {n: m.get("hd95_undefined", 0) for n, m in summary["per_class"].items() if m.get("hd95_undefined")}
    tail = f"{summary['n_cases']} case(s)" + (f", model {summary['model']}" if summary.get("model") else "")
    if summary.get("surface_dice_tolerance_mm") is not None:
        tail += f"; surface Dice (sDice) at {summary['surface_dice_tolerance_mm']:g} mm; APL per case"
    if undefined:
        tail += f"; HD95 undefined (organ missing in prediction or reference) for {undefined}"
    return "\n".join(lines + [tail])


def _colours(spec_colours: dict[int, str] | None, n: int) -> list:
    from matplotlib import colors as mcolors

    base = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6"]
    out = [(0, 0, 0, 0)]
    for i in range(1, n + 1):
        c = (spec_colours or {}).get(i) or base[(i - 1) % len(base)]
        out.append(mcolors.to_rgba(c, 0.45))
    return out


def plot_dice(summary: dict, path: Path) -> None:
    """Box plot with the per-case points (strip) of Dice per class."""
    plt = agg_pyplot()
    names = list(summary["per_class"])
    data = [[pc["per_class"][n]["dice"] for pc in summary["per_case"].values() if n in pc["per_class"]] for n in names]
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 3.5), dpi=100)
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(d)), d, s=14, alpha=0.7, color="tab:blue", zorder=3)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("Dice per case")
    ax.set_title(f"{summary['model']}: Dice per class ({summary['n_cases']} cases)")
    fig.tight_layout()
    save_png(fig, path)


def plot_rt_metrics(summary: dict, path: Path) -> None:
    """Per organ: surface Dice at the stated tolerance, mean surface distance (mm) and
    added path length (mm per case), box plots with the per-case points."""
    plt = agg_pyplot()
    names = list(summary["per_class"])
    tol = summary.get("surface_dice_tolerance_mm")
    panels = [
        ("surface_dice", f"surface Dice at {tol:g} mm" if tol is not None else "surface Dice"),
        ("msd_mm", "mean surface distance (mm)"),
        ("apl_mm", "added path length (mm)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(3 * (1.1 * len(names) + 1.5), 3.6), dpi=100)
    rng = np.random.default_rng(0)
    for ax, (key, label) in zip(axes, panels):
        data = [
            [
                v
                for pc in summary["per_case"].values()
                if n in pc["per_class"]
                for v in [pc["per_class"][n].get(key)]
                if v is not None and math.isfinite(v)
            ]
            for n in names
        ]
        ax.boxplot([d or [np.nan] for d in data], showfliers=False)
        for i, d in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(d)), d, s=12, alpha=0.7, color="tab:blue", zorder=3)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=25)
        ax.set_title(label, fontsize=10)
        if key == "surface_dice":
            ax.set_ylim(0, 1.02)
    fig.suptitle(f"{summary['model']}: contour metrics per organ ({summary['n_cases']} cases)")
    fig.tight_layout()
    save_png(fig, path)


def plot_overlay(
    image: np.ndarray,
    ref: np.ndarray,
    pred: np.ndarray,
    title: str,
    path: Path,
    class_colours: dict[int, str] | None = None,
    class_names: dict[int, str] | None = None,
) -> None:
    """Two panels of one ``(y, x)`` slice (already oriented for display):
    reference and prediction labels over the image, a legend of ``class_names``
    ``{model index: organ}`` in their colours below."""
    from matplotlib.colors import ListedColormap

    from .overlay import add_legend

    plt = agg_pyplot()

    n = int(max(ref.max(initial=0), pred.max(initial=0), max(class_colours or {0: 0}), 1))
    cmap = ListedColormap(_colours(class_colours, n))
    lo, hi = np.percentile(image, (0.5, 99.5))
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2), dpi=100)
    for ax, lab, t in zip(axes, (ref, pred), ("reference", "prediction")):
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        ax.imshow(lab, cmap=cmap, vmin=0, vmax=n, interpolation="nearest")
        ax.set_title(t)
        ax.axis("off")
    if class_names:
        cols = {i: _colours(class_colours, n)[i] for i in range(1, n + 1)}
        add_legend(fig, class_names, {k: (r, g, b) for k, (r, g, b, _) in cols.items()})
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07 if class_names else 0, 1, 1))
    save_png(fig, path)


def write_report(
    ev: Evaluation, path: str | Path, max_overlays: int = 12, class_colours: dict[int, str] | None = None
) -> Path:
    """Markdown report at ``path`` with its images in ``<stem>_files/`` beside it:
    per-class table, per-case table, Dice box/strip plot and the mid-slice overlay of
    up to ``max_overlays`` cases, worst mean Dice first."""
    s = ev.summary
    path = Path(path)
    files = path.with_name(path.stem + "_files")
    files.mkdir(parents=True, exist_ok=True)
    class_colours = class_colours or ev.colours
    plot_dice(s, files / "dice_per_class.png")
    has_rt = any("surface_dice" in m for m in s["per_class"].values())
    if has_rt:
        plot_rt_metrics(s, files / "rt_metrics_per_class.png")
    order = sorted(s["per_case"], key=lambda c: s["per_case"][c]["mean_dice"])
    overlays = []
    for cid in order[:max_overlays]:
        if cid not in ev.slices:
            continue
        img, ref, pred, z = ev.slices[cid]
        fn = f"overlay_{''.join(ch if ch.isalnum() or ch in '-_' else '_' for ch in cid)}.png"
        plot_overlay(
            img,
            ref,
            pred,
            f"{cid}, slice {z}, mean Dice {s['per_case'][cid]['mean_dice']:.3f}",
            files / fn,
            class_colours,
            ev.class_names or None,
        )
        overlays.append((cid, fn))
    rel = files.name
    cols = [
        ("dice", "Dice"),
        ("iou", "IoU"),
        ("precision", "precision"),
        ("recall", "recall"),
        ("hd95_mm", "HD95 (mm)"),
        ("surface_dice", f"surface Dice ({s.get('surface_dice_tolerance_mm', 0):g} mm)"),
        ("msd_mm", "MSD (mm)"),
        ("apl_mm", "APL (mm)"),
        ("kaggle_hd", "Kaggle HD term"),
        ("kaggle_score", "Kaggle score"),
    ]
    L = [
        f"# Evaluation of `{s['model']}`",
        "",
        f"- dataset: `{s['dataset']}` ({s['layout']}), {s['n_cases']} case(s)",
        f"- classes: {', '.join(s['classes'])}"
        + (f" (not in the model, skipped: {', '.join(s['skipped_classes'])})" if s["skipped_classes"] else ""),
        f"- test-time augmentation: {'left-right flip' if s['tta'] else 'none'}; device {s['device']}; {s['seconds']} s; {s['created']}",
    ]
    if s.get("class_names_assumed"):
        L.append("- the dataset does not name its label values; the model's class order was assumed")
    L += [
        "",
        "Definitions and empty-mask conventions: `napari_gi_seg.evaluation.metrics` / docs/training.md "
        "(HD95 via MONAI, both empty = 0 mm, one empty = undefined; surface Dice via MONAI at the stated "
        "tolerance; MSD = symmetric mean surface distance; APL = added path length per case, the reference "
        "contour the model did not provide (Vaassen et al. 2020); Kaggle term = normalised 3D Hausdorff "
        "distance, score = 0.4 Dice(2D) + 0.6 (1 - distance)).",
        "",
        "## Per class (mean ± std over cases)",
        "",
        "| class | " + " | ".join(h for _, h in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for n, m in s["per_class"].items():
        L.append(
            f"| {n} | "
            + " | ".join(
                f"{_f(m.get(k), 1 if k == 'hd95_mm' else 3)} ± {_f(m.get(k + '_std'), 1 if k == 'hd95_mm' else 3)}"
                for k, _ in cols
            )
            + " |"
        )
    L.append(
        "| **mean** | "
        + " | ".join(f"**{_f(s.get('mean_' + k), 1 if k == 'hd95_mm' else 3)}**" for k, _ in cols)
        + " |"
    )
    L += ["", f"![Dice per class]({rel}/dice_per_class.png)", ""]
    if has_rt:
        L += [f"![Contour metrics per organ]({rel}/rt_metrics_per_class.png)", ""]
    L += [
        "## Per case",
        "",
        "| case | patient | mean Dice | "
        + " | ".join(f"Dice {n}" for n in s["classes"])
        + " | "
        + " | ".join(f"HD95 {n} (mm)" for n in s["classes"])
        + " |",
        "|---" * (3 + 2 * len(s["classes"])) + "|",
    ]
    for cid in order:
        pc = s["per_case"][cid]
        L.append(
            f"| {cid} | {pc.get('group', '')} | {pc['mean_dice']:.3f} | "
            + " | ".join(_f(pc["per_class"][n]["dice"]) for n in s["classes"])
            + " | "
            + " | ".join(_f(pc["per_class"][n]["hd95_mm"], 1) for n in s["classes"])
            + " |"
        )
    if overlays:
        L += ["", "## Mid slice of the reference organs (worst cases first)", ""]
        L += [f"![{cid}]({rel}/{fn})" for cid, fn in overlays]
    _atomic_write(path, "\n".join(L) + "\n")
    return path
