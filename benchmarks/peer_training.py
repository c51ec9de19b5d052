"""Recipe and peers, side by side in one run: 4-fold patient cross-validation on the
16 CHAOS T2-SPIR patients at an equal wall-clock training budget.

Methods (``--methods``):

- ``ours-smp``: our trainer (:class:`napari_gi_seg.training.trainer.Trainer`: the
  model's frame, 2.5D slices -1/0/+1 at 160 px, MONAI augmentation with left/right
  flips and class swap, Dice + CE, AdamW, one-cycle schedule over the budget,
  :class:`~napari_gi_seg.training.schedule.BudgetOneCycle`) with the smp
  ``Unet``/``mobilenet_v2`` network of the bundled model up to version 1;
- ``ours-unet``: the same trainer with MONAI ``UNet`` (preset ``16-256-res2``);
- ``ours-dynunet``: the same trainer with MONAI ``DynUNet``, nnU-Net's network
  (preset ``16-256-instance``);
- ``nnunet``: nnU-Net v2 ``2d`` with its own planning, preprocessing, augmentation,
  loss and schedule (``benchmarks/_nnunet_peer.py``; needs ``pip install nnunetv2``).

Every method trains for ``--minutes`` of wall-clock training time per fold
(preparation, validation and prediction are not counted), with ``--threads`` torch
threads, on the training patients of the fold, and is scored on the fold's held-out
patients: 3D Dice per organ on each whole volume at its native grid, final weights
(no epoch is chosen on the held-out patients). Folds: :func:`napari_gi_seg.datasets.
split_groups` with ``val_fraction 0.25``, seed 0 (the bundled model's split is fold 0),
so each patient is scored exactly once per method; the table gives mean +- sd over the
16 patients per organ.

One fold of one method per process keeps the runs independent; run them in any order
and merge::

    for f in 0 1 2 3; do for m in ours-smp ours-unet ours-dynunet nnunet; do
      OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peer_training.py --methods $m --folds $f \\
          --minutes 4 --threads 1 --json runs/peer/$m-$f.json
    done; done
    .venv/bin/python benchmarks/peer_training.py --merge runs/peer/*.json --write-docs

Run by hand (not in CI): about ``methods x folds x minutes`` plus ~1 min per run.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402  (benchmarks/ is not a package)

SECTION = "peer-training"
CLASSES = ("liver", "right_kidney", "left_kidney", "spleen")
OURS = {  # method: (architecture, encoder/preset, left/right flips: "swap"/"keep" labels or None, label)
    "ours-smp": ("Unet", "mobilenet_v2", "swap", "ours: smp Unet / mobilenet_v2, flips (swap)"),
    "ours-unet": ("monai.UNet", "16-256-res2", "swap", "ours: MONAI UNet 16-256, flips (swap)"),
    "ours-dynunet": ("monai.DynUNet", "16-256-instance", "swap", "ours: MONAI DynUNet 16-256, flips (swap)"),
    "ours-unet-noflip": ("monai.UNet", "16-256-res2", None, "ours: MONAI UNet 16-256, no flips"),
    "ours-unet-keep": ("monai.UNet", "16-256-res2", "keep", "ours: MONAI UNet 16-256, flips (keep)"),
    "ours-dynunet-keep": ("monai.DynUNet", "16-256-instance", "keep", "ours: MONAI DynUNet 16-256, flips (keep)"),
    "ours-unetbn-keep": ("monai.UNet", "16-256-res2-batch", "keep", "ours: MONAI UNet 16-256 batch norm, flips (keep)"),
    "ours-unetbn-noflip": ("monai.UNet", "16-256-res2-batch", None, "ours: MONAI UNet 16-256 batch norm, no flips"),
    "ours-smp-keep": ("Unet", "mobilenet_v2", "keep", "ours: smp Unet / mobilenet_v2, flips (keep)"),
}
LABELS = {**{k: v[3] for k, v in OURS.items()}, "nnunet": "nnU-Net v2 2d (its own recipe)"}


def data_root(arg: str | None) -> Path:
    from napari_gi_seg.paths import data_dir

    root = Path(arg) if arg else (data_dir() / "chaos_mr_t2spir" if data_dir() else None)
    if root is None or not root.is_dir():
        raise SystemExit("CHAOS data not found: set NAPARI_GI_SEG_DATA or pass --data")
    return root


def fold_split(root: Path, fold: int, folds: int = 4) -> tuple[list[str], list[str]]:
    from napari_gi_seg.datasets import open_dataset, split_groups

    ds = open_dataset(root, list(CLASSES))
    return split_groups(ds.groups, 1.0 / folds, fold, 0)


def run_ours(method: str, root: Path, fold: int, minutes: float, threads: int, work: Path) -> dict:
    """Our trainer with the method's network; returns the run's row."""
    import torch

    from napari_gi_seg.training.trainer import TrainConfig, Trainer

    torch.set_num_threads(threads)
    arch, enc, flip, _ = OURS[method]
    cfg = TrainConfig(
        dataset=str(root),
        name=f"peer-{method}",
        class_names=list(CLASSES),
        arch=arch,
        encoder=enc,
        epochs=100000,
        budget_minutes=minutes,
        val_fraction=0.25,
        fold=fold,
        seed=0,
        device="cpu",
        patience=100000,
        val_every=100000,  # validate once, when the budget is spent: final weights
        work_dir=str(work / f"{method}-fold{fold}"),
        register=False,
        single_component=list(CLASSES),
        flip_augment=flip is not None,
        flip_labels=flip or "swap",
    )
    t = Trainer(cfg)
    t0 = time.time()
    res = t.fit()
    n_params = sum(p.numel() for p in res.model.parameters())
    steps = int(getattr(t.sched, "last_epoch", 0))
    per_case = res.best_metrics["per_case"]
    return {
        "steps": steps,
        "epochs": len(res.history),
        "train_minutes": round(t.sched.elapsed_s / 60, 2),
        "wall_minutes": round((time.time() - t0) / 60, 2),
        "params_m": round(n_params / 1e6, 2),
        "fp16_mb": round(n_params * 2 / 1e6, 1),
        "per_case": {str(k): {c: float(v[c]) for c in CLASSES} for k, v in per_case.items()},
    }


def run_nnunet(root: Path, fold: int, minutes: float, threads: int, work: Path) -> dict:
    """nnU-Net v2 2d on the fold (``_nnunet_peer``)."""
    from _nnunet_peer import prepare_nnunet, run_nnunet_fold

    tr, va = fold_split(root, fold)
    prep = prepare_nnunet(root, list(CLASSES), work / "nnunet", threads=threads)
    r = run_nnunet_fold(work / "nnunet", tr, va, minutes, threads=threads, seed=0)
    r["prepare_seconds"] = prep.get("seconds")
    return r


def run(method: str, root: Path, fold: int, minutes: float, threads: int, work: Path) -> dict:
    t0 = time.time()
    if method in OURS:
        row = run_ours(method, root, fold, minutes, threads, work)
    elif method == "nnunet":
        row = run_nnunet(root, fold, minutes, threads, work)
    else:
        raise SystemExit(f"unknown method {method!r}: one of {sorted(LABELS)}")
    tr, va = fold_split(root, fold)
    row.update(
        method=method,
        fold=fold,
        minutes=minutes,
        threads=threads,
        train_patients=tr,
        val_patients=va,
        run_minutes=round((time.time() - t0) / 60, 2),
    )
    return row


def environment() -> dict:
    """Date, machine and the versions that matter here (from the trainer's
    :func:`napari_gi_seg.training.manifest.environment`, plus nnunetv2)."""
    from importlib import metadata

    from napari_gi_seg.training.manifest import environment as run_environment

    env = run_environment("cpu")
    v, hw = env["versions"], env["hardware"]
    out = {
        "date": _dt.date.today().isoformat(),
        "machine": f"{hw['machine']}, {len(os.sched_getaffinity(0))} CPU cores available, {platform.system()}",
        "python": hw["python"],
        "torch": v.get("torch"),
    }
    if v.get("monai"):
        out["monai"] = v["monai"]
    try:
        out["nnunetv2"] = metadata.version("nnunetv2")
    except metadata.PackageNotFoundError:
        pass
    return out


def summarise(rows: list[dict]) -> list[dict]:
    """One line per method: per-organ mean and sd over patients, mean Dice (mean over
    patients of the 4-organ mean), runs' steps and minutes."""
    out = []
    for method in [m for m in LABELS if any(r["method"] == m for r in rows)]:
        rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["fold"])
        cases = {pid: d for r in rs for pid, d in r["per_case"].items()}
        per = {c: np.array([cases[p][c] for p in cases]) for c in CLASSES}
        means = np.array([np.mean([cases[p][c] for c in CLASSES]) for p in cases])
        out.append(
            {
                "method": method,
                "label": LABELS[method],
                "folds": [r["fold"] for r in rs],
                "patients": len(cases),
                "params_m": rs[0].get("params_m"),
                "fp16_mb": rs[0].get("fp16_mb"),
                "steps": int(np.mean([r["steps"] for r in rs])),
                "steps_range": (min(r["steps"] for r in rs), max(r["steps"] for r in rs)),
                "train_minutes": float(np.mean([r["train_minutes"] for r in rs])),
                "threads": rs[0]["threads"],
                "per_class": {c: (float(per[c].mean()), float(per[c].std())) for c in CLASSES},
                "mean": (float(means.mean()), float(means.std())),
            }
        )
    return out


