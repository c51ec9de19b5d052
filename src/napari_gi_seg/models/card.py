"""Model cards: a Markdown page that travels with every registered model.

:func:`model_card` writes it from the spec alone (plus, optionally, evaluation
summaries from ``napari-gi-seg evaluate --json``), so the trainer, ``finetune``,
patient adaptation and the bundled model all get the same sections (after Mitchell et
al., "Model Cards for Model Reporting", FAT* 2019):

1. what the model is (network, input, classes);
2. **intended use** and the statement that it is **not a medical device**;
3. the **frame it expects** (orientation and spacing; from the spec's frame fields when
   it has them, else the training data's frame);
4. **training data**, with its licence and citation (:data:`DATA_SOURCES`, matched on the
   dataset path recorded in ``spec.training``);
5. **per-organ metrics, each with where it was measured** (validation patients that
   chose the epoch, fine-tune hold-back, adaptation slices, independent evaluations).

Regenerate a registered model's card with ``python -m napari_gi_seg.models.card
FOLDER [--evaluation SUMMARY.json --where TEXT]`` (weights are not touched).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path, PurePath

from .spec import ModelSpec

__all__ = ["headline_metric", "model_card", "write_model_card", "DATA_SOURCES"]

#: Facts about the public datasets models are trained on, keyed by a token of the
#: dataset path recorded in ``spec.training["dataset"]``.
DATA_SOURCES: dict[str, dict[str, str]] = {
    "chaos_mr_dicom": {
        "name": "CHAOS - Combined (CT-MR) Healthy Abdominal Organ Segmentation, MR T2-SPIR and T1-DUAL "
        "(in-phase and opposed-phase) series as the organisers distribute them (original anonymised DICOM, "
        "native geometry, Ground PNGs with the challenge's manual labels)",
        "licence": "CC BY-SA 4.0 (Zenodo record 3431873); the weights are a derived work and carry the same "
        "attribution and share-alike terms",
        "citation": 'Kavur A.E. et al., "CHAOS Challenge - combined (CT-MR) Healthy Abdominal Organ Segmentation", '
        "Medical Image Analysis 69 (2021) 101950",
        "frame": "the DICOM series' own geometry: axial or oblique, 256-320 px matrices, 1.36-2.03 mm pixels, "
        "5.5-9 mm slice spacing",
    },
    "chaos": {
        "name": "CHAOS - Combined (CT-MR) Healthy Abdominal Organ Segmentation, MR T2-SPIR series with the "
        "challenge's manual labels (as resampled to 1.25 x 1.25 x 7.7 mm in the public shenqq377/Q-Net repository)",
        "licence": "CC BY-SA 4.0 (Zenodo record 3431873); the weights are a derived work and carry the same "
        "attribution and share-alike terms",
        "citation": 'Kavur A.E. et al., "CHAOS Challenge - combined (CT-MR) Healthy Abdominal Organ Segmentation", '
        "Medical Image Analysis 69 (2021) 101950",
        "frame": "axial slices, NIfTI voxel axes (i, j, k) = (L, A, S) (nibabel axis codes), "
        "spacing 1.25 x 1.25 x 7.7 mm (x, y, z)",
    },
    "uw-madison": {
        "name": "UW-Madison GI Tract Image Segmentation (Kaggle 2022), serial abdominal MRI of MR-Linac "
        "patients with manual large bowel, small bowel and stomach labels",
        "licence": "Kaggle competition data (\u00a9 original authors, competition rules; no open data licence "
        "found): research use only, check the terms before sharing weights",
        "citation": 'Lee S.L. et al., "Dataset for gastrointestinal tract segmentation on serial MRIs for '
        'abdominal tumor radiotherapy", Data in Brief 57 (2024) 111159',
        "frame": "axial 2D slices as stored in the PNGs (266 x 266 to 360 x 310 px, 1.5 mm in-plane), "
        "3 mm slice spacing",
    },
}
DATA_SOURCES["uwmgi"] = DATA_SOURCES["uw-madison"]

INTENDED_USE = (
    "Research and education: a first draft of organ contours on abdominal MRI, to be reviewed and corrected "
    "slice by slice by a qualified person in napari before any use. Not for diagnosis, treatment planning or "
    "any clinical decision without that review; not validated on data unlike its training data (other "
    "sequences, field strengths, children, anatomy after surgery)."
)
NOT_A_DEVICE = (
    "**Not a medical device.** This model and the napari-gi-seg software are not certified, CE-marked or "
    "FDA-cleared for clinical use; they come with no warranty (see the licence)."
)


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
        slices)")`` for a fine-tuned one; for a copy adapted to one scan
        (``metrics["adaptation"]``) its Dice on the corrected slices it was tuned on,
        said to be no accuracy estimate, never the parent's validation figure that its
        metrics carry; ``(None, "no metrics")`` otherwise.
    """
    m = spec.metrics or {}
    ad = m.get("adaptation")
    if isinstance(ad, dict) and isinstance(ad.get("dice_after"), (int, float)):
        # a copy adapted to one scan: its only own figure is on the slices it was tuned on;
        # the parent's validation (copied into its metrics) is never shown as the child's
        n = len(ad.get("slices") or [])
        where = f"Dice on the {n} corrected slices of one scan it was adapted on (trained on: not an accuracy estimate)"
        if isinstance(ad.get("dice_before"), (int, float)):
            where += f"; parent {spec.parent}: {ad['dice_before']:.3f} on the same slices"
        return float(ad["dice_after"]), where
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
        if ft.get("new_classes"):  # grown: the parent lacks the new classes, its mean is over the old ones
            n_cases = ft.get("n_cases") or {}
            new = ", ".join(f"{c} on {n_cases.get(c, 0)} case(s)" for c in ft["new_classes"])
            change = ", ".join(f"{c} {d:+.3f}" for c, d in (ft.get("old_class_change") or {}).items())
            where += f"; new structure(s) scored: {new}; old classes vs parent {ft.get('base', spec.parent)}: "
            where += change or "not measured"
        elif isinstance(before, (int, float)):
            where += f"; parent {ft.get('base', spec.parent)}: {before:.3f} on the same data"
        return float(ft["dice_after"]), where
    v = m.get("validation")
    if isinstance(v, dict) and isinstance(v.get("mean_dice"), (int, float)):
        if v.get("measured_on"):
            return float(v["mean_dice"]), f"validation Dice on {v['measured_on']}"
        pts = v.get("patients") or []
        ds = _dataset_name((spec.training or {}).get("dataset"))
        return float(v["mean_dice"]), f"validation Dice on {len(pts)} held-out patient(s) of {ds}"
    cv = m.get("cross_validation")
    if isinstance(cv, dict) and isinstance(cv.get("mean_dice"), (int, float)):
        return float(cv["mean_dice"]), f"cross-validation Dice ({cv.get('measured_on', 'recipe estimate')})"
    if isinstance(m.get("mean_dice"), (int, float)):
        return float(m["mean_dice"]), "mean Dice (where it was measured is not recorded)"
    return None, "no metrics"


