"""Training loss: Dice + cross-entropy (softmax) or Dice + BCE (multi-label), with
the ignore label excluded from both terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..datasets import IGNORE_INDEX

__all__ = ["segmentation_loss"]


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Dice + cross-entropy (softmax) or Dice + BCE (multi-label).

    Ignored pixels contribute nothing to either term, hence nothing to the gradient
    (the soft Dice of segmentation-models-pytorch masks them; CE uses ``ignore_index``;
    BCE is masked).

    Parameters
    ----------
    logits : torch.Tensor
        ``(N, C, H, W)`` float.
    target : torch.Tensor
        ``(N, H, W)`` int64 with :data:`IGNORE_INDEX` (softmax) or ``(N, K, H, W)``
        float in {0, 1, 255} (multi-label).
    multilabel : bool
        Dice + BCE per channel instead of Dice + cross-entropy.

    Returns
    -------
    torch.Tensor
        The scalar loss (0 with a gradient when every pixel is ignored).
    """
    from segmentation_models_pytorch.losses import DiceLoss

    if not multilabel:
        ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
        if not torch.isfinite(ce):  # every pixel ignored
            ce = logits.sum() * 0.0
        dl = DiceLoss("multiclass", from_logits=True, ignore_index=IGNORE_INDEX)(logits, target)
        return ce + dl
    valid = target != IGNORE_INDEX
    tgt = torch.where(valid, target, torch.zeros_like(target))
    bce = F.binary_cross_entropy_with_logits(logits, tgt, reduction="none")
    bce = (bce * valid).sum() / valid.sum().clamp_min(1)
    dl = DiceLoss("multilabel", from_logits=True, ignore_index=IGNORE_INDEX)(logits, target)
    return bce + dl