def record_cv(rows: list[dict], method: str, spec_path: Path) -> dict:
    """Write ``method``'s cross-validation into ``spec_path`` (``metrics.cross_validation``):
    the estimate for unseen patients of a model trained with that recipe on every
    patient (the bundled model). Returns the record."""
    from napari_gi_seg.models.spec import ModelSpec

    s = next(x for x in summarise(rows) if x["method"] == method)
    minutes = sorted({r["minutes"] for r in rows if r["method"] == method})
    rec = {
        "method": method,
        "mean_dice": round(s["mean"][0], 4),
        "sd": round(s["mean"][1], 4),
        "per_class": {c: {"dice": round(m, 4), "sd": round(sd, 4)} for c, (m, sd) in s["per_class"].items()},
        "folds": len(s["folds"]),
        "patients": s["patients"],
        "measured_on": f"{len(s['folds'])}-fold patient cross-validation on {s['patients']} CHAOS T2-SPIR patients "
        f"(benchmarks/peer_training.py, {'/'.join(f'{m:g}' for m in minutes)} min of training per fold on "
        f"{s['threads']} CPU thread(s)).",
    }
    spec = ModelSpec.load(spec_path)
    spec.metrics = {**spec.metrics, "cross_validation": rec}
    spec.save(spec_path)
    return rec


