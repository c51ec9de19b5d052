"""Propagation: the itk-elastix backend against the SimpleITK one on CHAOS pairs (issue 23).

Run by hand (not in CI; needs the optional ``itk-elastix``)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/propagation_elastix.py --pairs synthetic:1,t2->t1:1 --json out.json

Both are the package's own :func:`napari_gi_seg.propagation.propagate` with
``RegistrationSettings(backend=...)``: the same working grid (4 mm in-plane, smoothed),
masks (today's body, the previous structures + 30 mm), rigid -> affine -> B-spline
(50 mm final grid, two resolutions, Mattes mutual information, 20k seeded samples) and
signed-distance label warping, so only the registration library differs (elastix: Klein
et al., IEEE TMI 29:196, 2010, in a child process, one thread). The floor is the labels
carried by scanner coordinates. A registration that fails is a row with its error.
Prints Dice per pair and seconds; ``--json`` keeps the rows (pairs already there are
skipped, so a run resumes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from propagation import _mean, score  # noqa: E402
from propagation_helpers import load_chaos, synthetic_next_day  # noqa: E402


def _one(vol, lab, today, truth, settings):
    """Dice, the result (or None) and the error text (or None) of one propagate() call."""
    from napari_gi_seg.propagation import propagate

    try:
        r = propagate(vol, lab, today, settings=settings)
    except Exception as e:  # noqa: BLE001 - a failed registration is a result of the pair
        return float("nan"), None, str(e).strip().splitlines()[-1][:200]
    return _mean([{"scores": {"b": score(r.labels.data, truth, today.spacing_mm)}}], "b", "dice"), r, None


def run(kind: str, pid: str, threads: int) -> dict:
    """One pair: floor, SimpleITK chain and elastix chain on CHAOS patient ``pid``."""
    from napari_gi_seg.propagation import RegistrationSettings

    vol, lab = load_chaos(pid, "t2")
    if kind == "synthetic":
        today, truth, _ = synthetic_next_day(vol, lab, seed=int(pid))
    else:
        today, truth = load_chaos(pid, "t1in")
    load = os.getloadavg()[0]
    d_floor, _, _ = _one(vol, lab, today, truth, RegistrationSettings(stages=(), threads=threads))
    d_sitk, r, e_sitk = _one(vol, lab, today, truth, RegistrationSettings(threads=threads))
    d_el, re, e_el = _one(vol, lab, today, truth, RegistrationSettings(backend="elastix", threads=1))
    errors = {k: v for k, v in (("simpleitk", e_sitk), ("elastix", e_el)) if v}
    nan = float("nan")
    print(
        f"{kind} {pid}: Dice floor {d_floor:.3f} | SimpleITK {d_sitk:.3f} ({r.seconds if r else nan:.1f} s) | "
        f"elastix {d_el:.3f} ({re.seconds if re else nan:.1f} s); load {load:.1f} {errors or ''}",
        flush=True,
    )
    return {
        "kind": kind,
        "patient": pid,
        "dice_floor": d_floor,
        "dice_simpleitk": d_sitk,
        "dice_elastix": d_el,
        "seconds_simpleitk_registration": round(sum(r.stage_seconds.values()), 1) if r else nan,
        "seconds_simpleitk_call": round(r.seconds, 1) if r else nan,
        "seconds_elastix": round(re.seconds, 1) if re else nan,
        "folded_simpleitk": r.folded_fraction if r else nan,
        "folded_elastix": re.folded_fraction if re else nan,
        "load": round(load, 1),
        "errors": errors,
    }


def summary(rows: list[dict]) -> str:
    """Markdown table: per kind of pair, mean Dice and median seconds of both."""
    out = ["| pairs | n | floor Dice | SimpleITK Dice | elastix Dice | elastix > SimpleITK | elastix > floor | failed (SimpleITK, elastix) | SimpleITK s (median) | elastix s (median) |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip

    def m(rs, k):  # mean over the pairs where it ran; a failed pair is counted apart
        v = [r[k] for r in rs if k in r and np.isfinite(r[k])]
        return f"{np.mean(v):.3f}" if v else "-"

    for kind in sorted({r["kind"] for r in rows}):
        rs = [r for r in rows if r["kind"] == kind]
        fails = [sum(bool(r.get("errors", {}).get(k)) for r in rs) for k in ("simpleitk", "elastix")]
        out.append(
            f"| {kind} | {len(rs)} | {m(rs, 'dice_floor')} | {m(rs, 'dice_simpleitk')} | {m(rs, 'dice_elastix')} | "
            f"{sum(r['dice_elastix'] > r['dice_simpleitk'] for r in rs)} | "
            f"{sum(r['dice_elastix'] > r.get('dice_floor', np.inf) for r in rs)} | {fails[0]}, {fails[1]} | "
            f"{np.nanmedian([r['seconds_simpleitk_registration'] for r in rs]):.1f} | "
            f"{np.nanmedian([r['seconds_elastix'] for r in rs]):.1f} |"
        )
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="synthetic:1,synthetic:2,t2->t1:1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--masks", action="store_true", help="ignored: both backends always get the masks (kept for old commands)"
    )
    ap.add_argument("--json", default=None, help="write the rows here after every pair (pairs already there are kept)")
    args = ap.parse_args(argv)
    rows = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).exists() else []
    done = {(r["kind"], r["patient"]) for r in rows if "dice_floor" in r}  # rows of an older run are redone
    rows = [r for r in rows if (r["kind"], r["patient"]) in done]
    for p in args.pairs.split(","):
        kind, pid = p.split(":")
        if (kind, pid) in done:
            continue
        rows.append(run(kind, pid, args.threads))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
