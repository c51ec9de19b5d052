"""Validation during training: 3D Dice per class on whole held-out volumes, through
the same engine a user's scan goes through."""

from __future__ import annotations

import numpy as np
import torch

from ..datasets import IGNORE_INDEX, Case
from ..engine.inference import segment_volume
from ..evaluation.metrics import dice_per_class
from ..models.spec import ModelSpec
from ..progress import CancelCallback, ProgressCallback, emit

__all__ = ["validate"]


def validate(
    net: torch.nn.Module,
    spec: ModelSpec,
    cases: list[Case],
    device,
    batch_size: int = 16,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> dict:
    """3D Dice per class on whole validation volumes at their native grid; for
    multi-label (sigmoid) models also the UW-Madison Kaggle score per class.

    Each case is segmented with :func:`~napari_gi_seg.engine.inference.segment_volume`
    (post-processing included, as a user gets it) and scored with
    :func:`~napari_gi_seg.evaluation.metrics.dice_per_class`; voxels with the ignore
    label are left out. Multi-label datasets are scored on the flattened label volume.
    With partial labels, a class is scored only on the cases that annotate it
    (:attr:`~napari_gi_seg.datasets.Case.annotated`; multi-label: channels that are not
    wholly ignored), and ``per_class[name]["n_cases"]`` says on how many.

    Parameters
    ----------
    net : torch.nn.Module
        The network (its train/eval mode is restored afterwards).
    spec : ModelSpec
        Its spec.
    cases : list of Case
        Loaded cases; ``target`` ``(z, y, x)`` uint8 or ``(K, z, y, x)``.
    device : str or torch.device
        Where to run.
    batch_size : int
        Slices per forward pass.
    progress : callable, optional
        Gets a ``"validate"`` :class:`~napari_gi_seg.progress.ProgressEvent` per case.
    cancel : callable, optional
        Polled between cases; cases not scored are left out of the means.

    Returns
    -------
    dict
        ``{"mean_dice": float, "per_class": {name: {"dice": float, "n_cases": int}},
        "per_case": {id: {name: dice}}, "score": float}``; ``mean_dice`` (the mean over the
        classes scored on at least one case) is NaN when no case was scored. Multi-label
        models add ``per_class[name]["kaggle_score"]`` and ``mean_kaggle_score``
        (:func:`~napari_gi_seg.evaluation.metrics.kaggle_score`: 0.4 x mean 2D Dice +
        0.6 x (1 - normalised 3D Hausdorff distance), per channel at probability > 0.5,
        ignore label left out). ``score`` picks the best epoch: the mean Kaggle score for
        multi-label models, else the mean Dice.
    """
    from ..evaluation.metrics import kaggle_score

    was = net.training
    net.eval()
    per_case, kaggle = {}, {k.name: [] for k in spec.classes}
    multilabel = spec.activation == "sigmoid"
    for i, c in enumerate(cases):
        if cancel is not None and cancel():
            break
        res = segment_volume(c.image, spec, net, batch_size=batch_size, device=device, return_probs=multilabel)
        ref = c.target if c.target.ndim == 3 else _flatten_multilabel(c.target, spec)
        scored = _scored_classes(c, spec)
        d = dice_per_class(res.labels, ref, [k.index for k in scored])
        per_case[c.case_id] = {k.name: d[k.index] for k in scored}
        if multilabel and c.target.ndim == 4:
            ignore = (c.target[[k.index - 1 for k in scored]] == IGNORE_INDEX).any(0)
            for k in scored:
                pred = res.probs[k.index - 1] > 0.5
                kaggle[k.name].append(kaggle_score(pred, c.target[k.index - 1] == 1, ignore)["kaggle_score"])
        emit(progress, "validate", i + 1, len(cases), f"validation case {c.case_id}")
    net.train(was)
    if not per_case:
        return {"mean_dice": float("nan"), "per_class": {}, "per_case": {}, "score": float("nan")}
    per_class = {}
    for k in spec.classes:
        vals = [pc[k.name] for pc in per_case.values() if k.name in pc]
        per_class[k.name] = {"dice": float(np.mean(vals)) if vals else float("nan"), "n_cases": len(vals)}
    scored_means = [v["dice"] for v in per_class.values() if v["n_cases"]]
    out = {
        "mean_dice": float(np.mean(scored_means)) if scored_means else float("nan"),
        "per_class": per_class,
        "per_case": per_case,
    }
    out["score"] = out["mean_dice"]
    if multilabel and any(kaggle.values()):
        for name, v in kaggle.items():
            per_class[name]["kaggle_score"] = float(np.mean(v)) if v else float("nan")
        out["mean_kaggle_score"] = float(np.nanmean([per_class[n]["kaggle_score"] for n in kaggle]))
        out["score"] = out["mean_kaggle_score"]
    return out


def _scored_classes(case: Case, spec: ModelSpec) -> list:
    """The spec's classes this case annotates (all unless partially labelled)."""
    if case.target.ndim == 4:  # a channel ignored everywhere: not annotated (per-channel ignore)
        return [k for k in spec.classes if not (case.target[k.index - 1] == IGNORE_INDEX).all()]
    if case.annotated is None:
        return list(spec.classes)
    return [k for k in spec.classes if k.name in case.annotated]


def _flatten_multilabel(masks: np.ndarray, spec: ModelSpec) -> np.ndarray:
    out = np.zeros(masks.shape[1:], np.uint8)
    for c in spec.classes:
        out[masks[c.index - 1] == 1] = c.index
    annotated = [c.index - 1 for c in spec.classes if not (masks[c.index - 1] == IGNORE_INDEX).all()]
    out[(masks[annotated] == IGNORE_INDEX).any(0)] = IGNORE_INDEX
    return out


def metrics_record(best_metrics: dict, patients: list[str], dataset_root) -> dict:
    """The ``metrics`` of a trained model's spec: the best epoch's validation metrics
    (see :func:`validate`) with the patients and the dataset they were measured on, as
    keyed pseudonyms (:mod:`napari_gi_seg._privacy`: never a folder or file name of the
    user's data); ``{}`` when there was no validation."""
    from .._privacy import public_dataset_name, public_ids

    bm = best_metrics
    if not bm:
        return {}
    return {
        "validation": {
            "mean_dice": bm.get("mean_dice"),
            **({"mean_kaggle_score": bm["mean_kaggle_score"]} if "mean_kaggle_score" in bm else {}),
            "per_class": bm.get("per_class", {}),
            "per_case": public_ids(bm.get("per_case", {})),
            "patients": public_ids(patients),
            "measured_on": f"{len(patients)} held-out patient(s) of {public_dataset_name(dataset_root)}",
        }
    }