def _table(summ: list[dict], bold: bool) -> list[str]:
    lines = [
        "| method | params (M) | threads | steps / fold (min-max) | train min / fold | liver | right_kidney "
        "| left_kidney | spleen | mean Dice |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    best = max(s["mean"][0] for s in summ) if summ else 0
    for s in summ:
        cells = " | ".join(f"{m:.3f} +- {sd:.3f}" for m, sd in s["per_class"].values())
        mean = f"{s['mean'][0]:.3f} +- {s['mean'][1]:.3f}"
        mean = f"**{mean}**" if bold and s["mean"][0] == best else mean
        params = f"{s['params_m']:.2f}" if s["params_m"] else "-"
        steps = f"{s['steps']} ({s['steps_range'][0]}-{s['steps_range'][1]})"
        lines.append(
            f"| {s['label']} | {params} | {s['threads']} | {steps} | {s['train_minutes']:.1f} | {cells} "
            f"| {mean} ({s['patients']} patients) |"
        )
    return lines


def markdown(rows: list[dict], env: dict, folds: int = 4) -> str:
    """The section of docs/benchmarks.md: methods run on every fold in the main table,
    the others (fewer folds) as an ablation table below it."""
    summ = summarise(rows)
    full = [s for s in summ if len(s["folds"]) == folds]
    part = [s for s in summ if len(s["folds"]) < folds]
    minutes = sorted({r["minutes"] for r in rows})
    lines = [
        "## Recipe and peers: 4-fold patient cross-validation on CHAOS T2-SPIR (one run)",
        "",
        f"Measured {env['date']} with `benchmarks/peer_training.py` on {env['machine']}; torch {env['torch']}"
        + (f", MONAI {env['monai']}" if "monai" in env else "")
        + (f", nnunetv2 {env['nnunetv2']}" if "nnunetv2" in env else "")
        + f". Each method trained {', '.join(f'{m:g}' for m in minutes)} min of wall-clock time per fold "
        "(preparation, validation and prediction not counted) on the fold's 12 patients and was scored on its "
        "4 held-out patients: 3D Dice per organ on whole volumes at their native grid, final weights. "
        "Folds are patient-level (`split_groups`, seed 0), so every patient is scored once per method; "
        "mean +- sd over the patients. Runs went two at a time beside other work on the 2 cores, so the "
        "steps a budget bought vary with the load (min-max over folds).",
        "",
        *_table(full, bold=True),
        "",
    ]
    if part:
        lines += [
            f"Ablations, fold {', '.join(sorted({str(f) for s in part for f in s['folds']}))} only (4 patients):",
            "",
            *_table(part, bold=False),
            "",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="ours-smp,ours-unet,ours-dynunet,nnunet")
    p.add_argument("--folds", default="0,1,2,3")
    p.add_argument("--minutes", type=float, default=4.0, help="training budget per method and fold")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default=None)
    p.add_argument("--work", default=None, help="run folders (default: a temporary folder)")
    p.add_argument("--json", default=None, help="append the runs' rows to this JSON file")
    p.add_argument("--merge", nargs="+", default=None, help="JSON files of earlier runs to tabulate")
    p.add_argument("--write-docs", action="store_true", help="write the table into docs/benchmarks.md")
    p.add_argument(
        "--record-cv",
        nargs=2,
        metavar=("METHOD", "SPEC_JSON"),
        help="write METHOD's cross-validation into a model's spec.json (metrics.cross_validation)",
    )
    args = p.parse_args(argv)

    rows: list[dict] = []
    if args.merge:
        for f in args.merge:
            rows += json.loads(Path(f).read_text())["rows"]
    else:
        root = data_root(args.data)
        work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="peer-training-"))
        for fold in [int(f) for f in args.folds.split(",")]:
            for m in args.methods.split(","):
                print(f"== {m} fold {fold}: {args.minutes} min", file=sys.stderr, flush=True)
                row = run(m, root, fold, args.minutes, args.threads, work)
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "per_case"}), file=sys.stderr, flush=True)
                if args.json:
                    path = Path(args.json)
                    old = json.loads(path.read_text())["rows"] if path.exists() else []
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps({"env": environment(), "rows": old + [row]}, indent=1))
    md = markdown(rows, environment())
    print(md)
    if args.write_docs:
        print(f"wrote {write_section(SECTION, md)}", file=sys.stderr)
    if args.record_cv:
        rec = record_cv(rows, args.record_cv[0], Path(args.record_cv[1]))
        print(f"recorded cross-validation mean Dice {rec['mean_dice']} in {args.record_cv[1]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