def data_source(spec: ModelSpec) -> dict[str, str] | None:
    """The :data:`DATA_SOURCES` entry for the dataset in ``spec.training`` (or its
    parent's, recorded by fine-tuning), or ``None``."""
    path = str((spec.training or {}).get("dataset", "")).lower()
    for token, src in DATA_SOURCES.items():
        if token in path:
            return src
    return None


def _frame_lines(spec: ModelSpec, src: dict[str, str] | None) -> list[str]:
    """The frame section: the spec's :class:`~napari_gi_seg.models.spec.ModelFrame`
    (orientation, in-plane target spacing, the ranges it was trained on) and how the
    engine feeds slices."""
    lines = [
        f"- input: 2.5D, slice offsets {list(spec.context_offsets)} along the slice axis (clamped at the ends), "
        f"{spec.input_size[0]} x {spec.input_size[1]} px; {spec.normalisation} normalisation per volume "
        f"(percentiles {list(spec.percentiles)})",
    ]
    f = getattr(spec, "frame", None)
    if f is not None:
        lines.append(
            f"- frame (`spec.frame`): orientation {''.join(f.axcodes)} (nibabel axis codes of the voxel axes x, y, z; "
            f"every input is reoriented to it), in-plane spacing {f.spacing_mm[0]:g} x {f.spacing_mm[1]:g} mm "
            "(every slice is resampled to it, then padded or cropped to the input size)"
        )
        for name, what in (("spacing_range_mm", "voxel spacing (mm)"), ("fov_range_mm", "field of view (mm)")):
            rng = getattr(f, name, None)
            if rng:
                lines.append(
                    f"- trained on {what}: "
                    + ", ".join(f"{k} {v[0]:g}-{v[1]:g}" for k, v in rng.items())
                    + " (inputs outside get a warning)"
                )
    else:
        lines.append("- the spec records no frame: slices are fed as the reader gives them, without resampling")
    if src:
        lines.append(f"- training data: {src['frame']}")
    return lines


