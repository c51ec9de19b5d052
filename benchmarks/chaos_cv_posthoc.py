"""Inference-time options scored on the fold weights of :mod:`chaos_cv` runs, without
training: the post-processing (fragments reassigned, largest component only, none),
flip TTA, and an ensemble of two runs' weights of the same fold (the same 12 training
patients, so the ensemble is cross-validated too).

Each ``--cv RESULTS_JSON WORK_DIR`` names a cross-validation run of ``chaos_cv.py`` (its
results JSON and its ``--work`` folder, which holds ``fold<k>/checkpoint_last.pt``:
tensors only, never unpickled). For every fold of the first run, its held-out series are
segmented with the weights of each run that has that fold: ``pp`` (the project's
post-processing, :func:`~napari_gi_seg.engine.postprocess.postprocess_labels`: largest
component per organ, fragments reassigned to the organ around them), ``largest`` (the
largest component only, fragments to background: the step before 2026-12-04; the
``cc`` of the older reports), ``none`` (no post-processing; all three from one
inference), ``pp_tta`` (flip TTA), and with two or more runs ``ensemble`` (class
probabilities averaged over the runs, argmax, then the post-processing; cost: one
inference per run). 3D Dice per organ at the native grid. The spec is the bundled
default's (network, frame, classes)::

    OMP_NUM_THREADS=1 python benchmarks/chaos_cv_posthoc.py --cv runs/a.json runs/a-runs \\
        --cv runs/b.json runs/b-runs --json runs/posthoc.json

Run by hand (not in CI): about 6 s per series and option on one thread.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

CLASSES = ("liver", "right_kidney", "left_kidney", "spleen")
SEQUENCES = ("t2spir", "t1in", "t1out")


def _dice(labels, target) -> dict[str, float]:
    from napari_gi_seg.evaluation.metrics import dice_per_class

    d = dice_per_class(labels, target, [1, 2, 3, 4])
    return {c: float(d[i + 1]) for i, c in enumerate(CLASSES)}


def posthoc(data: Path, runs: list[tuple[Path, Path]], model: str = "chaos-t2spir") -> dict:
    """``{case_id: {option: {organ: dice}}}`` for the held-out series of every fold of
    ``runs[0]``; options ``<run>:pp``, ``<run>:largest``, ``<run>:none``, ``<run>:pp_tta``
    per run that has the fold, and ``ensemble`` when two or more do."""
    import torch

    from napari_gi_seg.datasets import open_dataset
    from napari_gi_seg.engine.inference import segment_volume
    from napari_gi_seg.engine.postprocess import keep_largest_components, postprocess_labels
    from napari_gi_seg.models.network import build_network
    from napari_gi_seg.models.registry import get_entry
    from napari_gi_seg.training.checkpoint import load_checkpoint

    spec = get_entry(model).spec()
    folds = [{f["fold"]: f for f in json.loads(Path(js).read_text())["folds"]} for js, _ in runs]
    ds = open_dataset(data, list(CLASSES))
    out: dict = {}
    for k, rec in sorted(folds[0].items()):
        nets = {}
        for (js, work), fr in zip(runs, folds):
            if k in fr:
                net = build_network(spec)
                net.load_state_dict(load_checkpoint(Path(work) / f"fold{k}" / "checkpoint_last.pt")["model"])
                nets[Path(js).stem] = net.eval()
        for ref in ds.subset(rec["val_patients"]).cases:
            case, res, probs = ref.load(), {}, []
            for name, net in nets.items():
                with torch.no_grad():
                    r = segment_volume(case.image, spec, net, device="cpu", return_probs=True, postprocess=False)
                    tta = segment_volume(case.image, spec, net, device="cpu", tta=True).labels
                probs.append(r.probs.astype(np.float32))
                res[f"{name}:pp"] = _dice(postprocess_labels(r.labels, spec), case.target)
                res[f"{name}:largest"] = _dice(keep_largest_components(r.labels, spec), case.target)
                res[f"{name}:none"] = _dice(r.labels, case.target)
                res[f"{name}:pp_tta"] = _dice(tta, case.target)
            if len(probs) > 1:
                lab = postprocess_labels(np.mean(probs, 0).argmax(0).astype(np.uint8), spec)
                res["ensemble"] = _dice(lab, case.target)
            out[ref.case_id] = res
            print(ref.case_id, {o: round(float(np.mean(list(v.values()))), 3) for o, v in res.items()}, flush=True)
    return out


def table(out: dict) -> str:
    """Markdown: mean Dice (of the four organs) per option and contrast, over the series
    that have the option."""
    options = sorted({o for v in out.values() for o in v})
    lines = ["| option | series | " + " | ".join(SEQUENCES) + " |", "|---|---:|" + "---:|" * len(SEQUENCES)]
    for o in options:
        cells, n = [], 0
        for s in SEQUENCES:
            rows = [np.mean(list(v[o].values())) for c, v in out.items() if c.endswith("_" + s) and o in v]
            n += len(rows)
            cells.append(f"{np.mean(rows):.3f}" if rows else "-")
        lines.append(f"| {o} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared/data/chaos_mr_dicom"))
    p.add_argument("--cv", nargs=2, action="append", metavar=("RESULTS_JSON", "WORK_DIR"), default=None)
    p.add_argument("--model", default="chaos-t2spir", help="registered model whose spec the fold weights use")
    p.add_argument("--json", default="chaos-cv-posthoc.json")
    p.add_argument("--summarise", default=None, help="print the table of a results JSON and exit")
    a = p.parse_args(argv)
    if a.summarise:
        print(table(json.loads(Path(a.summarise).read_text())))
        return 0
    if not a.cv:
        p.error("give at least one --cv RESULTS_JSON WORK_DIR")
    import torch

    torch.set_num_threads(1)
    out = posthoc(Path(a.data).resolve(), [(Path(j), Path(w)) for j, w in a.cv], a.model)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1))
    print(table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
