"""Training loss: Dice + cross-entropy (softmax) or Dice + BCE (multi-label), with
the ignore label excluded from both terms; with partial labels (classes a case does
not annotate) the marginal loss (softmax) or per-channel ignore (multi-label).

Partial labels
--------------
When a case does not annotate class ``c`` (e.g. it was exported before the structure
``c`` was added), its background voxels mean "background or ``c``". Plain
cross-entropy would teach "not ``c``" there and so unlearn ``c`` wherever such a case
shows it. The **marginal loss** (Shi, Xiao, Zhou et al., "Marginal loss and exclusion
loss for partially supervised multi-organ segmentation", Medical Image Analysis 70
(2021) 101979; Fang & Yan, "Multi-organ segmentation over partially labeled datasets
with multi-scale feature abstraction", IEEE TMI 39(11) 2020) merges, per case, the
probabilities of the classes it does not annotate into background,
``p'_bg = p_bg + sum_{c not annotated} p_c``, and applies cross-entropy and Dice to the
merged distribution (the not-annotated classes get no Dice term of their own in that
case). A sigmoid (multi-label) model simply ignores the channels of classes a case
does not annotate (per-channel ignore).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..datasets import IGNORE_INDEX

__all__ = ["segmentation_loss", "marginal_loss"]


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, multilabel: bool, not_annotated: torch.Tensor | None = None
) -> torch.Tensor:
    """Dice + cross-entropy (softmax) or Dice + BCE (multi-label); with
    ``not_annotated``, the marginal loss (softmax, :func:`marginal_loss`) or per-channel
    ignore (multi-label).

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
    not_annotated : torch.Tensor, optional
        ``(N, C)`` bool over the output channels (softmax: channel 0 is background and
        always annotated): True where sample ``n`` does not annotate class ``c``. When
        nothing is True the loss is exactly the plain one.

    Returns
    -------
    torch.Tensor
        The scalar loss (0 with a gradient when every pixel is ignored).
    """
    from segmentation_models_pytorch.losses import DiceLoss

    if not_annotated is not None and bool(not_annotated.any()):
        if not multilabel:
            return marginal_loss(logits, target, not_annotated)
        mask = not_annotated.to(target.device)[:, :, None, None].expand_as(target)
        target = torch.where(mask, torch.full_like(target, IGNORE_INDEX), target)
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


def marginal_loss(logits: torch.Tensor, target: torch.Tensor, not_annotated: torch.Tensor) -> torch.Tensor:
    """Marginal cross-entropy + marginal soft Dice for partially labelled softmax
    training (Shi et al. 2021, see the module docstring).

    Per sample ``n``, the probabilities of the classes it does not annotate are merged
    into background (``p'_0 = p_0 + sum_{c in U_n} p_c``); cross-entropy is taken on
    the merged distribution over the non-ignored pixels, and the soft Dice of class
    ``c`` (over the batch, as segmentation-models-pytorch's ``DiceLoss("multiclass")``,
    classes absent from the batch's annotated targets left out) only over the samples
    that annotate ``c``, background with the merged probability. With no class left
    out this equals :func:`segmentation_loss` up to float rounding.

    Parameters
    ----------
    logits : torch.Tensor
        ``(N, C, H, W)`` float (C = K + 1, channel 0 background).
    target : torch.Tensor
        ``(N, H, W)`` int64 in 0..K or :data:`IGNORE_INDEX`; a value of a class the
        sample does not annotate is treated as ignored.
    not_annotated : torch.Tensor
        ``(N, C)`` bool, True where sample ``n`` does not annotate class ``c``
        (column 0 must be False).

    Returns
    -------
    torch.Tensor
        The scalar loss.
    """
    n, c = logits.shape[:2]
    u = not_annotated.to(logits.device).bool().clone()
    u[:, 0] = False
    logp = F.log_softmax(logits, dim=1)
    merge = u.clone()
    merge[:, 0] = True  # background and the classes not annotated
    neg = torch.finfo(logp.dtype).min
    logp_bg = torch.logsumexp(torch.where(merge[:, :, None, None], logp, torch.full_like(logp, neg)), dim=1)
    valid = target != IGNORE_INDEX
    tgt = torch.where(valid, target, torch.zeros_like(target))
    valid = valid & ~torch.gather(u, 1, tgt.reshape(n, -1)).reshape_as(tgt)  # a not-annotated class's value: no label
    picked = torch.gather(logp, 1, tgt[:, None]).squeeze(1)
    picked = torch.where(tgt == 0, logp_bg, picked)
    v = valid.to(logits.dtype)
    ce = -(picked * v).sum() / v.sum().clamp_min(1.0)
    if not bool(valid.any()):
        ce = logits.sum() * 0.0
    # marginal soft Dice: merged background probability; class c only where annotated
    prob = logp.exp()
    prob = torch.cat([logp_bg.exp()[:, None], prob[:, 1:]], dim=1)
    onehot = F.one_hot(tgt, c).permute(0, 3, 1, 2).to(prob.dtype)
    w = v[:, None] * (~u).to(prob.dtype)[:, :, None, None]  # (N, C, H, W): pixel valid and class annotated
    inter = (prob * onehot * w).sum((0, 2, 3))
    card = ((prob + onehot) * w).sum((0, 2, 3))
    eps = 1e-7
    dice = (2.0 * inter) / card.clamp_min(eps)
    present = ((onehot * w).sum((0, 2, 3)) > 0).to(prob.dtype)
    dl = ((1.0 - dice) * present).mean()
    return ce + dl


def slice_presence(target: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """``(N,)`` float32: 1 where a training slice holds any foreground voxel, the
    target of the empty-slice gate (:class:`~napari_gi_seg.models.zoo.SliceGate`).

    ``target`` as for :func:`segmentation_loss`; ignored voxels (:data:`IGNORE_INDEX`)
    count as no foreground."""
    fg = (target > 0) & (target != IGNORE_INDEX)
    return fg.flatten(1).any(1).float()


def gate_loss(gate_logit: torch.Tensor, target: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Binary cross-entropy of the gate's ``(N,)`` logits against
    :func:`slice_presence` (added to the segmentation loss when ``spec.gate`` is set;
    the two-stage classifier of the UW-Madison GI tract winners, trained jointly here)."""
    return F.binary_cross_entropy_with_logits(gate_logit.float(), slice_presence(target, multilabel))
