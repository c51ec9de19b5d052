"""``napari-gi-seg prompt SCAN --prompts prompts.json -o labels.nii.gz``: scripted
prompted segmentation (the same :class:`~napari_gi_seg.interactive.PromptSession` as
the Prompt tab).

``prompts.json`` lists objects; each has a label value (and optional name), its
prompts per slice, and whether to carry it through the stack::

    [
      {"label": 1, "name": "stomach", "propagate": true, "max_slices": 20,
       "prompts": [
         {"z": 12, "box": [40, 60, 110, 150]},
         {"z": 12, "point": [70, 100], "positive": false}
       ]}
    ]

Indices are ``(z, y, x)`` into the scan as the package reads it (``volume.data``);
``box`` is ``[y0, x0, y1, x1]`` (half-open). Objects are written in order; a later
object does not overwrite an earlier one's voxels. The labels go out with the scan's
geometry (any label format the package writes).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)


def add_prompt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="the scan (NIfTI, DICOM folder, TIFF, UW-Madison case-day)")
    p.add_argument("--prompts", required=True, type=Path, help="JSON list of objects and their prompts")
    p.add_argument("-o", "--out", required=True, type=Path, help="labels file to write (.nii.gz, .tif, .dcm, ...)")
    p.add_argument("--model", default=None, help="promptable model key, or 'random-walker' (default: bundled model)")


def _objects(path: Path) -> list[dict]:
    try:
        objs = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(objs, list) or not all(isinstance(o, dict) for o in objs):
        raise InputError(f"{path}: expected a JSON list of objects")
    for i, o in enumerate(objs):
        if not isinstance(o.get("label"), int) or not 1 <= o["label"] <= 255:
            raise InputError(f"{path}: object {i} needs an integer 'label' 1..255")
        if not isinstance(o.get("prompts"), list) or not o["prompts"]:
            raise InputError(f"{path}: object {i} needs a non-empty 'prompts' list")
        for j, p in enumerate(o["prompts"]):  # checked before the scan is read
            if not isinstance(p, dict) or not isinstance(p.get("z"), int) or not ({"box", "point"} & set(p)):
                raise InputError(f"{path}: object {i} prompt {j}: needs an integer 'z' and a 'box' or a 'point'")
    return objs


def run_prompts(volume, objects: list[dict], model=None, source: str = "prompts") -> np.ndarray:
    """Segment each object of ``objects`` (the JSON above) on ``volume``; returns
    ``(z, y, x)`` uint8 labels.

    Raises
    ------
    InputError
        A prompt without ``z`` or with neither ``box``, ``point`` nor a valid entry, or
        indices outside the scan (naming the object and prompt).
    """
    from .interactive import PromptSession

    session = PromptSession(volume, model=model)
    out = np.zeros(session.shape, np.uint8)
    for i, o in enumerate(objects):
        session.new_object()
        for j, p in enumerate(o["prompts"]):
            where = f"{source}: object {i} prompt {j}"
            try:
                z = int(p["z"])
                if "box" in p:
                    session.add_box(z, *[int(v) for v in p["box"]])
                elif "point" in p:
                    y, x = p["point"]
                    session.add_point(z, y, x, positive=bool(p.get("positive", True)))
                else:
                    raise InputError("needs 'box' or 'point'")
            except (KeyError, TypeError, ValueError) as e:
                raise InputError(f"{where}: {e}") from None
        mask = session.propagate(max_slices=o.get("max_slices")) if o.get("propagate") else session.mask
        out[mask & (out == 0)] = o["label"]
        log.info(
            "object %s (%s): %s voxels on %s slices", i, o.get("name", o["label"]), mask.sum(), mask.any((1, 2)).sum()
        )
    return out


def cmd_prompt(args: argparse.Namespace) -> int:
    from .io import read_image, write_labels

    objects = _objects(args.prompts)
    vols = read_image(args.input)
    if len(vols) != 1:
        raise InputError(f"{args.input}: holds {len(vols)} series; give one")
    vol = vols[0]
    labels = run_prompts(vol, objects, args.model, str(args.prompts))
    names = {0: "background", **{o["label"]: str(o.get("name", f"object_{o['label']}")) for o in objects}}
    write_labels(args.out, labels, vol, names, generation="SEMIAUTOMATIC")
    print(f"wrote {args.out}: {len(objects)} object(s), {int((labels > 0).sum())} voxels")
    return 0
