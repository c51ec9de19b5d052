"""Day-to-day patient adaptation on UW-Madison GI Tract: adapt on day 1, segment day 2.

For anyone with the full Kaggle download (``train.csv`` + ``train/caseN/caseN_dayM/scans``;
not available on the development machine, see ../shared/data/uwmgi/SOURCE.md)::

    napari-gi-seg train /data/uw-madison-gi-tract-image-segmentation --name gi-tract \\
        --context=-2,0,2 --size 256 --epochs 60              # the GI recipe (docs/training.md)
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/uwmgi_day_adaptation.py \\
        --data /data/uw-madison-gi-tract-image-segmentation --model gi-tract --patients-from-spec

This is the MR-Linac situation: the same patient is scanned on several treatment days.
For every patient with at least two labelled case-days (days in order; the first pair
is used):

1. the base model (``--model``) segments day 2: the "before" figures;
2. ``--n-slices`` slices of day 1 spread over its slices that contain an organ (the
   centres of equal bins; ``--n-slices 0``: every labelled slice of day 1) stand in for
   the clinician's corrections on day 1 (their ground truth), and
   :func:`napari_gi_seg.training.adaptation.adapt_to_scan` fine-tunes a copy of the
   model on them (the product's code, not a second implementation);
3. the adapted copy segments day 2: the "after" figures.

Scores on day 2 per class (per sigmoid channel at probability > 0.5, labelled slices
only): 3D Dice and the UW-Madison Kaggle score (0.4 x 2D Dice + 0.6 x (1 - normalised
3D Hausdorff), :func:`napari_gi_seg.evaluation.metrics.kaggle_score`). With
``--patients-from-spec`` only the model's validation patients (never trained on) are
used, which is what makes the figure honest. ``--write-docs`` writes the table into
docs/benchmarks.md (section ``uwmgi-day-adaptation``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402  (benchmarks/ is not a package)

SECTION = "uwmgi-day-adaptation"


def day_pairs(ds, patients: set[str] | None = None) -> list[tuple[object, object]]:
    """``[(day-1 CaseRef, day-2 CaseRef)]``: the first two case-days (by day number) of
    every patient with at least two, optionally only ``patients``."""
    by_patient: dict[str, list] = {}
    for ref in ds.cases:
        if patients is None or ref.group in patients:
            by_patient.setdefault(ref.group, []).append(ref)
    pairs = []
    for refs in by_patient.values():
        refs = sorted(refs, key=lambda r: int(r.case_id.rsplit("_day", 1)[1]))
        if len(refs) >= 2:
            pairs.append((refs[0], refs[1]))
    return pairs


def pick_slices(masks: np.ndarray, n: int) -> list[int]:
    """``n`` slices spread over the organ-bearing slices of ``(K, z, y, x)`` masks (the
    centre of each of ``n`` equal bins); ``n = 0``: every labelled slice (not all
    ignore). Raises ``ValueError`` when there are fewer organ slices than ``n``."""
    labelled = np.nonzero((masks != 255).reshape(masks.shape[0], masks.shape[1], -1).any((0, 2)))[0]
    if n <= 0:
        return [int(z) for z in labelled]
    organ = np.nonzero((masks == 1).reshape(masks.shape[0], masks.shape[1], -1).any((0, 2)))[0]
    if len(organ) < n:
        raise ValueError(f"only {len(organ)} slices contain an organ; need {n}")
    return sorted({int(organ[int((i + 0.5) * len(organ) / n)]) for i in range(n)})


def score_day(spec, net, case, device) -> dict[str, dict[str, float]]:
    """``{class: {"dice", "kaggle_score"}}`` of ``net`` on a case-day (labelled slices)."""
    from napari_gi_seg.engine.inference import segment_volume
    from napari_gi_seg.evaluation.metrics import dice, kaggle_score

    res = segment_volume(case.image, spec, net, device=device, return_probs=True)
    ignore = (case.target == 255).any(0)
    out = {}
    for c in spec.classes:
        pred, ref = res.probs[c.index - 1] > 0.5, case.target[c.index - 1] == 1
        out[c.name] = {
            "dice": float(dice(pred, ref, ignore)),
            "kaggle_score": float(kaggle_score(pred, ref, ignore)["kaggle_score"]),
        }
    return out


def _mean(d: dict, key: str) -> float:
    return float(np.nanmean([v[key] for v in d.values()]))


def run(args) -> dict:
    import torch

    from napari_gi_seg._privacy import recorded_among
    from napari_gi_seg.datasets import open_dataset
    from napari_gi_seg.models import registry
    from napari_gi_seg.training.adaptation import adapt_to_scan

    torch.set_num_threads(args.threads)
    spec, net = registry.load_model(args.model, device="cpu")
    if spec.activation != "sigmoid":
        raise SystemExit(f"{spec.key} is not a multi-label (sigmoid) model; train one on UW-Madison first")
    ds = open_dataset(args.data)
    patients = None
    if args.patients:
        patients = set(args.patients.split(","))
    elif args.patients_from_spec:
        patients = set(recorded_among((spec.training or {}).get("val_patients"), ds.groups))
    pairs = day_pairs(ds, patients)[: args.max_patients or None]
    if not pairs:
        raise SystemExit(f"{args.data}: no patient with two labelled case-days (patients {sorted(patients or [])})")
    rows = []
    for ref1, ref2 in pairs:
        day1, day2 = ref1.load(), ref2.load()
        before = score_day(spec, net, day2, args.device)
        used = pick_slices(day1.target, args.n_slices)
        t0 = time.perf_counter()
        res = adapt_to_scan(
            day1.image,
            day1.target,
            used,
            spec,
            net,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
        )
        seconds = time.perf_counter() - t0
        after = score_day(res.spec, res.net, day2, args.device)
        row = {
            "patient": ref1.group,
            "day1": ref1.case_id,
            "day2": ref2.case_id,
            "slices_used": used,
            "per_class_before": before,
            "per_class_after": after,
            "dice_before": _mean(before, "dice"),
            "dice_after": _mean(after, "dice"),
            "kaggle_before": _mean(before, "kaggle_score"),
            "kaggle_after": _mean(after, "kaggle_score"),
            "adapt_seconds": seconds,
            "steps": res.steps,
        }
        rows.append(row)
        print(
            f"{ref1.group}: adapt on {ref1.case_id} ({len(used)} slices), score {ref2.case_id}: Kaggle "
            f"{row['kaggle_before']:.4f} -> {row['kaggle_after']:.4f}, Dice {row['dice_before']:.4f} -> "
            f"{row['dice_after']:.4f} ({seconds:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    mean = {
        k: float(np.mean([r[k] for r in rows])) for k in ("dice_before", "dice_after", "kaggle_before", "kaggle_after")
    }
    return {
        "date": _dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores available, {platform.system()}",
        "torch": torch.__version__,
        "model": spec.key,
        "setup": {k: getattr(args, k) for k in ("n_slices", "steps", "batch_size", "lr", "seed", "threads", "device")},
        "rows": rows,
        **{f"mean_{k}": v for k, v in mean.items()},
    }


def markdown(report: dict) -> str:
    s = report["setup"]
    n = "every labelled slice" if s["n_slices"] <= 0 else f"{s['n_slices']} slices spread over the organ slices"
    lines = [
        "## UW-Madison: adapt on day 1, segment day 2",
        "",
        f"Measured {report['date']} with `benchmarks/uwmgi_day_adaptation.py` on {report['machine']}; torch "
        f"{report['torch']}, model {report['model']}. Per patient: `adapt_to_scan` on {n} of the first day "
        f"({s['steps']} steps of batch {s['batch_size']}, lr {s['lr']}), scored on the next day (per channel, "
        "labelled slices; Kaggle = 0.4 x 2D Dice + 0.6 x (1 - 3D Hausdorff)).",
        "",
        "| patient | day 1 -> day 2 | Kaggle before | Kaggle after | Dice before | Dice after | adapt s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['patient']} | {r['day1']} -> {r['day2']} | {r['kaggle_before']:.3f} | {r['kaggle_after']:.3f} | "
            f"{r['dice_before']:.3f} | {r['dice_after']:.3f} | {r['adapt_seconds']:.0f} |"
        )
    lines.append(
        f"| **mean** | | **{report['mean_kaggle_before']:.3f}** | **{report['mean_kaggle_after']:.3f}** | "
        f"**{report['mean_dice_before']:.3f}** | **{report['mean_dice_after']:.3f}** | |"
    )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from napari_gi_seg.training.adaptation import DEFAULT_LR, DEFAULT_STEPS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the Kaggle folder (train.csv + train/)")
    p.add_argument("--model", required=True, help="registered multi-label model NAME or NAME:VERSION")
    p.add_argument("--n-slices", type=int, default=5, help="corrected slices of day 1 (0: every labelled slice)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=DEFAULT_LR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--device", default="cpu")
    p.add_argument("--patients", help="comma-separated patients (caseN)")
    p.add_argument("--patients-from-spec", action="store_true", help="only the model's validation patients")
    p.add_argument("--max-patients", type=int, default=0, help="at most this many patients (0: all)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args(argv)
    report = run(args)
    md = markdown(report)
    print(json.dumps(report, indent=2) if args.json else md)
    if args.write_docs:
        print(f"wrote {write_section(SECTION, md)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
