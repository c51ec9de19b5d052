"""Grow a model by new output classes (or drop some), keeping what it knows.

A model taught a new structure keeps its classes at their indices and gets one output
per new structure **after** them (label value K + 1, K + 2, ...), so label files
written with the old model stay valid. The new outputs start from the network's own
(fresh) initialisation; every other weight is copied. Where a layer both reads and
writes the output channels (MONAI UNet's last residual unit), the weights from the
new channels into the old ones are zero, so the old classes' logits of the grown
network equal the base's until fine-tuning changes them. The same shape comparison
drops classes (:func:`drop_classes`; e.g. a base model without the spleen for the
leave-one-organ-out benchmark, ``benchmarks/new_structure.py``).

Which tensor dimensions are output channels is found by building both networks and
comparing their state-dict shapes, so this works for every architecture of
:func:`~napari_gi_seg.models.network.build_network` (smp: ``segmentation_head``;
MONAI UNet: the last transposed convolution, its batch norm and the last residual unit).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InputError
from .network import build_network
from .spec import DEFAULT_COLOURS, ClassInfo, ModelSpec

__all__ = ["grow_spec", "grow_state_dict", "drop_classes", "new_class_names"]


def new_class_names(base_spec: ModelSpec, dataset_names: Sequence[str]) -> list[str]:
    """The dataset's class names the base model lacks, in the dataset's order."""
    have = {c.name for c in base_spec.classes}
    return [n for n in dataset_names if n not in have]


def grow_spec(base_spec: ModelSpec, new: Sequence[ClassInfo | dict | str]) -> ModelSpec:
    """A copy of ``base_spec`` with the classes ``new`` appended (indices K + 1, ...).

    Parameters
    ----------
    base_spec : ModelSpec
        The base model's spec (not modified).
    new : sequence of ClassInfo, dict or str
        The new classes (a name, or ``ClassInfo`` fields without ``index``); a class
        without a colour gets the next default colour.

    Returns
    -------
    ModelSpec
        Same name, version and everything else as the base; ``classes`` grown.

    Raises
    ------
    ValueError
        A new name the base has already, or names that repeat.
    """
    d = base_spec.to_dict()
    classes = [dict(c) for c in d["classes"]]
    have = {c["name"] for c in classes}
    for c in new:
        info = {"name": c} if isinstance(c, str) else (dict(c) if isinstance(c, dict) else _info_dict(c))
        info.pop("index", None)
        if info["name"] in have:
            raise InputError(f"class {info['name']!r} is already one of {base_spec.key}'s classes")
        have.add(info["name"])
        k = len(classes) + 1
        info.setdefault("colour", "")
        if not info["colour"]:
            info["colour"] = DEFAULT_COLOURS[1 + (k - 1) % (len(DEFAULT_COLOURS) - 1)]
        classes.append({"index": k, **info})
    d["classes"] = classes
    return ModelSpec.from_dict(d)


def _info_dict(c: ClassInfo) -> dict:
    return {"name": c.name, "colour": c.colour, "mirror": c.mirror, "single_component": c.single_component}


def _channel_dims(a: torch.Size, b: torch.Size) -> list[int]:
    return [i for i, (x, y) in enumerate(zip(a, b)) if x != y]


def grow_state_dict(base_sd: dict[str, torch.Tensor], grown_spec: ModelSpec, seed: int = 0) -> dict:
    """The grown network's state dict: ``base_sd`` copied into the first channels of
    every output-channel dimension, the new channels from a fresh
    :func:`~napari_gi_seg.models.network.build_network` (seeded), and the weights
    from new channels into old ones set to zero (old logits unchanged).

    Parameters
    ----------
    base_sd : dict
        The base network's state dict (:func:`~napari_gi_seg.models.network.load_weights`).
    grown_spec : ModelSpec
        :func:`grow_spec` of the base spec.
    seed : int
        Seed of the fresh initialisation of the new outputs.

    Returns
    -------
    dict
        ``{name: tensor}`` (float32 where the base was floating) for ``grown_spec``.

    Raises
    ------
    ValueError
        A tensor whose shape differs by more than the output channels (another
        architecture than the spec's).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = build_network(grown_spec).state_dict()
    out = {}
    for k, new in fresh.items():
        if k not in base_sd:
            continue  # a shared alias (MONAI DynUNet) the file stores once
        old = base_sd[k]
        if old.shape == new.shape:
            out[k] = old.clone()
            continue
        dims = _channel_dims(old.shape, new.shape)
        if len(old.shape) != len(new.shape) or any(old.shape[i] > new.shape[i] for i in dims):
            raise InputError(f"{k}: base shape {tuple(old.shape)} cannot grow into {tuple(new.shape)}")
        t = new.detach().clone().to(old.dtype)
        t[tuple(slice(0, s) for s in old.shape)] = old
        if len(dims) >= 2 and dims[0] == 0:  # reads and writes output channels: new -> old weights zero
            idx = [slice(None)] * t.ndim
            idx[0] = slice(0, old.shape[0])
            for d in dims[1:]:
                j = list(idx)
                j[d] = slice(old.shape[d], None)
                t[tuple(j)] = 0
        out[k] = t
    return out


def drop_classes(spec: ModelSpec, sd: dict[str, torch.Tensor], names: Sequence[str]) -> tuple[ModelSpec, dict]:
    """The model without the classes ``names``: their outputs removed, the other
    classes renumbered 1..K' in their order (a removed class's voxels then go to
    whichever output is next most likely, usually background).

    Parameters
    ----------
    spec : ModelSpec
        The model's spec (not modified).
    sd : dict
        Its state dict.
    names : sequence of str
        Classes to remove.

    Returns
    -------
    (ModelSpec, dict)
        The reduced spec (mirrors of removed classes cleared) and state dict.

    Raises
    ------
    ValueError
        An unknown class name, or every class removed.
    """
    gone = set(names)
    unknown = gone - {c.name for c in spec.classes}
    if unknown:
        raise InputError(f"{spec.key} has no class(es) {sorted(unknown)}")
    keep = [c for c in spec.classes if c.name not in gone]
    if not keep:
        raise InputError("cannot remove every class")
    d = spec.to_dict()
    d["classes"] = [
        {**_info_dict(c), "index": i + 1, "mirror": c.mirror if c.mirror not in gone else None}
        for i, c in enumerate(keep)
    ]
    small = ModelSpec.from_dict(d)
    offset = 1 if spec.activation == "softmax" else 0
    keep_ch = ([0] if offset else []) + [c.index - 1 + offset for c in keep]
    ref = build_network(small).state_dict()
    out = {}
    for k, v in sd.items():
        if k not in ref or ref[k].shape == v.shape:
            out[k] = v.clone()
            continue
        t = v
        for dim in _channel_dims(v.shape, ref[k].shape):
            t = t.index_select(dim, torch.tensor(keep_ch))
        out[k] = t.contiguous()
    return small, out
