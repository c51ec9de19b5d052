"""Patient adaptation: does fine-tuning on 5 corrected slices help the rest of the scan?

Run by hand (not in CI), ideally on an otherwise idle machine::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/patient_adaptation.py --threads 2 --write-docs
    .venv/bin/python benchmarks/patient_adaptation.py --json          # machine-readable

For each CHAOS patient the base model never trained on (default: the validation
patients of its spec, ``training.val_patients``; for the bundled ``chaos-t2spir:1``
that is 1, 3, 36 and 37), this stands in for a clinician who corrects 5 slices and
presses *Adapt to this scan*:

1. the base model (``--model``; default the registry default) segments the whole
   volume (:func:`~napari_gi_seg.engine.inference.segment_volume`, with the usual
   post-processing): the "before" labels;
2. 5 slices spread evenly over the slices that contain an organ in the ground truth
   (the centres of 5 equal bins) are taken as "corrected": their ground truth is the
   clinician's correction;
3. the product's own :func:`~napari_gi_seg.training.adaptation.adapt_to_scan`
   fine-tunes a copy of the model on those slices only (no second implementation
   here), and :func:`~napari_gi_seg.training.adaptation.resegment_except`
   re-segments every other slice with it: the "after" labels;
4. Dice before and after is measured on the patient's OTHER slices only (the 5
   corrected slices are set to the ignore label in the reference), per class, 3D
   over the remaining slices, and averaged over classes.

The time is the wall time of ``adapt_to_scan`` (fine-tune plus its two Dice checks on
the corrected slices) plus ``resegment_except``: what the clinician waits for.

Goals (issue 13): mean Dice gain >= +0.03 on the other slices, <= 60 s per patient on
2 CPU threads. Nothing is registered or written except, with ``--write-docs``, the
section of docs/benchmarks.md.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402  (benchmarks/ is not a package)

SECTION = "adaptation"
GOALS = {"gain": 0.03, "seconds": 60.0}


def load_base(model: str):
    """``(spec, network, description)`` of a registry key (``name`` or ``name:version``)
    or of a folder holding ``spec.json`` + ``model.safetensors``.
    Raises ``ModelNotFoundError`` for an unknown key."""
    from napari_gi_seg.models import registry
    from napari_gi_seg.models.network import load_network
    from napari_gi_seg.models.spec import ModelSpec

    p = Path(model)
    if p.is_dir() and (p / registry.SPEC_FILE).exists():
        spec = ModelSpec.load(p / registry.SPEC_FILE)
        # the spec's key and description, never the local path (the text goes into docs)
        about = f"{spec.key} (model folder: {spec.description})" if spec.description else f"{spec.key} (model folder)"
        return spec, load_network(spec, p / registry.WEIGHTS_FILE), about
    e = registry.get_entry(model)
    spec = e.spec()
    return spec, load_network(spec, e.weights_path), f"{e.key} ({'bundled' if e.bundled else 'user'})"


def pick_slices(target: np.ndarray, n: int) -> list[int]:
    """``n`` slice indices spread evenly over the slices of ``target`` ``(z, y, x)``
    that contain any organ (label 1..254): the centre slice of each of ``n`` equal
    bins. Raises ``ValueError`` when fewer than ``n + 1`` slices contain an organ."""
    organ = np.nonzero(((target > 0) & (target != 255)).reshape(target.shape[0], -1).any(1))[0]
    if len(organ) < n + 1:
        raise ValueError(f"only {len(organ)} slices contain an organ; need more than {n}")
    return sorted({int(organ[int((i + 0.5) * len(organ) / n)]) for i in range(n)})


def dice_other_slices(pred: np.ndarray, target: np.ndarray, used: list[int], spec) -> dict[str, float]:
    """``{class name: Dice}`` over every slice except ``used`` (3D, ``(z, y, x)``)."""
    from napari_gi_seg.evaluation.metrics import dice_per_class

    ref = np.array(target, copy=True)
    ref[used] = 255
    d = dice_per_class(pred, ref, [c.index for c in spec.classes], ignore_index=255)
    return {c.name: d[c.index] for c in spec.classes}


def adapt_patient(case, spec, base_net, args) -> dict:
    """Steps 1-4 of the module docstring for one loaded :class:`Case`; returns its row."""
    import torch

    from napari_gi_seg.engine.inference import segment_volume
    from napari_gi_seg.training.adaptation import adapt_to_scan, resegment_except

    before_labels = segment_volume(case.image, spec, base_net, device=args.device).labels
    used = pick_slices(case.target, args.n_slices)
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    res = adapt_to_scan(
        case.image,
        case.target,
        used,
        spec,
        base_net,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        augment=not args.no_augment,
        seed=args.seed,
        device=args.device,
    )
    t_adapt = time.perf_counter() - t_wall
    # the clinician's labels: corrected slices as drawn, the rest from the base model
    current = before_labels.copy()
    current[used] = case.target[used]
    after_labels = resegment_except(case.image, current, used, res.spec, res.net, device=args.device).labels
    wall, cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
    before = dice_other_slices(before_labels, case.target, used, spec)
    after = dice_other_slices(after_labels, case.target, used, spec)
    n_z = case.image.shape[0]
    row = {
        "patient": str(case.group),
        "case_id": case.case_id,
        "slices": n_z,
        "fine_tune_slices": used,
        "evaluated_slices": n_z - len(used),
        "dice_before": float(np.mean(list(before.values()))),
        "dice_after": float(np.mean(list(after.values()))),
        "per_class_before": before,
        "per_class_after": after,
        "adapt_seconds": t_adapt,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "steps": res.steps,
        "threads": torch.get_num_threads(),
    }
    row["gain"] = row["dice_after"] - row["dice_before"]
    print(
        f"patient {row['patient']}: slices {used}; Dice on the other {row['evaluated_slices']} slices "
        f"{row['dice_before']:.4f} -> {row['dice_after']:.4f} ({row['gain']:+.4f}); adapt {t_adapt:.0f} s, "
        f"with re-segmentation {wall:.0f} s wall, {cpu:.0f} s CPU, {res.steps} steps",
        file=sys.stderr,
        flush=True,
    )
    return row


def run(args) -> dict:
    import torch

    from napari_gi_seg._privacy import recorded_among
    from napari_gi_seg.datasets import open_dataset, split_groups
    from napari_gi_seg.paths import data_dir

    torch.set_num_threads(args.threads)
    spec, base_net, source = load_base(args.model)
    root = Path(args.data) if args.data else (data_dir() / "chaos_mr_t2spir" if data_dir() else None)
    if root is None or not root.is_dir():
        raise SystemExit("CHAOS data not found: set NAPARI_GI_SEG_DATA or pass --data")
    ds = open_dataset(root, [c.name for c in spec.classes])
    if args.patients:
        patients = args.patients.split(",")
        unknown = sorted(set(patients) - set(ds.groups))
        if unknown:
            raise SystemExit(f"--patients {unknown} not in {root} (patients: {', '.join(ds.groups)})")
    else:
        recorded = (spec.training or {}).get("val_patients")  # names, or keyed pseudonyms (napari_gi_seg._privacy)
        patients = recorded_among(recorded, ds.groups) if recorded else list(split_groups(ds.groups, 0.25, 0, 0)[1])
    trained_on = set(recorded_among((spec.training or {}).get("train_patients"), ds.groups))
    if trained_on & set(patients):
        print(f"warning: the model trained on patients {sorted(trained_on & set(patients))}", file=sys.stderr)
    print(f"base model {source}; patients {patients}; {args.threads} threads", file=sys.stderr, flush=True)
    rows = [adapt_patient(case_ref.load(), spec, base_net, args) for case_ref in ds.subset(patients).cases]
    gain = float(np.mean([r["gain"] for r in rows]))
    worst = max(r["wall_seconds"] for r in rows)
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover
        load = float("nan")
    return {
        "date": _dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores available, {platform.system()}",
        "load_average_1min_at_end": load,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "model": source,
        "data": str(root),
        "setup": {
            "n_slices": args.n_slices,
            "steps": args.steps,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "augment": not args.no_augment,
            "threads": args.threads,
            "seed": args.seed,
            "device": args.device,
        },
        "rows": rows,
        "mean_before": float(np.mean([r["dice_before"] for r in rows])),
        "mean_after": float(np.mean([r["dice_after"] for r in rows])),
        "mean_gain": gain,
        "goals": {
            f"mean Dice gain >= +{GOALS['gain']:.2f} on the other slices": gain >= GOALS["gain"],
            f"adapt + re-segment <= {GOALS['seconds']:.0f} s per patient (wall, {args.threads} threads)": worst
            <= GOALS["seconds"],
        },
    }


def markdown(report: dict) -> str:
    s = report["setup"]
    rows = report["rows"]
    classes = list(rows[0]["per_class_before"])
    lines = [
        "## Patient adaptation: fine-tuning on 5 corrected slices",
        "",
        f"Measured {report['date']} with `benchmarks/patient_adaptation.py` on {report['machine']} "
        f"(1-min load average {report['load_average_1min_at_end']:.1f} at the end: the machine is shared); torch "
        f"{report['torch']}, {s['threads']} torch thread(s), device {s['device']}. Base model: {report['model']}. For each "
        f"CHAOS patient the model never trained on, {s['n_slices']} slices spread over the organ-bearing slices "
        "stand in for the clinician's corrections (their ground truth); the product's "
        "`training.adaptation.adapt_to_scan` fine-tunes a copy of the model on them only "
        f"({s['steps']} steps of batch {s['batch_size']}, peak lr {s['lr']}, few-slice augmentation "
        f"{'on' if s['augment'] else 'off'}, seed {s['seed']}) and `resegment_except` re-segments every other "
        "slice. Dice: 3D per class over the patient's other slices (the corrected ones are left out), mean over "
        "classes; before = the base model with its post-processing. Seconds: adapt (fine-tune + Dice check on "
        "the corrected slices) and adapt + re-segment, wall time; CPU time counts every thread.",
        "",
        "| patient | slices | corrected slices | Dice before | Dice after | gain | steps | adapt s | + re-segment s | CPU s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['patient']} | {r['slices']} | {', '.join(map(str, r['fine_tune_slices']))} | "
            f"{r['dice_before']:.3f} | {r['dice_after']:.3f} | {r['gain']:+.3f} | {r['steps']} | "
            f"{r['adapt_seconds']:.0f} | {r['wall_seconds']:.0f} | {r['cpu_seconds']:.0f} |"
        )
    lines.append(
        f"| **mean** | | | **{report['mean_before']:.3f}** | **{report['mean_after']:.3f}** | "
        f"**{report['mean_gain']:+.3f}** | | {np.mean([r['adapt_seconds'] for r in rows]):.0f} | "
        f"{np.mean([r['wall_seconds'] for r in rows]):.0f} | {np.mean([r['cpu_seconds'] for r in rows]):.0f} |"
    )
    lines += [
        "",
        "Per class (mean over patients, other slices): "
        + "; ".join(
            f"{c} {np.mean([r['per_class_before'][c] for r in rows]):.3f} -> "
            f"{np.mean([r['per_class_after'][c] for r in rows]):.3f}"
            for c in classes
        )
        + ".",
        "",
        "Goals:",
        "",
    ]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {k}" for k, ok in report["goals"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from napari_gi_seg.training.adaptation import DEFAULT_LR, DEFAULT_STEPS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="registry key or model folder (default: the registry default model)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"optimiser steps (default {DEFAULT_STEPS})")
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"peak learning rate (default {DEFAULT_LR})")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-slices", type=int, default=5, help="corrected slices per patient (default 5)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: all cores)"
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patients", help="comma-separated patient ids (default: the model's validation patients)")
    p.add_argument("--data", help="dataset folder (default: data_dir()/chaos_mr_t2spir)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--write-docs", action="store_true", help="write the table into docs/benchmarks.md")
    args = p.parse_args(argv)
    if args.model is None:
        from napari_gi_seg.models.registry import DEFAULT_MODEL

        args.model = DEFAULT_MODEL
    report = run(args)
    md = markdown(report)
    print(json.dumps(report, indent=2) if args.json else md)
    if args.write_docs:
        print(f"wrote {write_section(SECTION, md)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
