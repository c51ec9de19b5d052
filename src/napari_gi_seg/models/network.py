"""Build the network of a :class:`ModelSpec` (segmentation-models-pytorch or MONAI)
and move weights in and out of safetensors files (never pickle)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import GiSegError, InputError
from .spec import ModelSpec

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".bin")


class UnsafeWeightsError(GiSegError, ValueError):
    """Raised for weight files that would need unpickling (``.pt``/``.pth``/...)."""


class WeightsIntegrityError(GiSegError, ValueError):
    """A weights file whose sha256 differs from the one its spec recorded at
    registration (a damaged copy, a flipped bit on disk, a replaced file)."""


def weights_sha256(path: str | Path) -> str:
    """sha256 hex digest of a weights file's bytes (read in 1 MiB blocks)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_weights(spec: ModelSpec, weights_path: str | Path) -> None:
    """Check ``weights_path`` against ``spec.weights_sha256`` (nothing to check when the
    spec has none: specs registered before the field existed).

    Raises
    ------
    WeightsIntegrityError
        Naming the model folder, the spec and both digests, when the file differs.
    FileNotFoundError
        The file does not exist.
    """
    expected = getattr(spec, "weights_sha256", "") or ""
    if not expected:
        return
    path = Path(weights_path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: weights file not found")
    got = weights_sha256(path)
    if got != expected:
        raise WeightsIntegrityError(
            f"{path.parent}: {path.name} is damaged or was replaced: its sha256 is {got[:16]}..., "
            f"spec.json of {spec.key} recorded {expected[:16]}... at registration; refusing to load it "
            "(restore the folder from a copy, or register the model again)"
        )


#: Constructor arguments of the MONAI networks a spec may name, by
#: ``(architecture, preset)`` (the preset is the spec's ``encoder``); spatial_dims,
#: in_channels and out_channels come from the spec.
#:
#: - ``monai.UNet`` ``16-256-res2``: :class:`monai.networks.nets.UNet` (Kerfoot et al.
#:   2018): channels 16-256, 4 stride-2 levels, 2 residual units per level (1.6 M
#:   parameters for 3 -> 5 channels), instance norm (MONAI's default).
#: - ``monai.UNet`` ``16-256-res2-batch``: the same with batch norm (Ioffe & Szegedy
#:   2015); the default, because instance norm's per-slice statistics change with the
#:   empty border a wider field of view adds (docs/models.md).
#: - ``monai.UNet`` ``16-256-res1-batch``: one residual unit per level (the promptable
#:   model, :mod:`napari_gi_seg.interactive`).
#: - ``monai.UNet`` ``16-256-res1-instance``: the same with instance norm (a crop
#:   around the object has the same statistics at training and inference).
#: - ``monai.DynUNet`` ``16-256-instance``: :class:`monai.networks.nets.DynUNet`, the
#:   nnU-Net network (Isensee et al. 2021) at half nnU-Net's width: 3x3 kernels,
#:   filters 16-256, 4 stride-2 levels, instance norm, no deep supervision (1.9 M).
MONAI_PRESETS: dict[tuple[str, str], dict] = {
    ("monai.UNet", "16-256-res2"): dict(channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2),
    # the same network with batch norm: at inference a per-channel affine map with the
    # training's running statistics, so a wider field of view (more empty border) does
    # not change what the network sees, unlike instance norm's per-slice statistics
    ("monai.UNet", "16-256-res2-batch"): dict(
        channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2, norm="batch"
    ),
    # one residual unit per level: the promptable model's preset (about half the
    # compute of res2, for a click answered in well under a second on a CPU)
    ("monai.UNet", "16-256-res1-batch"): dict(
        channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=1, norm="batch"
    ),
    # the same with instance norm: the promptable model sees a crop normalised around
    # the object, so per-crop statistics are the same at training and inference; batch
    # norm's running statistics left one fold's model 0.10 Dice worse in eval mode than
    # with its batch's own statistics
    ("monai.UNet", "16-256-res1-instance"): dict(
        channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=1, norm="instance"
    ),
    ("monai.DynUNet", "16-256-instance"): dict(
        kernel_size=[3] * 5,
        strides=[1, 2, 2, 2, 2],
        upsample_kernel_size=[2, 2, 2, 2],
        filters=(16, 32, 64, 128, 256),
        norm_name="instance",
        res_block=False,
    ),
}


def build_network(spec: ModelSpec) -> torch.nn.Module:
    """An untrained network for ``spec``: smp (``encoder_weights=None``), a MONAI
    preset (:data:`MONAI_PRESETS`) or a :mod:`~napari_gi_seg.models.zoo` network
    (:data:`~napari_gi_seg.models.spec.ZOO_ARCHITECTURES`), wrapped in a
    :class:`~napari_gi_seg.models.zoo.GatedNetwork` when ``spec.gate`` is set.

    Input ``(N, len(context_offsets), H, W)`` float32, output
    ``(N, spec.out_channels, H, W)`` logits. Weights come from our safetensors file
    (nothing is downloaded).

    Raises
    ------
    ValueError
        An architecture/preset pair this version does not know.
    """
    net = _build_segmenter(spec)
    if spec.gate:
        from .zoo import GatedNetwork

        net = GatedNetwork(net, spec.in_channels)
    return net


def _build_segmenter(spec: ModelSpec) -> torch.nn.Module:
    from . import zoo

    if spec.architecture == "torchvision.FCN":
        return zoo.TorchvisionFCN(spec.in_channels, spec.out_channels)
    if spec.architecture == "ResUnetPlusPlus":
        return zoo.ResUnetPlusPlus(spec.encoder, spec.in_channels, spec.out_channels)
    if spec.architecture == "InceptionUnet":
        return zoo.InceptionUnet(spec.in_channels, spec.out_channels)
    if spec.architecture.startswith("monai."):
        from monai.networks import nets

        kwargs = MONAI_PRESETS.get((spec.architecture, spec.encoder))
        if kwargs is None:
            raise InputError(f"unknown MONAI network preset {spec.architecture}/{spec.encoder}")
        cls = getattr(nets, spec.architecture.split(".", 1)[1])
        return cls(spatial_dims=2, in_channels=spec.in_channels, out_channels=spec.out_channels, **kwargs)

    import segmentation_models_pytorch as smp

    cls = getattr(smp, spec.architecture)
    return cls(
        encoder_name=spec.encoder,
        encoder_weights=None,
        in_channels=spec.in_channels,
        classes=spec.out_channels,
    )


def _aliases(sd: dict[str, torch.Tensor]) -> dict[str, str]:
    """``{alias: first name}`` for state-dict entries that are the same tensor under
    several names (MONAI's DynUNet registers each block twice); safetensors refuses
    shared tensors, so only the first name is written and the others are filled in
    from it when loading."""
    first: dict[tuple, str] = {}
    out = {}
    for k, v in sd.items():
        key = (v.data_ptr(), v.dtype, tuple(v.shape), tuple(v.stride())) if v.numel() else None
        if key is None:
            continue
        if key in first:
            out[k] = first[key]
        else:
            first[key] = k
    return out


def save_weights(model: torch.nn.Module, path: str | Path, half: bool = False) -> int:
    """Write ``model.state_dict()`` to a safetensors file; returns its size in bytes.

    ``half=True`` stores floating weights as float16 (halves the file; loading casts
    back to the network's dtype), except batch-norm running statistics and any tensor
    with a value beyond float16's range (65504): those stay float32. A batch-norm
    running variance of 7.9e5 once became ``inf`` in float16, zeroed its channel at
    inference and turned a promptable model's box Dice from 0.83 into 0.31 while the
    float32 checkpoint was fine. Written to a temp file then renamed (atomic).

    Raises
    ------
    ValueError
        If a floating tensor holds NaN or infinity (a diverged training run): nothing
        is written.
    """
    from safetensors.torch import save

    from .._atomic import write_bytes

    path = Path(path)
    sd = {}
    full = model.state_dict()
    aliases = _aliases(full)
    fp16_max = torch.finfo(torch.float16).max
    for k, v in full.items():
        if k in aliases:  # the same tensor under a second name (MONAI DynUNet): stored once
            continue
        v = v.detach().cpu().contiguous()
        if v.is_floating_point():
            if not torch.isfinite(v).all():
                raise ValueError(f"{path.name}: weight {k!r} holds NaN or infinity; not written")
            stats = k.endswith(("running_mean", "running_var"))
            if half and not stats and (v.numel() == 0 or float(v.abs().max()) <= fp16_max):
                v = v.half()
        sd[k] = v
    write_bytes(path, save(sd, metadata={"format": "pt"}))
    return path.stat().st_size


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors file.

    Raises
    ------
    UnsafeWeightsError
        For pickle-based checkpoints (``.pt``, ``.pth``, ``.ckpt``, ...): they can run
        arbitrary code when loaded, so they are refused. Convert them once, in a
        trusted environment, with ``torch.load(..., weights_only=True)`` and
        ``safetensors.torch.save_file``.
    FileNotFoundError
        When the file does not exist.
    ValueError
        When the file is not a valid safetensors file, or a floating tensor in it
        holds NaN or infinity.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsafeWeightsError(
            f"{path}: pickle checkpoints are refused (they can execute code when loaded); "
            "convert to .safetensors in a trusted environment first"
        )
    if not path.exists():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError, Exception) as e:  # safetensors raises several kinds
        raise InputError(f"{path}: not a valid safetensors file ({e})") from e
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise InputError(
            f"{path}: weight {bad[0]!r} holds NaN or infinity ({len(bad)} tensor(s)); the file is unusable "
            "(re-export it from its training checkpoint)"
        )
    return sd


