"""The itk-elastix backend of :func:`~napari_gi_seg.propagation.registration.register`.

elastix (Klein et al., "elastix: a toolbox for intensity-based medical image
registration", IEEE TMI 29:196, 2010; Python wrapping: itk-elastix) runs the same
rigid -> affine -> B-spline chain as the SimpleITK backend, each stage with elastix's
default parameter map for it (Mattes mutual information, adaptive stochastic gradient
descent with automatically estimated step sizes, a multi-resolution pyramid) on the
same working grid, masks and seeded random sampling. Measured on CHAOS
(``benchmarks/propagation_elastix.py``, docs/benchmarks.md): on T2-SPIR -> T1 in-phase
pairs of one session, where SimpleITK's chain went off in several patients (mean Dice
0.363), elastix reached 0.795 against 0.660 by scanner coordinates (above them in 13 of
16 patients, 0.02-0.12 below in 3); on synthetic next days the two backends are within
0.004 Dice.

itk-elastix is optional (``pip install itk-elastix``); :func:`elastix_available` says
whether it can be imported. The transform comes back as a SimpleITK displacement field
on the working grid, so label warping and the folded-fraction check are the
backend-independent code of :mod:`.warp`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["elastix_available", "register_elastix"]

_FINAL_METRIC = re.compile(r"Final metric value\s*=\s*([-+0-9.eE]+)")


def elastix_available() -> bool:
    """Whether itk-elastix can be imported (the optional ``elastix`` backend)."""
    try:
        import itk  # noqa: F401

        return hasattr(itk, "elastix_registration_method")
    except ImportError:
        return False


def _image_payload(img) -> dict | None:
    """A SimpleITK image as plain data for the child process (array, spacing, origin, direction)."""
    if img is None:
        return None
    import SimpleITK as sitk

    return {
        "array": np.ascontiguousarray(sitk.GetArrayFromImage(img)),
        "spacing": tuple(img.GetSpacing()),
        "origin": tuple(img.GetOrigin()),
        "direction": tuple(img.GetDirection()),
    }


def _to_itk(d: dict, dtype):
    import itk

    out = itk.image_from_array(np.ascontiguousarray(d["array"], dtype=dtype))
    out.SetSpacing(d["spacing"])
    out.SetOrigin(d["origin"])
    out.SetDirection(itk.matrix_from_array(np.asarray(d["direction"], np.float64).reshape(3, 3)))
    return out


def _parameter_object(stages, p: dict):
    import itk

    po = itk.ParameterObject.New()
    for name in stages:
        pm = po.GetDefaultParameterMap(name, 2)  # two resolutions, as the SimpleITK pyramid
        pm["NumberOfSpatialSamples"] = [str(p["samples"] if name != "bspline" else p["bspline_samples"])]
        pm["MaximumNumberOfIterations"] = [str(p["iterations"])]
        pm["NumberOfHistogramBins"] = [str(p["bins"])]
        pm["RandomSeed"] = [str(p["seed"] + 1)]  # elastix reads 0 as "no seed"
        pm["ImageSampler"] = ["RandomCoordinate"]
        pm["ErodeMask"] = ["false"]
        if name == stages[0] and p["initial"] == "moments":  # align the centres of mass first
            pm["AutomaticTransformInitialization"] = ["true"]
            pm["AutomaticTransformInitializationMethod"] = ["CenterOfGravity"]
        if name == "bspline":
            pm["FinalGridSpacingInPhysicalUnits"] = [str(p["bspline_grid_mm"])]
            pm["GridSpacingSchedule"] = ["2.0", "1.0"]
        po.AddParameterMap(pm)
    return po


def _save_job(folder: Path, job: dict) -> None:
    """The child's input: arrays in ``job.npz`` (no pickle), the rest in ``job.json``."""
    arrays, meta = {}, {}
    for key in ("fixed", "moving", "fixed_mask", "moving_mask"):
        d = job[key]
        if d is not None:
            arrays[key] = d["array"]
            meta[key] = {k: v for k, v in d.items() if k != "array"}
    np.savez(folder / "job.npz", **arrays)
    (folder / "job.json").write_text(
        json.dumps({"images": meta, **{k: job[k] for k in ("stages", "threads", "params")}})
    )


