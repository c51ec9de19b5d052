"""Inference speed and memory: our engine against a naive loop and MONAI.

Run by hand (not in CI), ideally on an otherwise idle machine::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/inference.py --write-docs
    .venv/bin/python benchmarks/inference.py --quick          # smoke test, ~1 min
    .venv/bin/python benchmarks/inference.py --json           # machine-readable

All three methods use the same network and weights: the default registered model
(``registry.get_entry()``) if there is one, else an untrained network of the
default architecture (Unet / mobilenet_v2, 160 x 160 px, 2.5D context -1, 0, +1,
4 classes; seed 0). Speed does not depend on the weights.

Methods, each on the same per-volume percentile normalisation
(:func:`napari_gi_seg.engine.preprocess.normalise_intensity`):

``naive``
    A per-slice loop, batch size 1, float32, ``torch.no_grad``: stack the slice
    with its neighbours, resize to the model size, forward, softmax, resize the
    probabilities back, argmax.
``monai``
    ``monai.inferers.sliding_window_inference`` (2D): the 2.5D stacks of a chunk
    of 32 slices (neighbours as channels), resized to the model size, go in as a
    batch with ``roi_size`` = the model's input size and ``sw_batch_size`` = 8
    (one window per slice, no overlap waste, since the network was trained at that
    scale), under ``torch.inference_mode``; softmax, resize back, argmax.
``engine``
    :func:`napari_gi_seg.engine.inference.segment_volume` with its defaults (batch
    8, channels-last, bfloat16 forward pass on CPUs with native bfloat16, else fp32).
``engine-fp32``
    The same with ``precision="fp32"``, to show what the reduced precision buys
    and to compare like with like against the float32 ``naive`` and ``monai``.

Every measurement runs in its own subprocess, so peak RSS (``ru_maxrss``) is that
method's alone (it includes Python, torch and the input volume). Each timing is the
best of ``--repeats`` runs after one warm-up batch. The labels of ``naive`` and
``monai`` are compared with the engine's (voxel agreement) as a sanity check.

Volumes: a real CHAOS T2-SPIR volume (256 x 256 x 36), a synthetic 144 x 266 x 266
stack (a UW-Madison case-day), and, for the memory goal, a synthetic 200 x 512 x 512
stack (engine only).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402  (benchmarks/ is not a package)

DOCS = REPO / "docs" / "benchmarks.md"
START, END = "<!-- inference:start -->", "<!-- inference:end -->"
GOALS = {"vs_naive": 3.0, "vs_monai": 1.0, "uwmgi_seconds": 10.0, "big_rss_mb": 3000.0}


# ------------------------------------------------------------------ model
def prepare_model(folder: Path) -> str:
    """Put ``spec.json`` + ``model.safetensors`` for the benchmark into ``folder``;
    returns a description of where they came from."""
    import shutil

    from napari_gi_seg.models import registry

    try:
        e = registry.get_entry()
        shutil.copyfile(e.folder / registry.SPEC_FILE, folder / registry.SPEC_FILE)
        shutil.copyfile(e.weights_path, folder / registry.WEIGHTS_FILE)
        return f"registered model {e.key} ({'bundled' if e.bundled else 'user'})"
    except registry.ModelNotFoundError:
        import torch

        from napari_gi_seg.models.network import build_network, save_weights
        from napari_gi_seg.models.spec import ClassInfo, ModelSpec

        spec = ModelSpec(
            name="bench-untrained",
            architecture="Unet",
            encoder="mobilenet_v2",
            input_size=(160, 160),
            context_offsets=(-1, 0, 1),
            classes=[ClassInfo(i + 1, f"class_{i + 1}") for i in range(4)],
        )
        torch.manual_seed(0)
        spec.save(folder / registry.SPEC_FILE)
        save_weights(build_network(spec).eval(), folder / registry.WEIGHTS_FILE)
        return "untrained Unet/mobilenet_v2 160 px (no registered default model)"


# ------------------------------------------------------------------ data
def load_data(name: str, quick: bool) -> np.ndarray:
    """The ``(z, y, x)`` float32 volume called ``name``."""
    if name == "chaos":
        from napari_gi_seg.io.nifti import read_nifti
        from napari_gi_seg.paths import data_dir

        d = data_dir()
        if d is None or not (d / "chaos_mr_t2spir" / "image_1.nii.gz").exists():
            raise SystemExit("CHAOS data not found: set NAPARI_GI_SEG_DATA")
        data = read_nifti(d / "chaos_mr_t2spir" / "image_1.nii.gz", as_labels=False).data
        return data[:12] if quick else data
    shape = {"uwmgi": (144, 266, 266), "big": (200, 512, 512)}[name]
    if quick:
        shape = (16, *shape[1:])
    rng = np.random.default_rng(0)
    # smooth structures + noise (content does not change the speed of a CNN)
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, s, dtype=np.float32) for s in shape), indexing="ij", sparse=True)
    data = 600 * np.exp(-(xx**2 + yy**2) * 3) * (1 + 0.3 * np.cos(6 * zz))
    data = data + rng.normal(0, 30, size=shape).astype(np.float32)
    return np.ascontiguousarray(data, dtype=np.float32)


# ------------------------------------------------------------------ methods
def run_naive(data, spec, net):
    import torch
    import torch.nn.functional as F

    from napari_gi_seg.engine.preprocess import context_batch, normalise_intensity

    norm = normalise_intensity(data, spec.normalisation, spec.percentiles)
    out = np.zeros(data.shape, np.uint8)
    with torch.no_grad():
        for z in range(data.shape[0]):
            x = torch.from_numpy(context_batch(norm, [z], spec.context_offsets))
            x = F.interpolate(x, size=tuple(spec.input_size), mode="bilinear", align_corners=False)
            p = torch.softmax(net(x), 1)
            p = F.interpolate(p, size=data.shape[1:], mode="bilinear", align_corners=False)
            out[z] = p.argmax(1)[0].numpy()
    return out


def run_monai(data, spec, net, chunk: int = 32, sw_batch_size: int = 8):
    import torch
    import torch.nn.functional as F
    from monai.inferers import sliding_window_inference

    from napari_gi_seg.engine.preprocess import context_batch, normalise_intensity

    norm = normalise_intensity(data, spec.normalisation, spec.percentiles)
    out = np.zeros(data.shape, np.uint8)
    with torch.inference_mode():
        for s in range(0, data.shape[0], chunk):
            z = list(range(s, min(s + chunk, data.shape[0])))
            x = torch.from_numpy(context_batch(norm, z, spec.context_offsets))
            x = F.interpolate(x, size=tuple(spec.input_size), mode="bilinear", align_corners=False)
            logits = sliding_window_inference(
                x,
                roi_size=tuple(spec.input_size),
                sw_batch_size=sw_batch_size,
                predictor=net,
                overlap=0.0,
                mode="constant",
            )
            p = F.interpolate(torch.softmax(logits, 1), size=data.shape[1:], mode="bilinear", align_corners=False)
            out[z] = p.argmax(1).to(torch.uint8).numpy()
    return out


def run_engine(data, spec, net, precision: str = "auto"):
    from napari_gi_seg.engine.inference import segment_volume

    return segment_volume(data, spec, net, device="cpu", precision=precision).labels


def run_engine_fp32(data, spec, net):
    return run_engine(data, spec, net, precision="fp32")


METHODS = {"naive": run_naive, "monai": run_monai, "engine": run_engine, "engine-fp32": run_engine_fp32}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(args) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import torch

    from napari_gi_seg.models.network import load_network
    from napari_gi_seg.models.spec import ModelSpec

    torch.set_num_threads(args.threads)
    spec = ModelSpec.load(Path(args.model_dir) / "spec.json")
    net = load_network(spec, Path(args.model_dir) / "model.safetensors", "cpu")
    data = load_data(args.data, args.quick)
    rss_loaded = _rss_mb()
    fn = METHODS[args.worker]
    fn(data[:2], spec, net)  # warm-up (allocator, oneDNN kernels)
    times, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        labels = fn(data, spec, net)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    if args.labels_out:
        np.save(args.labels_out, labels)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    best = min(times)
    print(
        json.dumps(
            {
                "method": args.worker,
                "data": args.data,
                "shape": list(data.shape),
                "seconds": best,
                "all_seconds": times,
                "cpu_seconds": min(cpu),
                "slices_per_s": data.shape[0] / best,
                "peak_rss_mb": peak,
                "rss_after_load_mb": rss_loaded,
                "threads": torch.get_num_threads(),
            }
        )
    )


# ------------------------------------------------------------------ driver
def measure(method: str, data: str, model_dir: Path, args, labels_out: Path | None) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        method,
        "--data",
        data,
        "--model-dir",
        str(model_dir),
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
    ]
    if args.quick:
        cmd.append("--quick")
    if labels_out is not None:
        cmd += ["--labels-out", str(labels_out)]
    print(f"  {data:6s} {method:11s} ...", file=sys.stderr, end="", flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{method} on {data} failed:\n{p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    print(
        f" {r['seconds']:.2f} s (CPU {r['cpu_seconds']:.2f} s), {r['slices_per_s']:.1f} slices/s, peak RSS {r['peak_rss_mb']:.0f} MB",
        file=sys.stderr,
    )
    return r


def run_all(args) -> dict:
    rows, checks = [], {}
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        model_dir = td / "model"
        model_dir.mkdir()
        source = prepare_model(model_dir)
        print(f"model: {source}; threads {args.threads}", file=sys.stderr)
        for data in ("chaos", "uwmgi"):
            res = {}
            for m in ("naive", "monai", "engine", "engine-fp32"):
                res[m] = measure(m, data, model_dir, args, td / f"{data}-{m}.npy")
            ref = np.load(td / f"{data}-engine.npy")
            for m in ("naive", "monai", "engine", "engine-fp32"):
                r = res[m]
                r["agreement_with_engine"] = float(np.mean(np.load(td / f"{data}-{m}.npy") == ref))
                r["speed_vs_naive"] = res["naive"]["seconds"] / r["seconds"]
                r["speed_vs_monai"] = res["monai"]["seconds"] / r["seconds"]
                rows.append(r)
            checks[f"{data}: engine >= {GOALS['vs_naive']:.0f}x naive"] = (
                res["engine"]["speed_vs_naive"] >= GOALS["vs_naive"]
            )
            checks[f"{data}: engine not slower than MONAI"] = res["engine"]["speed_vs_monai"] >= GOALS["vs_monai"]
        eng_uw = next(r for r in rows if r["data"] == "uwmgi" and r["method"] == "engine")
        checks[f"uwmgi: {eng_uw['shape'][0]}-slice stack <= {GOALS['uwmgi_seconds']:.0f} s"] = (
            eng_uw["seconds"] <= GOALS["uwmgi_seconds"]
        )
        big = measure("engine", "big", model_dir, args, None)
        big["speed_vs_naive"] = big["speed_vs_monai"] = None
        big["agreement_with_engine"] = None
        rows.append(big)
        checks[f"big: peak RSS < {GOALS['big_rss_mb']:.0f} MB"] = big["peak_rss_mb"] < GOALS["big_rss_mb"]
    import torch

    from napari_gi_seg.engine.inference import autocast_dtype

    amp = autocast_dtype(torch.device("cpu"), "auto")
    return {
        "engine_precision": "float32" if amp is None else str(amp).replace("torch.", ""),
        "date": _dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores available, {platform.system()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
        "quick": args.quick,
        "model": source,
        "rows": rows,
        "goals": checks,
    }


def markdown(report: dict) -> str:
    lines = [
        START,
        "## Inference (CPU)",
        "",
        f"Measured {report['date']} with `benchmarks/inference.py{' --quick' if report['quick'] else ''}` on "
        f"{report['machine']}; torch {report['torch']}, {report['threads']} threads, best of {report['repeats']} "
        f"run(s) after a warm-up (CPU s: process CPU time of that run, all threads). Model: {report['model']}. `engine` ran its forward pass in "
        f"{report['engine_precision']} here; `naive`, `monai` and `engine-fp32` in float32. Each row is its own "
        "process; peak RSS includes Python, torch and the input volume.",
        "",
        *(
            [
                "**Smoke run (`--quick`)**: shortened volumes and one repeat, to check that the benchmark works; "
                "these figures are not the goal measurements. Run `benchmarks/inference.py --write-docs` on an idle "
                "machine for those.",
                "",
            ]
            if report["quick"]
            else []
        ),
        "| volume (z, y, x) | method | s / volume | CPU s | slices / s | peak RSS (MB) | x naive | x MONAI | voxels equal to engine |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {"chaos": "CHAOS T2-SPIR", "uwmgi": "synthetic (UW-Madison size)", "big": "synthetic"}
    for r in report["rows"]:
        f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
        lines.append(
            f"| {names[r['data']]} {' x '.join(map(str, r['shape']))} | {r['method']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | "
            f"{r['slices_per_s']:.1f} | {r['peak_rss_mb']:.0f} | {f(r['speed_vs_naive'], '.2f')} | "
            f"{f(r['speed_vs_monai'], '.2f')} | {f(r['agreement_with_engine'], '.4f')} |"
        )
    lines += ["", f"Goals (set for 2 CPU cores; this run: {report['threads']} thread(s)):", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {k}" for k, ok in report["goals"].items()]
    lines += ["", END]
    return "\n".join(lines)


def write_docs(md: str, path: Path = DOCS) -> None:
    """Replace the inference section of ``docs/benchmarks.md`` (between the markers),
    keeping every other section; atomic write (:func:`_report.write_section`)."""
    write_section("inference", md, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small volumes, one repeat: checks the benchmark runs")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--write-docs", action="store_true", help=f"write the table into {DOCS.relative_to(REPO)}")
    p.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: all cores)"
    )
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 3, --quick 1)")
    p.add_argument("--worker", choices=sorted(METHODS), help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--labels-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.worker:
        worker(args)
        return 0
    report = run_all(args)
    md = markdown(report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(md)
    if args.write_docs:
        write_docs(md)
        print(f"wrote {DOCS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
