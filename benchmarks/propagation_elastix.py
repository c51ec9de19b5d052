"""Propagation: itk-elastix against the SimpleITK pipeline on a few CHAOS pairs (issue 23).

Run by hand (not in CI; needs the optional ``itk-elastix``)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/propagation_elastix.py --pairs synthetic:1,synthetic:2,t2->t1:1

Both get the same inputs: the working grid of :func:`napari_gi_seg.propagation.registration.register`
(4 mm in-plane, smoothed), rigid -> affine -> B-spline (50 mm final grid, two
resolutions, Mattes mutual information, 20k random samples, seed fixed); SimpleITK also gets today's body and the structures' region of interest as masks,
elastix only with ``--masks`` (which crashed here). elastix's
transform becomes a dense displacement field, and the labels go through the package's
signed-distance warp (:func:`napari_gi_seg.propagation.warp.warp_labels`), so only the
registration differs (elastix: Klein et al., IEEE TMI 29:196, 2010; itk-elastix: Python
wrapping of elastix in ITK). Prints Dice per pair and seconds of the registration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from propagation import _mean, score  # noqa: E402
from propagation_helpers import load_chaos, synthetic_next_day  # noqa: E402

#: ``--masks``: give elastix the body and ROI masks (crashed with itk-elastix 0.25.4 on these grids).
MASKS = {"on": False}


def _to_itk(img):
    import itk
    import SimpleITK as sitk

    out = itk.image_from_array(np.ascontiguousarray(sitk.GetArrayFromImage(img)).copy())
    out.SetSpacing(img.GetSpacing())
    out.SetOrigin(img.GetOrigin())
    out.SetDirection(itk.matrix_from_array(np.asarray(img.GetDirection()).reshape(3, 3)))
    return out


def elastix_transform(fixed, moving, fmask, mmask, threads: int = 2, seed: int = 1):
    """elastix rigid -> affine -> B-spline of SimpleITK ``moving`` onto ``fixed`` (working grid);
    a SimpleITK DisplacementFieldTransform (fixed points -> moving points)."""
    import itk
    import SimpleITK as sitk

    po = itk.ParameterObject.New()
    for name in ("rigid", "affine", "bspline"):
        pm = po.GetDefaultParameterMap(name, 2)
        pm["NumberOfSpatialSamples"] = ["20000"]
        pm["MaximumNumberOfIterations"] = ["60" if name != "bspline" else "60"]
        pm["RandomSeed"] = [str(seed)]
        pm["ImageSampler"] = ["RandomCoordinate"]
        pm["ErodeMask"] = ["false"]
        if name == "bspline":
            pm["FinalGridSpacingInPhysicalUnits"] = ["50"]
            pm["GridSpacingSchedule"] = ["2.0", "1.0"]
        po.AddParameterMap(pm)
    fx, mv = _to_itk(sitk.Cast(fixed, sitk.sitkFloat32)), _to_itk(sitk.Cast(moving, sitk.sitkFloat32))
    kw = {}
    if fmask is not None:  # masks crashed the interpreter (segfault) with itk-elastix 0.25.4 here: off by default
        kw["fixed_mask"] = _to_itk(sitk.Cast(fmask, sitk.sitkUInt8))
        kw["moving_mask"] = _to_itk(sitk.Cast(mmask, sitk.sitkUInt8))
    t = time.perf_counter()
    _, params = itk.elastix_registration_method(
        fx, mv, parameter_object=po, number_of_threads=threads, log_to_console=False, **kw
    )
    with tempfile.TemporaryDirectory() as scratch:  # transformix writes deformationField.nii to its output directory
        field = itk.transformix_deformation_field(mv, params, output_directory=scratch)
    arr = np.asarray(itk.array_from_image(field), np.float64)
    disp = sitk.GetImageFromArray(arr, isVector=True)
    disp.CopyInformation(fixed)
    return sitk.DisplacementFieldTransform(disp), time.perf_counter() - t


def run(kind: str, pid: str, threads: int) -> None:
    import SimpleITK as sitk

    from napari_gi_seg.propagation import RegistrationSettings, propagate
    from napari_gi_seg.propagation._sitk import sitk_threads, smooth_resample, to_sitk, world_zyx_affine
    from napari_gi_seg.propagation.propagate import _body_mask, _roi_mask
    from napari_gi_seg.propagation.warp import warp_labels

    vol, lab = load_chaos(pid, "t2")
    if kind == "synthetic":
        today, truth, _ = synthetic_next_day(vol, lab, seed=int(pid))
    else:
        today, truth = load_chaos(pid, "t1in")
    load = os.getloadavg()[0]
    errors = {}
    try:
        r = propagate(vol, lab, today, settings=RegistrationSettings(threads=threads))
        d_sitk = _mean([{"scores": {"b": score(r.labels.data, truth, today.spacing_mm)}}], "b", "dice")
    except Exception as e:  # noqa: BLE001 - a failed registration is a result of the pair
        r, d_sitk, errors["simpleitk"] = None, float("nan"), str(e).strip().splitlines()[-1][:200]
    with sitk_threads(threads):
        mv = to_sitk(vol.data, world_zyx_affine(vol), np.float32)
        fx = to_sitk(today.data, world_zyx_affine(today), np.float32)
        li = to_sitk(np.asarray(lab, np.uint8), world_zyx_affine(vol))
        fxw, mvw = smooth_resample(fx, (4.0, 4.0, 0.0)), smooth_resample(mv, (4.0, 4.0, 0.0))
        fm = sitk.Resample(_body_mask(fx), fxw, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        mm = sitk.Resample(_roi_mask(li, 30.0), mvw, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        ref = to_sitk(np.zeros(today.shape, np.uint8), world_zyx_affine(today))
        floor = warp_labels(li, ref, sitk.Transform(3, sitk.sitkIdentity), "distance")  # scanner coordinates
        try:
            tf, sec = elastix_transform(fxw, mvw, fm if MASKS["on"] else None, mm, threads)
            out = warp_labels(li, ref, tf, "distance")
            folded = float(
                (
                    sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(tf.GetDisplacementField())) <= 0
                ).mean()
            )
            d_el = _mean([{"scores": {"b": score(out, truth, today.spacing_mm)}}], "b", "dice")
        except RuntimeError as e:  # elastix's "Internal elastix error" on a pair
            d_el, sec, folded = float("nan"), float("nan"), float("nan")
            errors["elastix"] = str(e).strip().splitlines()[-1][:200]
    d_floor = _mean([{"scores": {"b": score(floor, truth, today.spacing_mm)}}], "b", "dice")
    print(
        f"{kind} {pid}: Dice floor {d_floor:.3f} | SimpleITK {d_sitk:.3f} "
        f"({(r.seconds if r else float('nan')):.1f} s whole call) | elastix {d_el:.3f} "
        f"(registration + field {sec:.1f} s); load {load:.1f} {errors or ''}",
        flush=True,
    )
    return {
        "kind": kind,
        "patient": pid,
        "dice_floor": d_floor,
        "dice_simpleitk": d_sitk,
        "dice_elastix": d_el,
        "seconds_simpleitk_registration": round(sum(r.stage_seconds.values()), 1) if r else float("nan"),
        "seconds_simpleitk_call": round(r.seconds, 1) if r else float("nan"),
        "seconds_elastix": round(sec, 1),
        "folded_simpleitk": r.folded_fraction if r else float("nan"),
        "folded_elastix": folded,
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
    ap.add_argument("--masks", action="store_true", help="give elastix the masks too")
    ap.add_argument("--json", default=None, help="write the rows here after every pair (pairs already there are kept)")
    args = ap.parse_args(argv)
    MASKS["on"] = args.masks
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
