"""What a model's figures mean: the headline Dice with where it was measured, and
the Markdown model card written beside the weights.

A validation Dice on held-out patients and a fine-tune's Dice on held-back slices of
the same patient are different figures; :func:`headline_metric` says which one a
spec carries so that ``napari-gi-seg models`` never puts them side by side unlabelled.
"""

from __future__ import annotations

from pathlib import PurePath

from .spec import ModelSpec

__all__ = ["headline_metric", "model_card"]


def _dataset_name(value) -> str:
    return PurePath(str(value)).name if value else "an unnamed dataset"


def headline_metric(spec: ModelSpec) -> tuple[float | None, str]:
    """The model's headline mean Dice and a phrase saying where it was measured.

    Parameters
    ----------
    spec : ModelSpec
        A registered model's spec (``spec.metrics`` as the trainer and
        :func:`~napari_gi_seg.training.finetune.finetune` write it).

    Returns
    -------
    (float or None, str)
        ``(0.887, "validation Dice on 4 held-out patients of chaos_mr_t2spir")`` for a
        trained model; ``(0.91, "held-back Dice on 9 slices of 1 patient of
        Dataset501_Corrections (slice-level; parent chaos-t2spir:1: 0.90 on the same
        slices)")`` for a fine-tuned one; ``(None, "no metrics")`` otherwise.
    """
    m = spec.metrics or {}
    ft = m.get("finetune")
    if isinstance(ft, dict) and isinstance(ft.get("dice_after"), (int, float)):
        ds = _dataset_name(ft.get("dataset") or (spec.training or {}).get("dataset"))
        held = ft.get("held_back")
        if ft.get("split") == "slice" and isinstance(held, dict):
            n = sum(len(v) for v in held.values())
            where = f"held-back Dice on {n} slices of {len(held)} case(s) of {ds} (slice-level)"
        else:
            n = len(held) if isinstance(held, (list, tuple)) else 0
            where = f"held-back Dice on {n} patient(s) of {ds} (patient-level)"
        before = ft.get("dice_before")
        if isinstance(before, (int, float)):
            where += f"; parent {ft.get('base', spec.parent)}: {before:.3f} on the same data"
        return float(ft["dice_after"]), where
    v = m.get("validation")
    if isinstance(v, dict) and isinstance(v.get("mean_dice"), (int, float)):
        if v.get("measured_on"):
            return float(v["mean_dice"]), f"validation Dice on {v['measured_on']}"
        pts = v.get("patients") or []
        ds = _dataset_name((spec.training or {}).get("dataset"))
        return float(v["mean_dice"]), f"validation Dice on {len(pts)} held-out patient(s) of {ds}"
    if isinstance(m.get("mean_dice"), (int, float)):
        return float(m["mean_dice"]), "mean Dice (where it was measured is not recorded)"
    return None, "no metrics"


def model_card(spec: ModelSpec) -> str:
    """A Markdown model card from the spec: architecture, classes, parent, training
    data, run and the validation (and fine-tune) figures with where they were measured.

    Parameters
    ----------
    spec : ModelSpec
        The model's spec (``spec.training`` and ``spec.metrics`` filled by the trainer).

    Returns
    -------
    str
        Markdown text ending with a newline.
    """
    t = spec.training or {}
    lines = [
        f"# {spec.key}",
        "",
        spec.description or "",
        "",
        f"- architecture: {spec.architecture} / {spec.encoder}, 2.5D offsets {list(spec.context_offsets)}, "
        f"input {spec.input_size[0]}x{spec.input_size[1]} px",
        f"- classes: {', '.join(f'{c.index} {c.name}' for c in spec.classes)} ({spec.activation})",
        f"- parent: {spec.parent or 'none (trained from scratch)'}",
        f"- training data: {_dataset_name(t.get('dataset'))} ({t.get('layout')}), "
        f"train patients {t.get('train_patients')}, fingerprint {spec.data_fingerprint}",
        f"- run: {t.get('epochs_run')} epochs, {t.get('minutes')} min on {t.get('device')} ({t.get('host')})",
        "",
    ]
    v = (spec.metrics or {}).get("validation") or {}
    if v.get("mean_dice") is not None:
        lines += [f"## Validation (patients {v.get('patients')})", "", "| class | Dice |", "|---|---|"]
        lines += [f"| {k} | {m['dice']:.3f} |" for k, m in v["per_class"].items()]
        lines += [f"| **mean** | **{v['mean_dice']:.3f}** |", ""]
    ft = (spec.metrics or {}).get("finetune")
    if isinstance(ft, dict) and ft.get("dice_after") is not None:
        value, where = headline_metric(spec)
        lines += [
            "## Fine-tuning",
            "",
            f"From `{ft.get('base')}`; {where}.",
            f"Mean Dice {ft['dice_before']:.3f} (parent) -> {ft['dice_after']:.3f} (this model)"
            + (" **worse than the parent; registered on an explicit choice**" if ft.get("worse") else "")
            + ".",
            "",
            "| class | parent | this model |",
            "|---|---|---|",
        ]
        pb, pa = ft.get("per_class_before", {}), ft.get("per_class_after", {})
        lines += [f"| {k} | {pb.get(k, float('nan')):.3f} | {pa.get(k, float('nan')):.3f} |" for k in pa]
        lines.append("")
    return "\n".join(lines) + "\n"