def _metric_tables(spec: ModelSpec, evaluations: Sequence[tuple[str, dict]]) -> list[str]:
    m = spec.metrics or {}
    names = [c.name for c in spec.classes]
    out: list[str] = []

    def table(title: str, where: str, cols: dict[str, dict[str, float]], mean: dict[str, float] | None = None):
        heads = list(cols)
        digits = {h: 1 if h in ("hd95_mm", "ravd", "assd_mm") else 3 for h in heads}
        out.extend([f"### {title}", "", where, "", "| organ | " + " | ".join(_HEADS.get(h, h) for h in heads) + " |"])
        out.append("|---|" + "---:|" * len(heads))
        for n in names:
            out.append(f"| {n} | " + " | ".join(_fmt(cols[h].get(n), digits[h]) for h in heads) + " |")
        if mean:
            out.append("| **mean** | " + " | ".join(f"**{_fmt(mean.get(h), digits[h])}**" for h in heads) + " |")
        out.append("")

    v = m.get("validation") or {}
    if v.get("per_class"):
        pts = ", ".join(map(str, v.get("patients") or []))
        table(
            "Validation",
            f"3D Dice on the whole volumes of the held-out patients {pts} (never trained on; the kept epoch was "
            "chosen on them, so slightly optimistic).",
            {"dice": {k: d.get("dice") for k, d in v["per_class"].items()}},
            {"dice": v.get("mean_dice")},
        )
    cv = m.get("cross_validation") or {}
    if cv.get("per_class"):
        table(
            "Cross-validation (estimate for unseen patients)",
            f"{cv.get('measured_on', '')} Mean +- sd over patients; an estimate of the recipe, not of these "
            "weights, which saw every patient.",
            {
                "dice": {k: d.get("dice") for k, d in cv["per_class"].items()},
                "sd": {k: d.get("sd") for k, d in cv["per_class"].items()},
            },
            {"dice": cv.get("mean_dice"), "sd": cv.get("sd")},
        )
    for seq, s in (cv.get("per_sequence") or {}).items():
        table(
            f"Cross-validation, {seq}",
            f"The same cross-validation, the {s.get('n', '?')} held-out {seq} series only. Mean +- sd over series.",
            {
                "dice": {k: d.get("dice") for k, d in s["per_class"].items()},
                "sd": {k: d.get("sd") for k, d in s["per_class"].items()},
            },
            {"dice": s.get("mean_dice"), "sd": s.get("sd")},
        )
    for label, summary in evaluations:
        pc = summary.get("per_class") or {}
        metrics = [
            k for k in ("dice", "hd95_mm", "ravd", "assd_mm", "kaggle_score") if any(k in d for d in pc.values())
        ]
        table(
            "Evaluation",
            label,
            {k: {n: d.get(k) for n, d in pc.items()} for k in metrics},
            {k: summary.get(f"mean_{k}") for k in metrics},
        )
    f = m.get("finetune") or {}
    if f.get("per_class_after"):
        where = headline_metric(spec)[1]
        worse = " **Worse than the parent; registered on an explicit choice.**" if f.get("worse") else ""
        cols = {"before": f.get("per_class_before") or {}, "after": f["per_class_after"]}
        if f.get("new_classes"):
            cols["held-back cases"] = f.get("n_cases") or {}
            new = ", ".join(f"`{n}`" for n in f["new_classes"])
            taught = ", ".join(f"{n} on {k} case(s)" for n, k in (f.get("annotated_cases") or {}).items())
            where += (
                f". Structure(s) {new} added by fine-tuning (annotated: {taught}); each class is scored only on "
                f"the held-back cases that annotate it; an old class down by more than "
                f"{f.get('old_class_tolerance', 0.02)} blocks registration unless chosen"
            )
        table(
            "Fine-tuning",
            f"From `{f.get('base')}`: {where}; the parent (before) and this model (after).{worse}",
            cols,
            {"before": f.get("dice_before"), "after": f.get("dice_after")},
        )
    a = m.get("adaptation") or {}
    if a.get("per_class_after"):
        table(
            "Patient adaptation",
            f"3D Dice on the {len(a.get('slices', []))} corrected slices it was tuned on (not an estimate of its "
            "accuracy elsewhere; docs/benchmarks.md measures the other slices).",
            {"before": a.get("per_class_before") or {}, "after": a["per_class_after"]},
            {"before": a.get("dice_before"), "after": a.get("dice_after")},
        )
    if not out:
        out = ["No measured metrics recorded in the spec.", ""]
    return out