def load_state(net: torch.nn.Module, sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Load a state dict read by :func:`load_weights` into ``net`` (strict): tensors
    are cast to the network's dtypes (fp16 files load into fp32 networks) and names
    stored once for shared tensors are filled in (see :func:`save_weights`).

    Raises ``RuntimeError`` (torch's) when names or shapes do not match."""
    ref = net.state_dict()
    sd = dict(sd)
    for alias, name in _aliases(ref).items():
        if alias not in sd and name in sd:
            sd[alias] = sd[name]
    net.load_state_dict({k: v.to(ref[k].dtype) if k in ref else v for k, v in sd.items()}, strict=True)
    return net


def load_network(spec: ModelSpec, weights_path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the network for ``spec``, load ``weights_path`` (float32), eval mode.

    The file is first checked against ``spec.weights_sha256`` (:func:`verify_weights`).

    Raises ``ValueError`` naming the file when the weights do not fit the spec, and
    :class:`WeightsIntegrityError` (a ``ValueError``) naming the folder when the file's
    sha256 differs from the spec's.
    """
    verify_weights(spec, weights_path)
    net = build_network(spec)
    try:
        load_state(net, load_weights(weights_path))
    except RuntimeError as e:
        raise InputError(
            f"{weights_path}: weights do not match spec {spec.key} ({spec.architecture}/{spec.encoder}): {str(e)[:300]}"
        ) from e
    return net.to(device).eval()


def load_checkpoint(path: str | Path) -> dict:
    """Read a training checkpoint (``checkpoint_last.pt``: tensors, numbers and strings
    only) with ``torch.load(weights_only=True)``, which never runs pickled code.

    Raises
    ------
    ValueError
        Naming the file, when it holds anything else (a poisoned or foreign pickle) or
        is damaged; the message says how to start afresh and never suggests
        ``weights_only=False``.
    FileNotFoundError
        When it does not exist.
    """
    import pickle

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError) as e:
        kind = type(e).__name__
        raise InputError(
            f"{path}: refused: not a checkpoint this program wrote (it holds objects other than tensors, "
            f"or it is damaged; {kind}). Delete it or choose another work folder to start afresh"
        ) from None
    if not isinstance(st, dict) or not {"model", "optimizer", "epoch"} <= set(st):
        raise InputError(f"{path}: not a training checkpoint (missing model/optimizer/epoch entries)")
    return st
