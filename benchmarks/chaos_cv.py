"""4-fold patient cross-validation of the multi-contrast recipe on the CHAOS MR DICOM
(T2-SPIR, T1 in-phase, T1 opposed-phase), per contrast and organ.

The 16 patients of ``../shared/data/chaos_mr_dicom`` (the organisers' DICOM and Ground
PNGs, read by the ``chaos`` dataset layout) are cut into 4 patient folds
(:func:`napari_gi_seg.datasets.split_groups`, ``val_fraction 0.25``, seed 0): a patient's
three contrasts are always on the same side. Each fold trains the recipe of the bundled
model (MONAI ``UNet`` ``16-256-res2-batch``, flips ``keep``, the trainer's MONAI
intensity augmentation, one-cycle over ``--minutes`` of wall-clock training) on 12
patients x 3 contrasts and scores the 4 held-out patients' 12 series: 3D Dice per organ
on each whole series at its native grid, final weights (no epoch chosen on them).

``--baseline MODEL`` also scores a registered model (e.g. ``chaos-t2spir:2``) on the
same held-out series (the before row of docs/benchmarks.md). Results go to ``--json``
after every fold (a partial run keeps what it did)::

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/chaos_cv.py --minutes 9 --size 176 \\
        --json runs/chaos-cv.json --baseline chaos-t2spir:2
    python benchmarks/chaos_cv.py --summarise runs/chaos-cv.json

``--arch ARCH [--encoder E] [--gate T]`` trains another network of the spec
(:data:`napari_gi_seg.models.spec.ARCHITECTURES`) or adds the empty-slice gate: the
side-by-side of docs/benchmarks.md runs each at the same ``--minutes``.

Run by hand (not in CI): about ``folds x (minutes + 2)`` minutes on one thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

CLASSES = ("liver", "right_kidney", "left_kidney", "spleen")
SEQUENCES = ("t2spir", "t1in", "t1out")


def _save(path: Path, out: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(path)


def _init(base: str | None):
    """``(spec, state dict)`` of the registered model ``base`` to start from, or ``None``."""
    if not base:
        return None
    from napari_gi_seg.models.registry import load_model

    spec, net = load_model(base)
    return spec, {k: v.float() for k, v in net.state_dict().items()}


def run_fold(
    root: Path,
    fold: int,
    minutes: float,
    size: int,
    work: Path,
    seed: int = 0,
    base: str | None = None,
    lr: float = 2e-3,
    name: str = "chaos-cv",
    description: str = "",
    arch: str = "monai.UNet",
    encoder: str | None = "16-256-res2-batch",
    gate: float | None = None,
    epochs: int | None = None,
    invert: float = 0.0,
) -> dict:
    """Train fold ``fold`` (``fold < 0``: every patient, registered as ``name``) and score
    its held-out series; returns the fold's record. ``base``: start from that registered
    model (its frame and normalisation are kept, as in ``finetune``). ``epochs``: a fixed
    budget of that many epochs (one-cycle over ``epochs x steps per epoch``, the same
    steps whatever the machine's load) instead of ``minutes`` of wall clock; the run
    resumes from its folder's ``checkpoint_last.pt`` when one is there."""
    from napari_gi_seg.training.trainer import TrainConfig, Trainer

    final = fold < 0
    cfg = TrainConfig(
        dataset=str(root),
        name=name,
        lr=lr,
        description=description,
        class_names=list(CLASSES),
        arch=arch,
        encoder=encoder,
        gate_threshold=gate,
        size=size,
        epochs=epochs or 100000,
        budget_minutes=None if epochs else minutes,
        resume=bool(epochs),
        val_fraction=0.0 if final else 0.25,
        fold=max(fold, 0),
        seed=seed,
        device="cpu",
        patience=100000,
        val_every=100000,  # validate once, when the budget is spent: final weights
        work_dir=str(work / ("final" if final else f"fold{fold}")),
        register=final,
        single_component=list(CLASSES),
        flip_augment=True,
        flip_labels="keep",
        invert_intensity=invert,
    )
    t = Trainer(cfg, init=_init(base))
    t0 = time.time()
    res = t.fit()
    gate_effect = gate_on_off(res.spec, res.model, t.val_cases) if res.spec.gate and not final else None
    return {
        "gate_effect": gate_effect,
        "base": base,
        "arch": res.spec.architecture,
        "encoder": res.spec.encoder,
        "gate": res.spec.gate,
        "lr": lr,
        "registered": res.spec.key if res.entry is not None else None,
        "fold": fold,
        "minutes": None if epochs else minutes,
        "budget_epochs": epochs,
        "invert_intensity": invert,
        "size": size,
        "steps": int(getattr(t.sched, "last_epoch", 0)),
        "epochs": len(res.history),
        "train_minutes": round(getattr(t.sched, "elapsed_s", sum(r.get("seconds", 0) for r in res.history)) / 60, 2),
        "wall_minutes": round((time.time() - t0) / 60, 2),
        "train_patients": t.train_groups,
        "val_patients": t.val_groups,
        "frame": res.spec.to_dict()["frame"],
        "per_case": {k: {c: float(v[c]) for c in CLASSES} for k, v in res.best_metrics.get("per_case", {}).items()},
    }


def gate_on_off(spec, net, cases) -> dict:
    """The gate's effect on the same weights: per series, Dice per organ without the
    gate (``per_case_ungated``), and over all slices of the held-out series: slices the
    gate emptied that the ungated network had painted, split by whether the reference
    holds an organ there (``emptied_organ`` = slices lost, ``emptied_empty`` = false
    positives removed), and the reference's organ / organ-less slice counts."""
    from napari_gi_seg.engine.inference import segment_volume
    from napari_gi_seg.evaluation.metrics import dice_per_class
    from napari_gi_seg.models.spec import ModelSpec

    plain = ModelSpec.from_dict({**spec.to_dict(), "gate": {}})
    out = {"per_case_ungated": {}, "emptied_organ": 0, "emptied_empty": 0, "organ_slices": 0, "empty_slices": 0}
    for c in cases:
        ref = c.target
        has = ((ref > 0) & (ref < 255)).reshape(len(ref), -1).any(1)
        lg = segment_volume(c.image, spec, net, device="cpu").labels
        lp = segment_volume(c.image, plain, net, device="cpu").labels
        d = dice_per_class(lp, ref, [k.index for k in spec.classes])
        out["per_case_ungated"][c.case_id] = {k.name: float(d[k.index]) for k in spec.classes}
        emptied = (lp.reshape(len(lp), -1) > 0).any(1) & ~(lg.reshape(len(lg), -1) > 0).any(1)
        out["emptied_organ"] += int((emptied & has).sum())
        out["emptied_empty"] += int((emptied & ~has).sum())
        out["organ_slices"] += int(has.sum())
        out["empty_slices"] += int((~has).sum())
    return out


def run_baseline(root: Path, model: str, patients: list[str]) -> dict:
    """Dice per organ of a registered model on every series of ``patients``."""
    import torch

    from napari_gi_seg.datasets import open_dataset
    from napari_gi_seg.models.registry import load_model
    from napari_gi_seg.training.validation import validate

    spec, net = load_model(model)
    ds = open_dataset(root, list(CLASSES)).subset(patients)
    r = validate(net, spec, [c.load() for c in ds.cases], torch.device("cpu"))
    return {k: {c: float(v[c]) for c in CLASSES} for k, v in r["per_case"].items()}


def summarise(per_case: dict[str, dict[str, float]]) -> dict:
    """Per contrast (and all): per organ mean +- sd over series, mean Dice of the 4-organ means."""
    out = {}
    for seq in (*SEQUENCES, "all"):
        rows = [v for k, v in per_case.items() if seq == "all" or k.endswith("_" + seq)]
        if not rows:
            continue
        means = [np.mean([r[c] for c in CLASSES]) for r in rows]
        out[seq] = {
            "n": len(rows),
            **{c: (float(np.mean([r[c] for r in rows])), float(np.std([r[c] for r in rows]))) for c in CLASSES},
            "mean": (float(np.mean(means)), float(np.std(means))),
        }
    return out


def markdown(summary: dict, title: str) -> str:
    lines = [f"| {title} | series | " + " | ".join(CLASSES) + " | mean Dice |", "|---|---:|" + "---:|" * 5]
    for seq, s in summary.items():
        cells = " | ".join(f"{s[c][0]:.3f} +- {s[c][1]:.3f}" for c in CLASSES)
        lines.append(f"| {seq} | {s['n']} | {cells} | **{s['mean'][0]:.3f} +- {s['mean'][1]:.3f}** |")
    return "\n".join(lines)


def cross_validation_metrics(out: dict, measured_on: str) -> dict:
    """``spec.metrics["cross_validation"]`` (the card's CV tables) from a results JSON of
    this script: all series, then per contrast; mean +- sd over series."""
    cv = {k: v for f in out["folds"] for k, v in f["per_case"].items()}
    summ = summarise(cv)

    def block(s):
        return {
            "mean_dice": round(s["mean"][0], 4),
            "sd": round(s["mean"][1], 4),
            "n": s["n"],
            "per_class": {c: {"dice": round(s[c][0], 4), "sd": round(s[c][1], 4)} for c in CLASSES},
        }

    return {
        **block(summ["all"]),
        "series": summ["all"]["n"],
        "folds": len(out["folds"]),
        "patients": len({p for f in out["folds"] for p in f["val_patients"]}),
        "steps_per_fold": [f["steps"] for f in out["folds"]],
        "per_sequence": {seq: block(summ[seq]) for seq in SEQUENCES if seq in summ},
        "measured_on": measured_on,
    }


def attach(cv_json: Path, model_dir: Path, measured_on: str) -> None:
    """Write the cross-validation of ``cv_json`` into the spec of the registered model
    folder ``model_dir`` and regenerate its MODEL_CARD.md (weights untouched)."""
    from napari_gi_seg.models.card import model_card
    from napari_gi_seg.models.spec import ModelSpec

    out = json.loads(Path(cv_json).read_text())
    spec = ModelSpec.load(model_dir / "spec.json")
    spec.metrics["cross_validation"] = cross_validation_metrics(out, measured_on)
    spec.save(model_dir / "spec.json")
    (model_dir / "MODEL_CARD.md").write_text(model_card(spec))


def tta_effect(root: Path, out: dict, work: Path, base: str) -> dict:
    """Flip TTA on the cross-validation's own weights: each fold's ``checkpoint_last.pt``
    (tensors only, never unpickled) in ``base``'s spec, its held-out series segmented
    without and with flip TTA; ``{"per_case_plain", "per_case_tta", "seconds_plain",
    "seconds_tta"}``."""
    import torch

    from napari_gi_seg.datasets import open_dataset
    from napari_gi_seg.engine.inference import segment_volume
    from napari_gi_seg.evaluation.metrics import dice_per_class
    from napari_gi_seg.models.network import build_network
    from napari_gi_seg.models.registry import get_entry
    from napari_gi_seg.training.checkpoint import load_checkpoint

    spec = get_entry(base).spec()
    res = {"per_case_plain": {}, "per_case_tta": {}, "seconds_plain": 0.0, "seconds_tta": 0.0}
    for f in out["folds"]:
        net = build_network(spec)
        net.load_state_dict(load_checkpoint(work / f"fold{f['fold']}" / "checkpoint_last.pt")["model"])
        net.eval()
        for ref in open_dataset(root, list(CLASSES)).subset(f["val_patients"]).cases:
            case = ref.load()
            for tta in (False, True):
                t = time.perf_counter()
                with torch.no_grad():
                    lab = segment_volume(case.image, spec, net, device="cpu", tta=tta).labels
                res["seconds_tta" if tta else "seconds_plain"] += time.perf_counter() - t
                d = dice_per_class(lab, case.target, [1, 2, 3, 4])
                res["per_case_tta" if tta else "per_case_plain"][ref.case_id] = {
                    c: float(d[i + 1]) for i, c in enumerate(CLASSES)
                }
            print(f"TTA {ref.case_id}: plain {np.mean(list(res['per_case_plain'][ref.case_id].values())):.3f} "
                  f"tta {np.mean(list(res['per_case_tta'][ref.case_id].values())):.3f}", flush=True)  # fmt: skip
    return res


def _net_args(a) -> dict:
    """``arch``/``encoder``/``gate`` of :func:`run_fold` from the command line."""
    from napari_gi_seg.training.config import default_encoder

    enc = a.encoder or ("16-256-res2-batch" if a.arch == "monai.UNet" else default_encoder(a.arch))
    return {"arch": a.arch, "encoder": enc, "gate": a.gate}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared/data/chaos_mr_dicom"))
    p.add_argument("--folds", default="0,1,2,3")
    p.add_argument("--minutes", type=float, default=9.0, help="training budget per fold")
    p.add_argument("--size", type=int, default=176)
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="a fixed budget of epochs (same steps at any load) instead of --minutes",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=None, help="run folders (default: next to --json)")
    p.add_argument("--json", default="chaos-cv.json")
    p.add_argument("--baseline", default=None, help="registered model also scored on the held-out series")
    p.add_argument("--base", default=None, help="start every fold from this registered model (a fine-tune)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--final", default=None, metavar="NAME", help="train on every patient and register as NAME")
    p.add_argument("--description", default="")
    p.add_argument("--arch", default="monai.UNet", help="network (models.spec.ARCHITECTURES)")
    p.add_argument("--encoder", default=None, help="its encoder or preset (default: the bundled recipe's)")
    p.add_argument("--gate", type=float, default=None, metavar="T", help="add the empty-slice gate, threshold T")
    p.add_argument(
        "--invert", type=float, default=0.0, metavar="P", help="probability of an inverted-intensity training sample"
    )
    p.add_argument("--summarise", default=None, help="print the tables of a results JSON and exit")
    p.add_argument(
        "--attach",
        nargs=2,
        metavar=("CV_JSON", "MODEL_DIR"),
        default=None,
        help="write a results JSON's CV into a model folder's spec and card, then exit",
    )
    p.add_argument(
        "--tta", action="store_true", help="score flip TTA on the folds of --json (their checkpoints), then exit"
    )
    p.add_argument("--measured-on", default="", help="with --attach: where and how the CV was measured")
    a = p.parse_args(argv)
    if a.attach:
        attach(Path(a.attach[0]), Path(a.attach[1]), a.measured_on)
        return 0
    if a.summarise:
        out = json.loads(Path(a.summarise).read_text())
        cv = {k: v for f in out["folds"] for k, v in f["per_case"].items()}
        print(markdown(summarise(cv), "CV, contrast"))
        for f in out["folds"]:
            print(f"{f.get('arch', 'monai.UNet')}/{f.get('encoder', '')} gate {f.get('gate') or '-'}", end="; ")
            print(f"fold {f['fold']}: {f['steps']} steps, {f['epochs']} epochs, {f['train_minutes']} min")
        if out.get("baseline"):
            print()
            print(markdown(summarise(out["baseline"]), f"{out['baseline_model']}, contrast"))
        return 0
    import torch

    torch.set_num_threads(a.threads)
    root, path = Path(a.data).resolve(), Path(a.json)
    work = Path(a.work) if a.work else path.parent / (path.stem + "-runs")
    if a.tta:
        out = json.loads(path.read_text())
        out["tta"] = tta_effect(root, out, work, a.base or "chaos-t2spir:2")
        _save(path, out)
        print(markdown(summarise(out["tta"]["per_case_plain"]), "plain (same weights)"))
        print(markdown(summarise(out["tta"]["per_case_tta"]), "flip TTA"))
        print(f"seconds: plain {out['tta']['seconds_plain']:.0f}, TTA {out['tta']['seconds_tta']:.0f}")
        return 0
    if a.final:
        rec = run_fold(
            root,
            -1,
            a.minutes,
            a.size,
            work,
            base=a.base,
            lr=a.lr,
            name=a.final,
            description=a.description,
            epochs=a.epochs,
            invert=a.invert,
            **_net_args(a),
        )
        _save(path, {"final": rec})
        print(f"registered {rec['registered']}: {rec['steps']} steps, {rec['epochs']} epochs", flush=True)
        return 0
    out = json.loads(path.read_text()) if path.exists() else {"folds": [], "baseline": {}}
    done = {f["fold"] for f in out["folds"]}
    for fold in (int(f) for f in a.folds.split(",")):
        if fold in done:
            continue
        rec = run_fold(
            root, fold, a.minutes, a.size, work, base=a.base, lr=a.lr, epochs=a.epochs, invert=a.invert, **_net_args(a)
        )
        out["folds"].append(rec)
        _save(path, out)
        print(f"fold {fold}: {rec['steps']} steps; " + json.dumps(summarise(rec["per_case"])["all"]), flush=True)
        if a.baseline:
            out["baseline_model"] = a.baseline
            out["baseline"].update(run_baseline(root, a.baseline, rec["val_patients"]))
            _save(path, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