_HEADS = {
    "dice": "Dice",
    "sd": "sd",
    "hd95_mm": "HD95 (mm)",
    "ravd": "RAVD (%)",
    "assd_mm": "ASSD (mm)",
    "kaggle_score": "Kaggle score",
}


def _fmt(x, digits: int = 3) -> str:
    return "-" if x is None else (f"{x:.{digits}f}" if isinstance(x, (int, float)) else str(x))


def model_card(spec: ModelSpec, evaluations: Sequence[tuple[str, dict]] = ()) -> str:
    """A Markdown model card for ``spec``.

    Parameters
    ----------
    spec
        The model's spec (classes, input, training record, metrics).
    evaluations
        ``(where it was measured, summary)`` pairs; ``summary`` as written by
        ``napari-gi-seg evaluate --json`` (``per_class.<name>.<metric>``, ``mean_<metric>``).

    Returns
    -------
    str
        The card, ending with a newline. Holds no patient identifiers: only patient
        ids of the public training set, figures and the recipe.
    """
    t = spec.training or {}
    src = data_source(spec)
    lines = [
        f"# {spec.key}",
        "",
        spec.description or "",
        "",
        "## Model",
        "",
        f"- network: {spec.architecture} / {spec.encoder} "
        f"({'MONAI preset' if spec.architecture.startswith('monai.') else 'segmentation-models-pytorch'}), "
        "weights in `model.safetensors` (never pickled)",
        f"- classes: {', '.join(f'{c.index} {c.name}' for c in spec.classes)} ({spec.activation})",
        f"- parent: {spec.parent or 'none (trained from scratch)'}",
        "- left-right flip augmentation: "
        + (
            f"yes, lateralised classes {'kept (contextual)' if spec.flip_labels == 'keep' else 'swapped'} "
            "on flipped images (flip TTA allowed)"
            if spec.flip_augmented
            else "no (flip TTA refused)"
        ),
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        NOT_A_DEVICE,
        "",
        "## Frame it expects",
        "",
        *_frame_lines(spec, src),
        "",
        "## Training data",
        "",
    ]
    if src:
        lines += [f"- data: {src['name']}", f"- licence: {src['licence']}", f"- cite: {src['citation']}"]
    else:
        lines.append(f"- data: {_dataset_name(t.get('dataset'))} (no licence on record: check it before sharing)")
    if t.get("train_patients") is not None:
        lines.append(f"- training patients ({len(t['train_patients'])}): {', '.join(map(str, t['train_patients']))}")
    if t.get("val_patients"):
        lines.append(f"- validation patients ({len(t['val_patients'])}): {', '.join(map(str, t['val_patients']))}")
    if spec.data_fingerprint:
        lines.append(f"- data fingerprint: {spec.data_fingerprint}")
    if t.get("soup"):
        runs = "; ".join(
            f"{r.get('optimiser_steps')} steps, {r.get('minutes')} min"
            + (f", inverted-intensity samples p {r['invert_intensity']}" if r.get("invert_intensity") else "")
            for r in t["soup"]
        )
        lines.append(
            f"- weights: the uniform average of {len(t['soup'])} runs from the same starting weights "
            f"(a model soup, Wortsman et al., ICML 2022): {runs}; on {t.get('device')} ({t.get('host')})"
        )
    elif t.get("epochs_run") is not None:
        lines.append(
            f"- run: {t.get('epochs_run')} epochs, {t.get('minutes')} min on {t.get('device')} ({t.get('host')})"
        )
    lines += ["", "## Metrics", "", *_metric_tables(spec, evaluations)]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_model_card(folder: str | Path, evaluations: Sequence[tuple[str, dict]] = ()) -> Path:
    """(Re)write ``folder/MODEL_CARD.md`` from ``folder/spec.json`` (weights untouched).
    Returns the card's path. Raises ``ValueError`` for an invalid spec."""
    from .._atomic import write_text

    folder = Path(folder)
    return write_text(folder / "MODEL_CARD.md", model_card(ModelSpec.load(folder / "spec.json"), evaluations))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Regenerate a model folder's MODEL_CARD.md from its spec.json")
    p.add_argument("folder")
    p.add_argument("--evaluation", action="append", default=[], help="summary JSON of `napari-gi-seg evaluate --json`")
    p.add_argument("--where", action="append", default=[], help="where each --evaluation was measured (same order)")
    a = p.parse_args(argv)
    if len(a.where) != len(a.evaluation):
        p.error("give one --where per --evaluation")
    evs = [(w, json.loads(Path(e).read_text())) for w, e in zip(a.where, a.evaluation)]
    print(write_model_card(a.folder, evs), file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
