"""Patient adaptation: does fine-tuning on 5 corrected slices help the rest of the scan?

Run by hand (not in CI), ideally on an otherwise idle machine::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/patient_adaptation.py --threads 2 --write-docs
    .venv/bin/python benchmarks/patient_adaptation.py --json          # machine-readable

For each held-out (validation) patient of the model's training split, this stands in
for a clinician who corrects 5 slices and fine-tunes:

1. the base model (``--model``; default the registry default, ``chaos-t2spir``)
   segments the whole volume (:func:`~napari_gi_seg.engine.inference.segment_volume`);
2. 5 slices spread evenly over the slices that contain an organ in the ground truth
   (the centres of 5 equal bins) are taken as "corrected": their ground truth is
   exported with the real :func:`~napari_gi_seg.curation.export.export_case` (reviewed slices =
   those 5, every other slice carries the ignore label) into a temporary nnU-Net
   dataset;
3. the model is fine-tuned on that dataset with the real trainer
   (:func:`~napari_gi_seg.training.trainer.train` with ``init=(base spec, weights)``,
   ``val_fraction=0``: all 5 slices train, none is held back and no epoch is picked by
   a validation score; the last epoch's weights are used);
4. Dice before and after is measured on the patient's OTHER slices only (the 5
   fine-tuning slices are set to the ignore label in the reference), per class, 3D
   over the remaining slices, and averaged over classes.

Why not :func:`napari_gi_seg.training.finetune.finetune`: it always holds part of the
data back (with one patient, every k-th labelled slice), which would train on 4 of
the 5 slices and pick the epoch on the 5th; here the evaluation slices are the
patient's other slices, so the trainer is called the way ``finetune`` calls it, with
nothing held back.

Goal (issue 4): mean Dice gain >= +0.03 with a fine-tune of <= 3 min per patient on
2 CPU cores. Nothing is registered: ``NAPARI_GI_SEG_HOME`` points to a temporary
folder while the script runs (the base model is read before that).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402  (benchmarks/ is not a package)

SECTION = "adaptation"
GOALS = {"gain": 0.03, "minutes": 3.0}


def load_base(model: str):
    """``(spec, state_dict, description)`` of a registry key (``name`` or
    ``name:version``) or of a folder holding ``spec.json`` + ``model.safetensors``.
    Raises ``ModelNotFoundError`` for an unknown key."""
    from napari_gi_seg.models import registry
    from napari_gi_seg.models.network import load_weights
    from napari_gi_seg.models.spec import ModelSpec

    p = Path(model)
    if p.is_dir() and (p / registry.SPEC_FILE).exists():
        return ModelSpec.load(p / registry.SPEC_FILE), load_weights(p / registry.WEIGHTS_FILE), str(p)
    e = registry.get_entry(model)
    return e.spec(), load_weights(e.weights_path), f"{e.key} ({'bundled' if e.bundled else 'user'})"


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


def adapt_patient(case, spec, state_dict, base_net, args, work: Path) -> dict:
    """Steps 1-4 of the module docstring for one loaded :class:`Case`; returns its row."""
    import torch

    from napari_gi_seg.curation.export import export_case
    from napari_gi_seg.datasets import open_dataset
    from napari_gi_seg.engine.inference import segment_volume
    from napari_gi_seg.training.trainer import TrainConfig, train

    names = [c.name for c in spec.classes]
    before_labels = segment_volume(case.image, spec, base_net, device=args.device).labels
    used = pick_slices(case.target, args.n_slices)
    ds_dir = work / f"Dataset_{case.case_id}"
    export_case(
        ds_dir,
        case.image,
        case.target,
        used,
        {c.index: c.name for c in spec.classes},
        case_id=f"patient_{case.case_id}",
        group=str(case.group),
        prediction=before_labels,
        model_key=f"{spec.name}:{spec.version}",
    )
    ds = open_dataset(ds_dir, names)
    cfg = TrainConfig(
        dataset=str(ds_dir),
        name=f"{spec.name}-adapted",
        class_names=names,
        arch=spec.architecture,
        encoder=spec.encoder,
        context=tuple(spec.context_offsets),
        size=int(spec.input_size[0]),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        val_fraction=0.0,
        seed=args.seed,
        device=args.device,
        max_minutes=args.minutes_per_patient,
        normalisation=spec.normalisation,
        augment=not args.no_augment,
        freeze_encoder=args.freeze_encoder,
        work_dir=str(work / f"run_{case.case_id}"),
        register=False,
        version=spec.version + 1,
    )
    n_z = case.image.shape[0]
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    res = train(cfg, init=(spec, state_dict), dataset=ds)
    wall, cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
    after_labels = segment_volume(case.image, res.spec, res.model, device=args.device).labels
    before = dice_other_slices(before_labels, case.target, used, spec)
    after = dice_other_slices(after_labels, case.target, used, spec)
    # the trainer skips slices that are entirely ignore label: only the corrected ones are batched
    steps_per_epoch = max(1, -(-len(used) // args.batch_size))
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
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "epochs_run": len(res.history),
        "steps": len(res.history) * steps_per_epoch,
        "threads": torch.get_num_threads(),
    }
    row["gain"] = row["dice_after"] - row["dice_before"]
    print(
        f"patient {row['patient']}: slices {used}; Dice on the other {row['evaluated_slices']} slices "
        f"{row['dice_before']:.4f} -> {row['dice_after']:.4f} ({row['gain']:+.4f}); fine-tune {wall:.0f} s wall, "
        f"{cpu:.0f} s CPU, {row['epochs_run']} epochs",
        file=sys.stderr,
        flush=True,
    )
    return row


def run(args) -> dict:
    import torch

    from napari_gi_seg.datasets import open_dataset, split_groups
    from napari_gi_seg.models.network import build_network
    from napari_gi_seg.paths import data_dir

    torch.set_num_threads(args.threads)
    spec, state_dict, source = load_base(args.model)
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
        patients = list((spec.training or {}).get("val_patients") or split_groups(ds.groups, 0.25, 0, 0)[1])
    print(f"base model {source}; patients {patients}; {args.threads} threads", file=sys.stderr, flush=True)
    base_net = build_network(spec)
    ref = base_net.state_dict()
    base_net.load_state_dict({k: v.to(ref[k].dtype) for k, v in state_dict.items()})
    base_net.eval()

    old_home = os.environ.get("NAPARI_GI_SEG_HOME")
    rows = []
    with tempfile.TemporaryDirectory(prefix="gi-seg-adapt-") as td:
        os.environ["NAPARI_GI_SEG_HOME"] = str(Path(td) / "home")  # nothing reaches the real user folder
        try:
            for case_ref in ds.subset(patients).cases:
                rows.append(adapt_patient(case_ref.load(), spec, state_dict, base_net, args, Path(td)))
        finally:
            if old_home is None:
                os.environ.pop("NAPARI_GI_SEG_HOME", None)
            else:
                os.environ["NAPARI_GI_SEG_HOME"] = old_home
    gain = float(np.mean([r["gain"] for r in rows]))
    worst_min = max(r["wall_seconds"] for r in rows) / 60
    return {
        "date": _dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores available, {platform.system()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "model": source,
        "data": str(root),
        "setup": {
            "n_slices": args.n_slices,
            "epochs": args.epochs,
            "minutes_per_patient": args.minutes_per_patient,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "augment": not args.no_augment,
            "freeze_encoder": args.freeze_encoder,
            "threads": args.threads,
            "seed": args.seed,
            "device": args.device,
        },
        "rows": rows,
        "mean_before": float(np.mean([r["dice_before"] for r in rows])),
        "mean_after": float(np.mean([r["dice_after"] for r in rows])),
        "mean_gain": gain,
        "goals": {
            f"mean Dice gain >= +{GOALS['gain']:.2f}": gain >= GOALS["gain"],
            f"fine-tune <= {GOALS['minutes']:.0f} min per patient (wall, {args.threads} threads)": worst_min
            <= GOALS["minutes"],
        },
    }


def markdown(report: dict) -> str:
    s = report["setup"]
    rows = report["rows"]
    classes = list(rows[0]["per_class_before"])
    lines = [
        "## Patient adaptation: fine-tuning on 5 corrected slices",
        "",
        f"Measured {report['date']} with `benchmarks/patient_adaptation.py` on {report['machine']}; torch "
        f"{report['torch']}, {s['threads']} threads, device {s['device']}. Base model: {report['model']}. For each held-out "
        f"patient, {s['n_slices']} slices spread over the organ-bearing slices are exported with their ground truth "
        "(`export_case`, all other slices = ignore label) and the model is fine-tuned on them with the trainer "
        f"(peak lr {s['lr']}, batch {s['batch_size']}, up to {s['epochs']} epochs / {s['minutes_per_patient']} min, "
        f"augmentation {'on' if s['augment'] else 'off'}{', encoder frozen' if s['freeze_encoder'] else ''}; "
        "last epoch kept). Dice: 3D per class over the patient's other slices, mean over classes. "
        "CPU time counts every thread of the process.",
        "",
        "| patient | slices | fine-tune slices | Dice before | Dice after | gain | epochs | steps | wall s | CPU s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['patient']} | {r['slices']} | {', '.join(map(str, r['fine_tune_slices']))} | "
            f"{r['dice_before']:.3f} | {r['dice_after']:.3f} | {r['gain']:+.3f} | {r['epochs_run']} | "
            f"{r['steps']} | {r['wall_seconds']:.0f} | {r['cpu_seconds']:.0f} |"
        )
    lines.append(
        f"| **mean** | | | **{report['mean_before']:.3f}** | **{report['mean_after']:.3f}** | "
        f"**{report['mean_gain']:+.3f}** | | | "
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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="registry key or model folder (default: the registry default model)")
    p.add_argument(
        "--minutes-per-patient", type=float, default=3.0, help="fine-tune time budget per patient (default 3)"
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=40,
        help="epochs over the exported case (all its slices; only the 5 labelled ones give a loss). Default 40",
    )
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate of the one-cycle schedule (default 3e-4)")
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument("--n-slices", type=int, default=5, help="corrected slices per patient (default 5)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--freeze-encoder", action="store_true")
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
