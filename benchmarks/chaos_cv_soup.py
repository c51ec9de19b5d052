"""Weight averaging ("model soup") of two or more :mod:`chaos_cv` runs, cross-validated,
and the bundled model built from the same average of the runs trained on every patient.

Every run fine-tunes the same starting weights (``chaos-t2spir:2``) on the same patients
with a different recipe (e.g. with and without inverted-intensity samples), so their
weights can be averaged (:func:`napari_gi_seg.models.soup.average_weights`; Wortsman et
al., ICML 2022). Cross-validation: ``--cv RESULTS_JSON WORK_DIR`` per run (the results
JSON and ``--work`` folder of ``chaos_cv.py``, whose ``fold<k>/checkpoint_last.pt`` hold
the fold's final weights: tensors only, never unpickled); for every fold all runs have,
the average of their fold weights segments the fold's held-out series with the product's
validation (:func:`napari_gi_seg.training.validation.validate`: whole series at the
native grid, the spec's post-processing), 3D Dice per organ. The output JSON has
``chaos_cv.py``'s format, so ``chaos_cv.py --summarise`` and ``--attach`` read it::

    OMP_NUM_THREADS=1 python benchmarks/chaos_cv_soup.py --cv runs/a.json runs/a-runs \\
        --cv runs/b.json runs/b-runs --json runs/soup.json
    python benchmarks/chaos_cv.py --summarise runs/soup.json

``--final RUN_DIR RUN_DIR [...] --register NAME --version V`` averages the runs trained
on every patient (``chaos_cv.py --final``: their ``checkpoint_last.pt``, and the model
each registered, named in its ``run.json``) and registers the average as ``NAME:V`` (``--bundled``: in the package's
bundled models), its spec and card from the first run's with the other runs named in
``training.soup``; ``--cv-json`` attaches the soup's cross-validation to it.

Run by hand (not in CI): about 2 s per held-out series on one thread.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CLASSES = ("liver", "right_kidney", "left_kidney", "spleen")


def _net(spec, checkpoint: Path):
    from napari_gi_seg.models.network import build_network
    from napari_gi_seg.training.checkpoint import load_checkpoint

    net = build_network(spec)
    net.load_state_dict(load_checkpoint(checkpoint)["model"])
    return net.eval()


def soup_cv(data: Path, runs: list[tuple[Path, Path]], model: str = "chaos-t2spir", tta: bool = False) -> dict:
    """``{"folds": [...], "runs": [...]}`` in ``chaos_cv.py``'s results format; each fold's
    record has the runs' ``steps`` summed (the training cost of the soup) and
    ``steps_per_run``; with ``tta`` also ``per_case_tta`` (flip TTA, same weights)."""
    import torch

    from napari_gi_seg.datasets import open_dataset
    from napari_gi_seg.engine.inference import segment_volume
    from napari_gi_seg.evaluation.metrics import dice_per_class
    from napari_gi_seg.models.registry import get_entry
    from napari_gi_seg.models.soup import average_weights
    from napari_gi_seg.training.validation import validate

    spec = get_entry(model).spec()
    folds = [{f["fold"]: f for f in json.loads(Path(js).read_text())["folds"]} for js, _ in runs]
    ds = open_dataset(data, list(CLASSES))
    out = {"runs": [str(Path(js).name) for js, _ in runs], "folds": []}
    for k in sorted(set.intersection(*(set(f) for f in folds))):
        recs = [f[k] for f in folds]
        if any(r["val_patients"] != recs[0]["val_patients"] for r in recs):
            raise SystemExit(f"fold {k}: the runs held out different patients")
        ckpts = [Path(w) / f"fold{k}" / "checkpoint_last.pt" for _, w in runs]
        net = average_weights([_net(spec, c) for c in ckpts], [str(c) for c in ckpts])
        cases = [c.load() for c in ds.subset(recs[0]["val_patients"]).cases]
        r = validate(net, spec, cases, torch.device("cpu"))
        rec = {
            **{
                key: recs[0][key]
                for key in ("fold", "arch", "encoder", "gate", "size", "train_patients", "val_patients")
            },
            "base": recs[0].get("base"),
            "soup_of": [
                {"invert_intensity": x.get("invert_intensity", 0.0), "budget_epochs": x.get("budget_epochs")}
                for x in recs
            ],
            "steps": sum(x["steps"] for x in recs),
            "steps_per_run": [x["steps"] for x in recs],
            "epochs": sum(x["epochs"] for x in recs),
            "train_minutes": round(sum(x["train_minutes"] for x in recs), 2),
            "per_case": {cid: {c: float(v[c]) for c in CLASSES} for cid, v in r["per_case"].items()},
        }
        if tta:
            rec["per_case_tta"] = {}
            for c in cases:
                with torch.no_grad():
                    lab = segment_volume(c.image, spec, net, device="cpu", tta=True).labels
                d = dice_per_class(lab, c.target, [1, 2, 3, 4])
                rec["per_case_tta"][c.case_id] = {n: float(d[i + 1]) for i, n in enumerate(CLASSES)}
        out["folds"].append(rec)
        print(f"fold {k}:", {cid: round(sum(v.values()) / 4, 3) for cid, v in rec["per_case"].items()}, flush=True)
    return out


def register_soup(
    run_dirs: list[Path],
    name: str,
    version: int,
    bundled: bool,
    cv_json: Path | None,
    measured_on: str,
    description: str = "",
    like: str | None = None,
):
    """Average the final runs' weights and register them as ``name:version``. ``like``:
    a registered model trained on the same data whose frame ranges (the OOD warning's)
    and dataset naming the new spec takes (a fine-tune's spec widens the ranges to its
    base model's)."""
    import datetime as dt

    from chaos_cv import cross_validation_metrics
    from napari_gi_seg.models.card import model_card
    from napari_gi_seg.models.registry import BUNDLED_ROOT, get_entry, register_model
    from napari_gi_seg.models.soup import average_weights
    from napari_gi_seg.models.spec import ModelSpec

    # each final run registered itself (chaos_cv.py --final NAME): its run.json names the version
    specs = [
        get_entry(r["name"], r["version"]).spec() for r in (json.loads((d / "run.json").read_text()) for d in run_dirs)
    ]
    spec = ModelSpec.from_dict(specs[0].to_dict())
    nets = [_net(spec, d / "checkpoint_last.pt") for d in run_dirs]
    soup = average_weights(nets, [str(d) for d in run_dirs])
    spec.name, spec.version = name, version
    spec.training = {**spec.training, "config": {**spec.training.get("config", {}), "name": name}}
    if like:
        ref = get_entry(like).spec()
        spec.frame = ref.frame
        spec.training = {
            **spec.training,
            **{k: ref.training[k] for k in ("dataset", "layout", "train_patients") if k in ref.training},
        }
    spec.description = description or spec.description
    spec.created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    spec.training = {
        **spec.training,
        "soup": [
            {
                "invert_intensity": s.training["config"].get("invert_intensity", 0.0),
                "epochs_run": s.training.get("epochs_run"),
                "optimiser_steps": s.training.get("optimiser_steps"),
                "minutes": s.training.get("minutes"),
            }
            for s in specs
        ],
        "optimiser_steps": sum(s.training.get("optimiser_steps") or 0 for s in specs),
    }
    if cv_json is not None:
        spec.metrics = {"cross_validation": cross_validation_metrics(json.loads(cv_json.read_text()), measured_on)}
    entry = register_model(
        spec,
        model=soup,
        root=BUNDLED_ROOT if bundled else None,
        half=True,
        extra_files={"MODEL_CARD.md": model_card},
    )
    print(f"registered {entry.key} in {entry.folder}")
    return entry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared/data/chaos_mr_dicom"))
    p.add_argument("--cv", nargs=2, action="append", metavar=("RESULTS_JSON", "WORK_DIR"), default=None)
    p.add_argument("--model", default="chaos-t2spir", help="registered model whose spec the fold weights use")
    p.add_argument("--json", default="chaos-cv-soup.json")
    p.add_argument("--tta", action="store_true", help="also score flip TTA on the averaged weights")
    p.add_argument("--final", nargs="+", default=None, metavar="RUN_DIR", help="final runs (trained on every patient)")
    p.add_argument("--register", default=None, metavar="NAME")
    p.add_argument("--version", type=int, default=None)
    p.add_argument("--bundled", action="store_true", help="register in the package's bundled models")
    p.add_argument("--cv-json", default=None, help="with --final: the soup's cross-validation to attach")
    p.add_argument("--measured-on", default="")
    p.add_argument("--description", default="", help="with --final: the model's description")
    p.add_argument("--like", default=None, help="with --final: take frame ranges and dataset naming from this model")
    p.add_argument("--summarise", default=None, help="print the tables of a results JSON (plain, TTA) and exit")
    a = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if a.summarise:
        from chaos_cv import markdown, summarise

        out = json.loads(Path(a.summarise).read_text())
        for key, title in (("per_case", "soup, contrast"), ("per_case_tta", "soup + flip TTA, contrast")):
            cv = {k: v for f in out["folds"] for k, v in f.get(key, {}).items()}
            if cv:
                print(markdown(summarise(cv), title))
        print("steps per fold:", [f["steps_per_run"] for f in out["folds"]])
        return 0
    import torch

    torch.set_num_threads(1)
    if a.final:
        if len(a.final) < 2 or not a.register or a.version is None:
            p.error("--final needs two or more run folders, --register NAME and --version V")
        register_soup(
            [Path(d) for d in a.final],
            a.register,
            a.version,
            a.bundled,
            Path(a.cv_json) if a.cv_json else None,
            a.measured_on,
            a.description,
            a.like,
        )
        return 0
    if not a.cv or len(a.cv) < 2:
        p.error("give two or more --cv RESULTS_JSON WORK_DIR")
    out = soup_cv(Path(a.data).resolve(), [(Path(j), Path(w)) for j, w in a.cv], a.model, a.tta)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
