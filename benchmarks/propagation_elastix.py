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
    r = propagate(vol, lab, today, settings=RegistrationSettings(threads=threads))
    d_sitk = _mean([{"scores": {"b": score(r.labels.data, truth, today.spacing_mm)}}], "b", "dice")
    with sitk_threads(threads):
        mv = to_sitk(vol.data, world_zyx_affine(vol), np.float32)
        fx = to_sitk(today.data, world_zyx_affine(today), np.float32)
        li = to_sitk(np.asarray(lab, np.uint8), world_zyx_affine(vol))
        fxw, mvw = smooth_resample(fx, (4.0, 4.0, 0.0)), smooth_resample(mv, (4.0, 4.0, 0.0))
        fm = sitk.Resample(_body_mask(fx), fxw, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        mm = sitk.Resample(_roi_mask(li, 30.0), mvw, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        tf, sec = elastix_transform(fxw, mvw, fm if MASKS["on"] else None, mm, threads)
        ref = to_sitk(np.zeros(today.shape, np.uint8), world_zyx_affine(today))
        out = warp_labels(li, ref, tf, "distance")
    d_el = _mean([{"scores": {"b": score(out, truth, today.spacing_mm)}}], "b", "dice")
    folded = float(
        (sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(tf.GetDisplacementField())) <= 0).mean()
    )
    print(
        f"{kind} {pid}: Dice SimpleITK {d_sitk:.3f} ({r.seconds:.1f} s whole call, registration "
        f"{sum(r.stage_seconds.values()):.1f} s) | elastix {d_el:.3f} (registration + field {sec:.1f} s); "
        f"load {load:.1f}",
        flush=True,
    )
    return {
        "kind": kind,
        "patient": pid,
        "dice_simpleitk": d_sitk,
        "dice_elastix": d_el,
        "seconds_simpleitk_registration": round(sum(r.stage_seconds.values()), 1),
        "seconds_simpleitk_call": round(r.seconds, 1),
        "seconds_elastix": round(sec, 1),
        "folded_simpleitk": r.folded_fraction,
        "folded_elastix": folded,
        "load": round(load, 1),
    }


def summary(rows: list[dict]) -> str:
    """Markdown table: per kind of pair, mean Dice and median seconds of both."""
    out = ["| pairs | n | SimpleITK Dice | elastix Dice | elastix better | SimpleITK s (median) | elastix s (median) |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for kind in sorted({r["kind"] for r in rows}):
        rs = [r for r in rows if r["kind"] == kind]
        out.append(
            f"| {kind} | {len(rs)} | {np.mean([r['dice_simpleitk'] for r in rs]):.3f} | "
            f"{np.mean([r['dice_elastix'] for r in rs]):.3f} | "
            f"{sum(r['dice_elastix'] > r['dice_simpleitk'] for r in rs)} | "
            f"{np.median([r['seconds_simpleitk_registration'] for r in rs]):.1f} | "
            f"{np.median([r['seconds_elastix'] for r in rs]):.1f} |"
        )
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="synthetic:1,synthetic:2,t2->t1:1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--masks", action="store_true", help="give elastix the masks too")
    ap.add_argument("--json", default=None, help="write the rows here after every pair")
    args = ap.parse_args(argv)
    MASKS["on"] = args.masks
    rows = []
    for p in args.pairs.split(","):
        kind, pid = p.split(":")
        rows.append(run(kind, pid, args.threads))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
