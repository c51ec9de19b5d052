"""Prompted segmentation: the promptable model against the random walker on the same prompts.

Protocol (CVPR 2025 "Foundation Models for Interactive 3D Biomedical Image
Segmentation" challenge): a box (the object's tight bounding box on the slice), then
clicks, each at the deepest point of the largest error region
(:func:`napari_gi_seg.interactive.next_click`); Dice after the box and after each
click, NoC@90 (clicks to Dice 0.90, capped at ``--max-clicks``), latency of each call.

- **2D**: per slice, on ``--slices`` slices per organ (evenly spaced through the organ's
  slices with at least 100 pixels), every CHAOS organ, every contrast (T2-SPIR, T1
  in-phase, T1 opposed-phase), the held-out patients of fold 0 (1, 3, 36, 37: never
  seen by the bundled model).
- **3D**: the box on the organ's largest slice, one propagation through the stack
  (:meth:`PromptSession.propagate`), 3D Dice against the organ.
- **GI check**: the two real UW-Madison slices (``uwmgi/scans_sample``, labels from
  ``train.csv`` via the package's reader; manual), stomach / small / large bowel, the
  largest connected part of each as the object; the TotalSegmentator MR example
  (stomach, small bowel, duodenum, colon: its labels are **TotalSegmentator's
  predictions**, not manual), 2D on the largest slice and 3D.

Run (by hand, not in CI; about 10-40 min on 2 busy cores)::

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/interactive.py \\
        --data ../shared/data --json interactive.json --markdown interactive.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_gi_seg.interactive import RANDOM_WALKER, PromptSession, clicks_to_reach, dice, next_click
from napari_gi_seg.interactive.encoding import bbox_of
from napari_gi_seg.training.prompt_data import CHAOS_ORGANS, CONTRASTS, load_chaos_mr
from napari_gi_seg.training.prompt_train import FOLD0_TEST

#: Goals from issue 21 (on patients the model never saw).
GOALS = {"dice_box5": 0.92, "noc90_fewer_by": 1.0, "median_click_s": 0.3, "dice_3d": 0.85}


def run_2d(session: PromptSession, truth: np.ndarray, z: int, max_clicks: int) -> dict:
    """Box + up to ``max_clicks`` clicks on slice ``z``; Dice after each, seconds per call."""
    session.new_object()
    box = bbox_of(truth)
    n0 = len(session.timings)
    m = session.add_box(z, *box)
    dices = [dice(m, truth)]
    for _ in range(max_clicks):
        c = next_click(m, truth)
        if c is None:
            dices.append(1.0)
            continue
        m = session.add_point(z, c[0], c[1], positive=c[2])
        dices.append(dice(m, truth))
    secs = [t for _, t in session.timings[n0:]]
    return {"dices": dices, "box_s": secs[0], "click_s": secs[1:]}


def run_3d(session: PromptSession, truth3: np.ndarray) -> dict:
    """Box on the largest slice, one propagation; 3D Dice and seconds."""
    session.new_object()
    z = int(np.argmax(truth3.sum((1, 2))))
    session.add_box(z, *bbox_of(truth3[z]))
    t0 = time.perf_counter()
    n0 = len(session.timings)
    m3 = session.propagate()
    return {
        "dice_3d": dice(m3, truth3),
        "propagate_s": time.perf_counter() - t0,
        "slice_s": [t for _, t in session.timings[n0:]],
        "slices": int(m3.any((1, 2)).sum()),
        "truth_slices": int(truth3.any((1, 2)).sum()),
    }


def chaos_objects(stack, slices_per_organ: int):
    for k, name in CHAOS_ORGANS.items():
        organ = stack.labels == k
        areas = organ.sum((1, 2))
        zs = np.flatnonzero(areas >= 100)
        if zs.size == 0:
            continue
        pick = sorted({int(zs[int(round(q * (len(zs) - 1)))]) for q in np.linspace(0.2, 0.8, slices_per_organ)})
        yield name, organ, pick


def largest_part(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    return lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)


def summarise(rows: list[dict], max_clicks: int) -> dict:
    d = np.array([r["dices"] for r in rows])
    clicks = [t for r in rows for t in r["click_s"]]
    return {
        "n": len(rows),
        "dice_box": float(d[:, 0].mean()),
        "dice_box5": float(d[:, min(5, d.shape[1] - 1)].mean()),
        "dice_by_click": [round(float(v), 4) for v in d.mean(0)],
        "noc90": float(np.mean([clicks_to_reach(r["dices"], 0.9, max_clicks) for r in rows])),
        "reached90": float(np.mean([max(r["dices"]) >= 0.9 for r in rows])),
        "click_median_s": float(np.median(clicks)) if clicks else None,
        "click_p95_s": float(np.percentile(clicks, 95)) if clicks else None,
    }


def summarise_3d(rows: list[dict]) -> dict:
    return {
        "n": len(rows),
        "dice_3d": float(np.mean([r["dice_3d"] for r in rows])),
        "dice_3d_median": float(np.median([r["dice_3d"] for r in rows])),
        "propagate_median_s": float(np.median([r["propagate_s"] for r in rows])),
        "propagate_p95_s": float(np.percentile([r["propagate_s"] for r in rows], 95)),
        "slice_median_s": float(np.median([t for r in rows for t in r["slice_s"]] or [0])),
    }


def _kind(method: str) -> str:
    return "random walker" if method.startswith("random walker") else "promptable model"


def cv_markdown(files: list[Path], looo: Path | None = None, organ: str = "spleen", max_clicks: int = 8) -> str:
    """The cross-validation table from one ``--json`` per fold (each fold's own
    promptable model and the random walker on its held-out patients): per fold and
    pooled, 2D (Dice box, box + 5, NoC@90, reached 0.90) and 3D from one slice; with
    ``looo``, the run of a model trained without ``organ``, scored on that organ only."""
    head = ("| fold | method | objects | Dice box | Dice box+5 | NoC@90 | reached 0.90 | 3D Dice (organs) |\n"
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")  # fmt: skip
    lines, pooled2, pooled3 = [head], {}, {}

    def row(fold, kind, r2, r3):
        a, b = summarise(r2, max_clicks), summarise_3d(r3) if r3 else None
        d3 = f"{b['dice_3d']:.3f} ({b['n']})" if b else ""
        return (f"| {fold} | {kind} | {a['n']} | {a['dice_box']:.3f} | {a['dice_box5']:.3f} | {a['noc90']:.2f} | "
                f"{100 * a['reached90']:.0f} % | {d3} |")  # fmt: skip

    for i, f in enumerate(files):
        res = json.loads(Path(f).read_text())
        for kind in ("promptable model", "random walker"):
            r2 = [r for r in res["raw2d"] if _kind(r["method"]) == kind]
            r3 = [r for r in res["raw3d"] if _kind(r["method"]) == kind]
            if r2:
                pats = sorted({r["patient"] for r in r2}, key=int)
                lines.append(row(f"{i} ({', '.join(pats)})", kind, r2, r3))
                pooled2.setdefault(kind, []).extend(r2)
                pooled3.setdefault(kind, []).extend(r3)
    for kind in pooled2:
        lines.append(row("**all**", f"**{kind}**", pooled2[kind], pooled3[kind]))
    if looo:
        res = json.loads(Path(looo).read_text())
        lines += ["", f"Leave-one-organ-out: the model trained without the {organ}, scored on the {organ} only.", "",
                  head]  # fmt: skip
        for kind in ("promptable model", "random walker"):
            r2 = [r for r in res["raw2d"] if _kind(r["method"]) == kind and r["organ"] == organ]
            r3 = [r for r in res["raw3d"] if _kind(r["method"]) == kind and r["organ"] == organ]
            if r2:
                lines.append(row(f"0, {organ} only", kind, r2, r3))
    return "\n".join(lines)


def gi_check(data: Path, methods: list[str], max_clicks: int) -> dict:
    """UW-Madison slices (manual labels) and the TotalSegmentator MR (predicted labels)."""
    from napari_gi_seg.io import read_image, read_labels
    from napari_gi_seg.io.uwmgi import UWMGI_CLASSES, read_uwmgi_case_day, read_uwmgi_multilabel

    out = {"uwmgi": {}, "totalseg": {}}
    csv = data / "uwmgi" / "train.csv"
    for folder in sorted((data / "uwmgi" / "scans_sample" / "train").glob("case*/case*_day*")):
        vol = read_uwmgi_case_day(folder)
        number = int(next((folder / "scans").glob("slice_*.png")).name.split("_")[1])
        masks = read_uwmgi_multilabel(csv, folder.name, (1, *vol.shape[1:]), [number])
        for k, cls in enumerate(UWMGI_CLASSES):
            truth = largest_part(masks[k, 0] > 0)
            if truth.sum() < 30:
                continue
            for m in methods:
                s = PromptSession(vol, model=m)
                r = run_2d(s, truth, 0, max_clicks)
                out["uwmgi"].setdefault(m, []).append({"object": f"{folder.name} {cls}", **r})
    ts = data / "totalseg_example_mr"
    if ts.exists():
        img = read_image(ts / "example_mr_sm.nii.gz")[0]
        lab = read_labels(ts / "example_seg_mr.nii.gz", like=img).data
        for value, cls in ((6, "stomach"), (13, "small_bowel"), (14, "duodenum"), (15, "colon")):
            organ = lab == value
            z = int(np.argmax(organ.sum((1, 2))))
            truth = largest_part(organ[z])
            for m in methods:
                s = PromptSession(img, model=m)
                r = run_2d(s, truth, z, max_clicks)
                r3 = run_3d(s, organ) if cls in ("stomach", "colon") else {}
                out["totalseg"].setdefault(m, []).append({"object": cls, **r, **r3})
    return out


def apply_settings(session: PromptSession, settings: list[str]) -> None:
    """``KEY=VALUE`` on the session, ``propagator.KEY=VALUE`` on its propagator; values
    are Python literals (``None``, ``0.1``, ``True``)."""
    import ast

    for item in settings:
        key, _, value = item.partition("=")
        target = session
        if key.startswith("propagator."):
            target, key = session.propagator, key.split(".", 1)[1]
        if not hasattr(target, key):
            raise SystemExit(f"--set: {type(target).__name__} has no attribute {key!r}")
        setattr(target, key, ast.literal_eval(value))


def markdown(res: dict) -> str:
    lines = []
    mc = res["max_clicks"]
    if res["2d"]:
        lines += [
            "| method | contrast | objects | Dice box | Dice box+5 | NoC@90 | reached 0.90 | click median s | click p95 s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for m, per in res["2d"].items():
            for c, s in per.items():
                lines.append(
                    f"| {m} | {c} | {s['n']} | {s['dice_box']:.3f} | {s['dice_box5']:.3f} | {s['noc90']:.2f} "
                    f"| {100 * s['reached90']:.0f} % | {s['click_median_s']:.3f} | {s['click_p95_s']:.3f} |"
                )
        lines += ["", f"NoC@90 capped at {mc} clicks.", ""]
    lines += [
        "| method | contrast | organs | 3D Dice (mean) | median | propagation median s | p95 s | per slice s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m, per in res["3d"].items():
        for c, s in per.items():
            lines.append(
                f"| {m} | {c} | {s['n']} | {s['dice_3d']:.3f} | {s['dice_3d_median']:.3f} | "
                f"{s['propagate_median_s']:.2f} | {s['propagate_p95_s']:.2f} | {s['slice_median_s']:.3f} |"
            )
    gi = res.get("gi") or {}
    if gi:
        lines += [
            "",
            "| data | object | method | Dice box | Dice box+5 | NoC@90 | 3D Dice |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for data, per in gi.items():
            for m, rows in per.items():
                for r in rows:
                    d = r["dices"]
                    d3 = f"{r['dice_3d']:.3f}" if "dice_3d" in r else ""
                    lines.append(
                        f"| {data} | {r['object']} | {m} | {d[0]:.3f} | {d[min(5, len(d) - 1)]:.3f} | "
                        f"{clicks_to_reach(d, 0.9, mc)} | {d3} |"
                    )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data", type=Path)
    ap.add_argument("--patients", nargs="+", default=FOLD0_TEST)
    ap.add_argument("--contrasts", nargs="+", default=list(CONTRASTS))
    ap.add_argument("--methods", nargs="+", default=["default", RANDOM_WALKER], help="'default' = bundled model")
    ap.add_argument("--slices", type=int, default=3, help="slices per organ (2D)")
    ap.add_argument("--max-clicks", type=int, default=10)
    ap.add_argument("--no-3d", action="store_true")
    ap.add_argument("--no-2d", action="store_true")
    ap.add_argument(
        "--propagator", default=None, help="'model': propagate with the prompt backend (default: the session's default)"
    )
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="session (or propagator, 'propagator.KEY') attributes for propagation, e.g. "
        "intensity_shift_mad=1.5 or propagator.beta=90.0; the label is appended to the method's name",
    )
    ap.add_argument("--label", default=None, help="name of this --set setting in the tables (default: the settings)")
    ap.add_argument("--no-gi", action="store_true")
    ap.add_argument("--include", type=Path, nargs="*", default=[], help="--json files of earlier runs to merge in")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument(
        "--summarise-cv",
        type=Path,
        nargs="*",
        default=None,
        metavar="FOLD_JSON",
        help="print the cross-validation table of one --json per fold and exit",
    )
    ap.add_argument("--looo", type=Path, default=None, help="with --summarise-cv: the leave-one-organ-out run")
    args = ap.parse_args(argv)
    if args.summarise_cv:
        print(cv_markdown(args.summarise_cv, args.looo, max_clicks=args.max_clicks))
        return 0
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    methods = [None if m == "default" else m for m in args.methods]
    names = {None: "promptable model", RANDOM_WALKER: "random walker"}
    res = {"max_clicks": args.max_clicks, "2d": {}, "3d": {}, "raw2d": [], "raw3d": []}
    t_start = time.time()
    for pid in args.patients:
        for st in load_chaos_mr(args.data / "chaos_mr_dicom", [pid], args.contrasts):
            for m in methods:
                s = PromptSession(st.image, model=m, propagator=args.propagator)
                apply_settings(s, args.set)
                key = names.get(m, str(m))
                if args.propagator == "model" and m != RANDOM_WALKER:
                    key += " (model propagation)"
                if args.set:
                    key += f" [{args.label or ' '.join(args.set)}]"
                for organ_name, organ, zs in chaos_objects(st, args.slices):
                    for z in zs if not args.no_2d else []:
                        r = run_2d(s, organ[z], z, args.max_clicks)
                        res["raw2d"].append(
                            {"method": key, "patient": pid, "contrast": st.contrast, "organ": organ_name, "z": z, **r}
                        )
                    if not args.no_3d:
                        r3 = run_3d(s, organ)
                        res["raw3d"].append(
                            {"method": key, "patient": pid, "contrast": st.contrast, "organ": organ_name, **r3}
                        )
            print(f"{pid} {st.contrast} done ({time.time() - t_start:.0f} s)", file=sys.stderr, flush=True)
    gi_before = {}
    for prev in args.include:
        old = json.loads(prev.read_text())
        res["raw2d"] += old.get("raw2d", [])
        res["raw3d"] += old.get("raw3d", [])
        for d, per in (old.get("gi") or {}).items():
            gi_before.setdefault(d, {}).update(per)
    for key in sorted({r["method"] for r in res["raw2d"] + res["raw3d"]}):
        rows = [r for r in res["raw2d"] if r["method"] == key]
        rows3 = [r for r in res["raw3d"] if r["method"] == key]
        contrasts = [c for c in CONTRASTS if any(r["contrast"] == c for r in rows + rows3)]
        if rows:
            per = {c: summarise([r for r in rows if r["contrast"] == c], args.max_clicks) for c in contrasts}
            per["all"] = summarise(rows, args.max_clicks)
            res["2d"][key] = per
        if rows3:
            p3 = {c: summarise_3d([r for r in rows3 if r["contrast"] == c]) for c in contrasts}
            p3["all"] = summarise_3d(rows3)
            res["3d"][key] = p3
    if not args.no_gi:
        gi = gi_check(args.data, methods, args.max_clicks)
        res["gi"] = {d: {names.get(m, str(m)): v for m, v in per.items()} for d, per in gi.items()}
    for d, per in gi_before.items():
        res.setdefault("gi", {}).setdefault(d, {}).update(per)
    res["seconds"] = round(time.time() - t_start, 1)
    res["host"] = f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    md = markdown(res)
    print(md)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    if args.markdown:
        args.markdown.write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