def _load_job(folder: Path) -> dict:
    spec = json.loads((folder / "job.json").read_text())
    with np.load(folder / "job.npz", allow_pickle=False) as z:
        job = {k: ({"array": z[k], **spec["images"][k]} if k in spec["images"] else None)
               for k in ("fixed", "moving", "fixed_mask", "moving_mask")}  # fmt: skip
    job.update({k: spec[k] for k in ("stages", "threads", "params")})
    return job


def _child(folder: Path) -> int:
    """The child process (``python -m napari_gi_seg.propagation.elastix FOLDER``): run
    elastix and transformix on ``FOLDER/job.*``, write ``field.npy`` and ``result.json``
    (``{"ok": true, "metric": m}`` or ``{"ok": false, "error": why}``)."""
    import itk

    job = _load_job(folder)
    fxi, mvi = _to_itk(job["fixed"], np.float32), _to_itk(job["moving"], np.float32)
    kw = {}
    if job["fixed_mask"] is not None:
        kw["fixed_mask"] = _to_itk(job["fixed_mask"], np.uint8)
    if job["moving_mask"] is not None:
        kw["moving_mask"] = _to_itk(job["moving_mask"], np.uint8)
    scratch = folder / "elastix"
    scratch.mkdir(exist_ok=True)
    try:
        _, params = itk.elastix_registration_method(
            fxi,
            mvi,
            parameter_object=_parameter_object(tuple(job["stages"]), job["params"]),
            number_of_threads=int(job["threads"]),
            log_to_console=False,
            log_to_file=True,
            output_directory=str(scratch),
            **kw,
        )
        field = itk.transformix_deformation_field(mvi, params, output_directory=str(scratch))
    except RuntimeError as e:
        log = scratch / "elastix.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        why = next((x.strip() for x in reversed(lines) if "rror" in x), str(e).strip().splitlines()[-1])
        (folder / "result.json").write_text(json.dumps({"ok": False, "error": why[:200]}))
        return 1
    log = scratch / "elastix.log"
    metrics = _FINAL_METRIC.findall(log.read_text(errors="replace")) if log.exists() else []
    np.save(folder / "field.npy", np.asarray(itk.array_from_image(field), np.float64))
    (folder / "result.json").write_text(json.dumps({"ok": True, "metric": float(metrics[-1]) if metrics else None}))
    return 0


