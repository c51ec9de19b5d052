"""Does the out-of-distribution warning fire where it should? Every CHAOS MR DICOM
series (16 patients x T2-SPIR, T1 in-phase, T1 opposed-phase) should be silent for a
model trained on them; the TotalSegmentator example MR (3 mm isotropic, another
protocol) should warn.

    OMP_NUM_THREADS=1 python benchmarks/ood_warnings.py --model chaos-t2spir:3 --model chaos-t2spir:2 \\
        --json runs/ood.json

Prints one line per model: series that warned, and the TotalSegmentator warnings. No
network is run (only :func:`napari_gi_seg.engine.domain.input_warnings`), about 20 s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=None, help="registered model key (repeatable)")
    here = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    p.add_argument("--chaos", default=str(here / "chaos_mr_dicom"))
    p.add_argument("--totalseg", default=str(here / "totalseg_example_mr" / "example_mr_sm.nii.gz"))
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)

    from napari_gi_seg.datasets import open_dataset
    from napari_gi_seg.engine.domain import input_warnings
    from napari_gi_seg.io import read_image
    from napari_gi_seg.models.registry import get_entry

    specs = [get_entry(k).spec() for k in (a.model or [None])]
    images = {c.case_id: c.load().image for c in open_dataset(a.chaos).cases}
    ts = read_image(a.totalseg)[0]
    out = {}
    for spec in specs:
        warned = {cid: w for cid, im in images.items() if (w := input_warnings(im, spec))}
        out[spec.key] = {
            "chaos_series": len(images),
            "chaos_warned": warned,
            "totalseg_warnings": input_warnings(ts, spec),
        }
        print(
            f"{spec.key}: CHAOS {len(warned)}/{len(images)} series warned"
            + (f" (e.g. {next(iter(warned))}: {next(iter(warned.values()))[0]})" if warned else "")
            + f"; TotalSegmentator MR: {len(out[spec.key]['totalseg_warnings'])} warning(s): "
            + " | ".join(out[spec.key]["totalseg_warnings"])
        )
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
