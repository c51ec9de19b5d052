"""Peer baseline: our 2.5D network against a MONAI ``UNet`` trained the same way.

Run by hand (not in CI). Both networks get the same patients, the same slices, the
same preprocessing (:class:`~napari_gi_seg.training.trainer.SliceDataset` built from
the spec of :func:`~napari_gi_seg.training.trainer.make_spec`), the same augmentation,
loss (:func:`~napari_gi_seg.training.trainer.segmentation_loss`), batch size,
optimiser (AdamW, one-cycle learning rate) and the same wall-clock budget; only the
network differs. Validation is :func:`~napari_gi_seg.training.trainer.validate`
(3D Dice per class on the held-out patients' whole volumes at their native grid) on
the final weights of each (no best-epoch selection, so validation never steers
training).

Sequentially, both in one process (each gets the full budget)::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/peer_baseline.py --minutes 30 --threads 2 --write-docs

In parallel, one core each, then merge::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peer_baseline.py --which ours  --minutes 30 --threads 1 --json /tmp/pb-ours.json &
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peer_baseline.py --which monai --minutes 30 --threads 1 --json /tmp/pb-monai.json &
    wait; .venv/bin/python benchmarks/peer_baseline.py --merge /tmp/pb-ours.json /tmp/pb-monai.json --write-docs

Schedule. With a time budget the number of steps is not known in advance, so the
one-cycle schedule (Smith & Topin 2019; the formula of ``torch.optim.lr_scheduler.
OneCycleLR`` with cosine annealing, 10 % warm-up, ``div_factor`` 10,
``final_div_factor`` 100, as in the trainer) runs on the elapsed fraction of the
budget, ``max(seconds / budget, step / max_steps)``: each network completes one full
cycle in its budget however fast it steps. ``--steps N`` fixes the number of steps
instead (same for both), e.g. for runs on a GPU.

Data: ``napari_gi_seg.paths.data_dir() / "chaos_mr_t2spir"``, classes from
``--classes``; the patient split of the bundled model (``--val-fraction 0.25 --fold 0
--split-seed 0``: 12 training, 4 validation patients).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402  (benchmarks/ is not a package)

SECTION = "peer-baseline"


# ------------------------------------------------------------------ networks
def monai_unet(in_channels: int, out_channels: int):
    """MONAI ``UNet`` (Kerfoot et al. 2018, residual units), 2D,
    channels (16, 32, 64, 128, 256), strides (2, 2, 2, 2), 2 residual units:
    ``(N, in_channels, H, W) -> (N, out_channels, H, W)`` logits, H and W multiples of 16."""
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=(16, 32, 64, 128, 256),
        strides=(2, 2, 2, 2),
        num_res_units=2,
    )


def one_cycle_lr(
    frac: float, max_lr: float, pct_start: float = 0.1, div: float = 10.0, final_div: float = 100.0
) -> float:
    """Learning rate at fraction ``frac`` (0..1) of a cosine one-cycle schedule
    (same shape as ``torch.optim.lr_scheduler.OneCycleLR(anneal_strategy="cos")``)."""
    frac = min(max(frac, 0.0), 1.0)
    lo, hi, end = max_lr / div, max_lr, max_lr / div / final_div

    def cos(a, b, t):
        return b + (a - b) / 2 * (1 + math.cos(math.pi * t))

    if frac < pct_start:
        return cos(lo, hi, frac / pct_start)
    return cos(hi, end, (frac - pct_start) / (1 - pct_start))


def train_budgeted(
    net,
    spec,
    train_cases,
    *,
    minutes: float,
    max_steps: int | None,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    device,
    multilabel: bool = False,
    log_every: int = 50,
) -> dict:
    """Train ``net`` in place for ``minutes`` of wall-clock time (or ``max_steps``
    steps, whichever ends first) with the trainer's data pipeline, loss and optimiser.

    Returns ``{"steps", "epochs", "train_minutes", "final_loss"}`` (loss: mean of the
    last 50 steps). Data preparation (normalisation, resizing) is not counted in the
    budget.
    """
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from napari_gi_seg.training.trainer import SliceDataset, segmentation_loss

    torch.manual_seed(seed)
    allow_flip = not any(c.mirror for c in spec.classes)
    tds = SliceDataset(train_cases, spec, augment=True, allow_flip=allow_flip)
    loader = DataLoader(
        tds,
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(tds) > batch_size,
        generator=torch.Generator().manual_seed(seed),
    )
    net.to(device).train()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr / 10, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    budget_s = minutes * 60.0
    steps, epochs, losses = 0, 0, []
    t0 = time.perf_counter()

    def frac() -> float:
        f = (time.perf_counter() - t0) / budget_s if budget_s > 0 else 1.0
        return max(f, steps / max_steps) if max_steps else f

    while frac() < 1.0:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            for g in opt.param_groups:
                g["lr"] = one_cycle_lr(frac(), lr)
            with torch.autocast(device_type=device.type, enabled=device.type == "cuda"):
                logits = net(x)
            loss = segmentation_loss(logits.float(), y, multilabel)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            steps += 1
            losses.append(float(loss.detach()))
            if steps % log_every == 0:
                print(
                    f"  step {steps}: loss {np.mean(losses[-log_every:]):.4f}, "
                    f"{(time.perf_counter() - t0) / 60:.1f} min",
                    file=sys.stderr,
                    flush=True,
                )
            if frac() >= 1.0:
                break
        epochs += 1
    return {
        "steps": steps,
        "epochs": epochs,
        "train_minutes": (time.perf_counter() - t0) / 60,
        "final_loss": float(np.mean(losses[-50:])) if losses else float("nan"),
    }


# ------------------------------------------------------------------ one run
def load_data(args):
    """``(ds, spec, train_cases, val_cases, train_groups, val_groups)``."""
    from napari_gi_seg.datasets import open_dataset, split_groups
    from napari_gi_seg.paths import data_dir
    from napari_gi_seg.training.trainer import TrainConfig, make_spec

    root = Path(args.data) if args.data else (data_dir() / "chaos_mr_t2spir" if data_dir() else None)
    if root is None or not root.is_dir():
        raise SystemExit("CHAOS data not found: set NAPARI_GI_SEG_DATA or pass --data")
    ds = open_dataset(root, args.classes.split(","))
    cfg = TrainConfig(
        dataset=str(root),
        name="peer-baseline",
        class_names=ds.class_names,
        arch=args.arch_ours,
        encoder=args.encoder_ours,
        size=args.size,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    spec = make_spec(cfg, ds)
    tr, va = split_groups(ds.groups, args.val_fraction, args.fold, args.split_seed)
    if args.limit_patients:
        tr, va = tr[: args.limit_patients], va[: args.limit_patients]
    train_cases = [c.load() for c in ds.subset(tr).cases]
    val_cases = [c.load() for c in ds.subset(va).cases]
    if args.max_slices:  # smoke tests only: the central slices of each case
        import dataclasses

        from napari_gi_seg.datasets import Case

        def crop(c):
            z0 = max(0, c.image.shape[0] // 2 - args.max_slices // 2)
            sl = slice(z0, z0 + args.max_slices)
            vol = dataclasses.replace(c.image, data=c.image.data[sl])
            return Case(c.case_id, c.group, vol, c.target[sl])

        train_cases, val_cases = [crop(c) for c in train_cases], [crop(c) for c in val_cases]
    return ds, spec, train_cases, val_cases, tr, va


def run_one(which: str, args, data) -> dict:
    """Build, train and validate one network; returns its result row."""
    import torch

    from napari_gi_seg.engine.inference import resolve_device
    from napari_gi_seg.models.network import build_network
    from napari_gi_seg.training.trainer import validate

    ds, spec, train_cases, val_cases, tr, va = data
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    if which == "ours":
        net = build_network(spec)
        label = f"ours: smp {spec.architecture} / {spec.encoder} (random init, as the trainer)"
    else:
        net = monai_unet(len(spec.context_offsets), spec.out_channels)
        label = "MONAI UNet (16-256 ch, 4 strides, 2 res units)"
    n_params = sum(p.numel() for p in net.parameters())
    print(
        f"{label}, {n_params / 1e6:.2f} M parameters; {len(train_cases)} train / {len(val_cases)} "
        f"validation patients; {args.minutes} min budget",
        file=sys.stderr,
        flush=True,
    )
    t = train_budgeted(
        net,
        spec,
        train_cases,
        minutes=args.minutes,
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        device=device,
        multilabel=ds.multilabel,
    )
    t0 = time.perf_counter()
    m = validate(net, spec, val_cases, device)
    print(f"{which}: {t['steps']} steps, validation mean Dice {m['mean_dice']:.4f}", file=sys.stderr, flush=True)
    return {
        "which": which,
        "network": label,
        "parameters": n_params,
        **t,
        "validate_seconds": time.perf_counter() - t0,
        "mean_dice": m["mean_dice"],
        "per_class": {k: v["dice"] for k, v in m["per_class"].items()},
        "per_case": m["per_case"],
        "threads": torch.get_num_threads(),
        "device": str(device),
        "setup": {
            "minutes": args.minutes,
            "steps_cap": args.steps,
            "size": args.size,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "train_patients": tr,
            "val_patients": va,
            "classes": ds.class_names,
            "smoke": bool(args.max_slices or args.limit_patients),
        },
    }


# ------------------------------------------------------------------ report
def make_report(rows: list[dict]) -> dict:
    import torch

    return {
        "date": _dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores available, {platform.system()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "rows": rows,
    }


def markdown(report: dict) -> str:
    rows = {r["which"]: r for r in report["rows"]}
    any_row = next(iter(rows.values()))
    s = any_row["setup"]
    classes = s["classes"]
    lines = [
        "## Peer baseline: our network vs MONAI UNet (CHAOS T2-SPIR)",
        "",
        f"Measured {report['date']} with `benchmarks/peer_baseline.py` on {report['machine']}; torch {report['torch']}. "
        f"Same split (train {len(s['train_patients'])} patients, validation patients {', '.join(map(str, s['val_patients']))}), "
        f"same 2.5D input ({s['size']} px, slices -1/0/+1), augmentation, Dice + CE loss, AdamW one-cycle "
        f"(peak lr {s['lr']}), batch {s['batch_size']}, seed {s['seed']}, budget {s['minutes']} min of training each"
        + (f" (capped at {s['steps_cap']} steps)" if s["steps_cap"] else "")
        + ". "
        "Dice: 3D per class on the validation patients' whole volumes (native grid), final weights."
        + (" **Smoke run (cropped data): figures are not meaningful.**" if s.get("smoke") else ""),
        "",
        "| network | parameters (M) | threads | device | steps | epochs | train min | "
        + " | ".join(classes)
        + " | mean Dice |",
        "|---|---:|---:|---|---:|---:|---:|" + "---:|" * len(classes) + "---:|",
    ]
    for r in rows.values():
        lines.append(
            f"| {r['network']} | {r['parameters'] / 1e6:.2f} | {r['threads']} | {r['device']} | {r['steps']} | "
            f"{r['epochs']} | {r['train_minutes']:.1f} | "
            + " | ".join(f"{r['per_class'][c]:.3f}" for c in classes)
            + f" | **{r['mean_dice']:.3f}** |"
        )
    if "ours" in rows and "monai" in rows and rows["monai"]["mean_dice"] > 0:
        o, m = rows["ours"], rows["monai"]
        lines += [
            "",
            f"Ratio ours / MONAI (mean Dice): **{o['mean_dice'] / m['mean_dice']:.3f}**; per class: "
            + ", ".join(
                f"{c} {o['per_class'][c] / m['per_class'][c]:.3f}" if m["per_class"][c] > 0 else f"{c} -"
                for c in classes
            )
            + ".",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--which", choices=("ours", "monai", "both"), default="both")
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock training budget per network (default 30)")
    p.add_argument("--steps", type=int, default=None, help="fixed number of steps instead (or as a cap)")
    p.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: all cores)"
    )
    p.add_argument("--arch-ours", default="Unet", help="smp architecture of our network (default Unet)")
    p.add_argument("--encoder-ours", default="mobilenet_v2", help="smp encoder of our network (default mobilenet_v2)")
    p.add_argument("--size", type=int, default=160, help="in-plane size in px (multiple of 32; default 160)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3, the trainer's)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--data", help="dataset folder (default: data_dir()/chaos_mr_t2spir)")
    p.add_argument("--classes", default="liver,right_kidney,left_kidney,spleen")
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write this run's rows as JSON (for --merge)")
    p.add_argument("--merge", nargs="+", metavar="PATH", help="combine JSON files of earlier runs instead of training")
    p.add_argument("--write-docs", action="store_true", help="write the table into docs/benchmarks.md")
    p.add_argument("--max-slices", type=int, default=None, help=argparse.SUPPRESS)  # smoke tests
    p.add_argument("--limit-patients", type=int, default=None, help=argparse.SUPPRESS)  # smoke tests
    args = p.parse_args(argv)

    if args.merge:
        rows = [r for f in args.merge for r in json.loads(Path(f).read_text())["rows"]]
        report = {**json.loads(Path(args.merge[0]).read_text()), "rows": rows}
    else:
        import torch

        torch.set_num_threads(args.threads)
        data = load_data(args)
        rows = [run_one(w, args, data) for w in (("ours", "monai") if args.which == "both" else (args.which,))]
        report = make_report(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    md = markdown(report)
    print(md)
    if args.write_docs:
        print(f"wrote {write_section(SECTION, md)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