def register_elastix(
    fx,
    mv,
    settings,
    fixed_mask=None,
    moving_mask=None,
    on_stage: Callable[[str, int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
):
    """Register working-grid ``mv`` (previous scan) to ``fx`` (today's) with elastix, in a
    child process.

    elastix runs in a separate Python process (``python -m
    napari_gi_seg.propagation.elastix``), so a crash inside it (itk-elastix 0.25.4 with
    masks segfaulted on two threads here) cannot take the viewer down, and *Cancel* can
    stop it at once.

    Parameters
    ----------
    fx, mv
        SimpleITK float32 images on their working grids (LPS mm).
    settings
        :class:`~napari_gi_seg.propagation.registration.RegistrationSettings`: its
        ``stages``, samples, iterations, histogram bins, B-spline grid, seed, initial
        alignment. ``threads`` is not used: elastix runs on one thread (with masks,
        itk-elastix 0.25.4 segfaulted on two threads on a CHAOS pair that one thread
        registers in about 37 s).
    fixed_mask, moving_mask
        uint8 SimpleITK masks on ``fx``'s and ``mv``'s grids (today's body; the previous
        structures' region of interest), or ``None``.
    on_stage
        ``on_stage("elastix", 0, 1)`` once, before the one elastix call that runs every
        stage.
    cancel
        Polled five times a second; ``True`` kills the child process and returns no
        registration (scanner coordinates, no stage).

    Returns
    -------
    Registration
        ``transform``: a SimpleITK ``DisplacementFieldTransform`` on ``fx``'s grid (fixed
        -> moving points); one :class:`StageResult` per stage, the final metric (Mattes
        MI, negative) read from elastix's log and the call's seconds on the last one.

    Raises
    ------
    RegistrationError
        elastix reported an error (the log's last error line is quoted) or its process
        died (the exit code is given).
    """
    import SimpleITK as sitk

    from .registration import Registration, RegistrationError, StageResult

    out = Registration(sitk.Euler3DTransform(), [], fx)
    stages = tuple(settings.stages)
    if not stages or (cancel is not None and cancel()):
        return out
    if on_stage is not None:
        on_stage("elastix", 0, 1)
    t0 = time.perf_counter()
    job = {
        "fixed": _image_payload(fx),
        "moving": _image_payload(mv),
        "fixed_mask": _image_payload(fixed_mask),
        "moving_mask": _image_payload(moving_mask),
        "stages": stages,
        # one thread whatever settings.threads says: itk-elastix 0.25.4 with masks segfaulted with 2 threads
        # on CHAOS patient 1 (T2 -> T1) and ran with 1 (0.89 Dice, 37 s); the child keeps a crash contained
        "threads": 1,
        "params": {
            "samples": settings.samples,
            "bspline_samples": settings.bspline_samples,
            "iterations": settings.iterations[0],
            "bins": settings.histogram_bins,
            "seed": settings.seed,
            "initial": settings.initial,
            "bspline_grid_mm": settings.bspline_grid_mm,
        },
    }
    hint = "Carry the labels by scanner coordinates (stages 'none') or use the SimpleITK backend"
    with tempfile.TemporaryDirectory(prefix="gi-seg-elastix-") as tmp:
        folder = Path(tmp)
        _save_job(folder, job)
        # a separate interpreter, not multiprocessing: nothing of the caller's script is re-run,
        # nothing is pickled, and a crash inside elastix ends only the child
        with open(folder / "stderr.txt", "wb") as errf:  # a file, not a pipe: a chatty child never blocks
            child = subprocess.Popen(
                [sys.executable, "-m", "napari_gi_seg.propagation.elastix", str(folder)],
                stdout=subprocess.DEVNULL,
                stderr=errf,
            )
        try:
            while child.poll() is None:
                if cancel is not None and cancel():
                    child.kill()
                    child.wait()
                    return out
                time.sleep(0.2)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        err = (folder / "stderr.txt").read_text(errors="replace")
        res = folder / "result.json"
        if not res.exists():
            last = next((x.strip() for x in reversed(err.splitlines()) if x.strip()), "")
            raise RegistrationError(
                f"elastix registration failed: its process ended with exit code {child.returncode}"
                f"{' (' + last[:160] + ')' if last else ''}. {hint}"
            )
        answer = json.loads(res.read_text())
        if not answer["ok"]:
            raise RegistrationError(f"elastix registration failed: {answer['error']}. {hint}")
        arr = np.load(folder / "field.npy", allow_pickle=False)
    final = answer["metric"] if answer["metric"] is not None else float("nan")
    disp = sitk.GetImageFromArray(arr, isVector=True)
    disp.CopyInformation(fx)
    out.transform = sitk.DisplacementFieldTransform(disp)
    seconds = time.perf_counter() - t0
    for k, name in enumerate(stages):
        last = k == len(stages) - 1
        out.stages.append(StageResult(name, final if last else float("nan"), 0, "elastix", seconds if last else 0.0))
    return out


if __name__ == "__main__":
    raise SystemExit(_child(Path(sys.argv[1])))
