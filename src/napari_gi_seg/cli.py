"""Command line: ``napari-gi-seg segment|models|train|finetune|evaluate|demo``.

Every sub-command exits 0 on success and non-zero with one clear line on stderr
(``napari-gi-seg: error: <file>: <problem>``) for bad input or an unknown model.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


class CLIError(Exception):
    """An error reported as one line and exit status 2."""


def _offsets(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"context must be comma-separated integers such as -1,0,1, got {s!r}")


def _names(s: str) -> list[str]:
    return [n.strip() for n in s.split(",") if n.strip()]


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="dataset folder (nnU-Net v2, UW-Madison, or image_<id>/label_<id> NIfTI pairs)")
    p.add_argument("--name", required=True, help="registry name of the new model")
    p.add_argument("--classes", type=_names, default=None, help="foreground class names in label order, comma-separated (NIfTI pairs without classes.json)")
    p.add_argument("--arch", default="Unet", choices=["Unet", "UnetPlusPlus", "DeepLabV3Plus", "FPN"])
    p.add_argument("--encoder", default="mobilenet_v2", help="any segmentation-models-pytorch encoder (default mobilenet_v2)")
    p.add_argument("--context", type=_offsets, default=(-1, 0, 1), help="2.5D slice offsets (default -1,0,1)")
    p.add_argument("--size", type=int, default=160, help="in-plane input size in pixels (default 160)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--val-fraction", type=float, default=0.25, help="fraction of patients held out for validation (0: none)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--patience", type=int, default=30, help="early stopping: epochs without validation improvement")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this many minutes (best checkpoint kept)")
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--work-dir", default=None, help="run folder (checkpoints, metrics.csv, training_curve.png)")
    p.add_argument("--exclude", type=_names, default=[], help="case-days/cases to leave out, comma-separated (UW-Madison: known faulty ones)")
    p.add_argument("--description", default="")
    p.add_argument("--num-workers", type=int, default=0)


def cmd_train(args: argparse.Namespace) -> int:
    from .training.trainer import TrainConfig, train

    cfg = TrainConfig(
        dataset=args.dataset, name=args.name, class_names=args.classes, arch=args.arch, encoder=args.encoder,
        context=args.context, size=args.size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        val_fraction=args.val_fraction, fold=args.fold, seed=args.seed, device=args.device, resume=args.resume,
        patience=args.patience, max_minutes=args.max_minutes, max_steps_per_epoch=args.max_steps_per_epoch,
        work_dir=args.work_dir, exclude=args.exclude, description=args.description, num_workers=args.num_workers,
    )
    res = train(cfg)
    if res.entry is not None:
        print(f"registered {res.spec.key}  validation mean Dice {res.best_metrics.get('mean_dice', float('nan')):.4f}  ({res.entry.folder})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-gi-seg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a new model and register it")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("napari-gi-seg: interrupted", file=sys.stderr)
        return 130
    except (CLIError, OSError, ValueError, LookupError) as e:
        print(f"napari-gi-seg: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
