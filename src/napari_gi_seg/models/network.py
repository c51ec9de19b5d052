"""Build segmentation-models-pytorch networks from a :class:`ModelSpec` and move
weights in and out of safetensors files (never pickle)."""

from __future__ import annotations

from pathlib import Path

import torch

from .spec import ModelSpec

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".bin")


class UnsafeWeightsError(ValueError):
    """Raised for weight files that would need unpickling (``.pt``/``.pth``/...)."""


def build_network(spec: ModelSpec) -> torch.nn.Module:
    """An untrained smp network for ``spec``.

    Input ``(N, len(context_offsets), H, W)`` float32, output
    ``(N, spec.out_channels, H, W)`` logits. ``encoder_weights`` is always ``None``:
    weights come from our safetensors file (nothing is downloaded).
    """
    import segmentation_models_pytorch as smp

    cls = getattr(smp, spec.architecture)
    return cls(
        encoder_name=spec.encoder,
        encoder_weights=None,
        in_channels=spec.in_channels,
        classes=spec.out_channels,
    )


def save_weights(model: torch.nn.Module, path: str | Path, half: bool = False) -> int:
    """Write ``model.state_dict()`` to a safetensors file; returns its size in bytes.

    ``half=True`` stores floating tensors as float16 (halves the file; loading casts
    back to the network's dtype). Written to a temp file then renamed (atomic).
    """
    from safetensors.torch import save

    from .._atomic import write_bytes

    path = Path(path)
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        if half and v.is_floating_point():
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
        When the file is not a valid safetensors file.
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
        return load_file(str(path))
    except (SafetensorError, OSError, Exception) as e:  # safetensors raises several kinds
        raise ValueError(f"{path}: not a valid safetensors file ({e})") from e


def load_network(spec: ModelSpec, weights_path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the network for ``spec``, load ``weights_path`` (float32), eval mode.

    Raises ``ValueError`` naming the file when the weights do not fit the spec.
    """
    net = build_network(spec)
    sd = load_weights(weights_path)
    ref = net.state_dict()
    sd = {k: v.to(ref[k].dtype) if k in ref else v for k, v in sd.items()}
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(
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
        raise ValueError(
            f"{path}: refused: not a checkpoint this program wrote (it holds objects other than tensors, "
            f"or it is damaged; {kind}). Delete it or choose another work folder to start afresh"
        ) from None
    if not isinstance(st, dict) or not {"model", "optimizer", "epoch"} <= set(st):
        raise ValueError(f"{path}: not a training checkpoint (missing model/optimizer/epoch entries)")
    return st
