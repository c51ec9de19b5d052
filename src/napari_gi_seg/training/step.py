"""One optimisation step, shared by the :class:`~napari_gi_seg.training.trainer.Trainer`
and patient adaptation (:func:`~napari_gi_seg.training.adaptation.adapt_to_scan`).

Forward pass (under ``torch.autocast`` on CUDA: mixed precision), the training loss
(:func:`~napari_gi_seg.training.losses.segmentation_loss`, computed in float32),
backward through a :class:`torch.amp.GradScaler` (a no-op off CUDA), the optimiser step
and the learning-rate schedule's step (:mod:`napari_gi_seg.training.schedule`).
"""

from __future__ import annotations

import torch

from .losses import gate_loss, segmentation_loss

__all__ = ["grad_scaler", "optimisation_step"]


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """The loss scaler of mixed-precision training: enabled on CUDA only.

    Parameters
    ----------
    device : torch.device
        The training device.

    Returns
    -------
    torch.amp.GradScaler
    """
    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda")


def optimisation_step(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    opt: torch.optim.Optimizer,
    sched,
    scaler: torch.amp.GradScaler,
    *,
    multilabel: bool,
    not_annotated: torch.Tensor | None = None,
    gated: bool = False,
) -> tuple[float, float]:
    """One optimiser step on one batch.

    Parameters
    ----------
    model : torch.nn.Module
        The network in train mode, on the device of ``x``.
    x : torch.Tensor
        ``(N, C_in, H, W)`` float32 input (2.5D: the context slices are the channels).
    y : torch.Tensor
        ``(N, H, W)`` int64 labels with the ignore label (softmax) or ``(N, K, H, W)``
        float masks in {0, 1, 255} (multi-label), on the device of ``x``.
    opt : torch.optim.Optimizer
    sched
        The learning-rate schedule (``step()`` is called once after the optimiser step):
        ``torch.optim.lr_scheduler.OneCycleLR`` or
        :class:`~napari_gi_seg.training.schedule.BudgetOneCycle`.
    scaler : torch.amp.GradScaler
        :func:`grad_scaler` of the device.
    multilabel : bool
        Dice + BCE per channel instead of Dice + cross-entropy.
    not_annotated : torch.Tensor, optional
        ``(N, C)`` bool: classes a sample does not annotate (partial labels,
        :func:`~napari_gi_seg.training.losses.segmentation_loss`).
    gated : bool
        The network has an empty-slice gate (``spec.gate``): it is called with
        ``with_gate=True`` and the gate's BCE on "slice holds any class"
        (:func:`~napari_gi_seg.training.losses.gate_loss`) is added to the loss.

    Returns
    -------
    (float, float)
        The batch's loss and the learning rate this step used.
    """
    device_type = x.device.type
    with torch.autocast(device_type=device_type, enabled=device_type == "cuda"):
        out = model(x, with_gate=True) if gated else model(x)
    logits, g = out if gated else (out, None)
    loss = segmentation_loss(logits.float(), y, multilabel, not_annotated)
    if g is not None:  # two-stage empty-slice gating
        loss = loss + gate_loss(g, y, multilabel)
    opt.zero_grad(set_to_none=True)
    lr = float(opt.param_groups[0]["lr"])  # the rate this step uses
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    sched.step()
    return float(loss.detach()), lr
