"""Augmentations of 2.5D training samples that are not the training recipe's MONAI chain
(:meth:`napari_gi_seg.training.trainer.SliceDataset._make_transform`)."""

from __future__ import annotations

import math

import torch


class FewSliceAugment:
    """Augmentation for fine-tuning on a few slices of one scan, in plain torch.

    Geometry is what varies most between the slices of one scan (an organ's size and
    shape change from slice to slice), so with probability 0.9 a sample is rotated
    (+-12 deg), scaled (+-15 % per axis), sheared (+-0.05) and translated (+-10 px) by
    one affine map (:func:`torch.nn.functional.affine_grid`; bilinear for the image,
    nearest for the label, zeros outside: the ranges and modes of MONAI's ``RandAffined``
    in the training recipe, a little milder). Intensity varies little within one scan,
    so only a mild gamma (0.7..1.5 on the min-max range, p 0.3, as MONAI's
    ``RandAdjustContrast``), scale (+-10 %, p 0.3) and Gaussian noise (sd 0.02, p 0.15).

    Plain torch rather than MONAI's transforms here because the first ``import monai``
    holds the GIL for up to 0.6 s at a time (measured on the 2-core development
    machine), which would freeze the viewer while the widget's worker thread runs.

    Parameters
    ----------
    seed
        Seeds the augmentation's own generator (reproducible runs).

    Calling it on ``{"image": (C, H, W) float, "label": (1 or K, H, W) float}`` returns
    the same keys, transformed (the interface of a MONAI dictionary transform, so it
    stands in for :attr:`SliceDataset.transform`).
    """

    def __init__(self, seed: int = 0):
        self.g = torch.Generator().manual_seed(int(seed))

    def _u(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.g))

    def _p(self, p: float) -> bool:
        return float(torch.rand((), generator=self.g)) < p

    def __call__(self, d: dict) -> dict:
        import torch.nn.functional as F

        x, y = torch.as_tensor(d["image"]).float(), torch.as_tensor(d["label"]).float()
        if self._p(0.9):
            h, w = x.shape[-2:]
            a = math.radians(self._u(-12.0, 12.0))
            sx, sy = 1.0 + self._u(-0.15, 0.15), 1.0 + self._u(-0.15, 0.15)
            shx, shy = self._u(-0.05, 0.05), self._u(-0.05, 0.05)
            rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            lin = rot @ torch.tensor([[1.0, shx], [shy, 1.0]]) @ torch.diag(torch.tensor([1 / sx, 1 / sy]))
            t = torch.tensor([2 * self._u(-10, 10) / w, 2 * self._u(-10, 10) / h])
            theta = torch.cat([lin, t[:, None]], 1)[None]
            grid = F.affine_grid(theta, [1, x.shape[0], h, w], align_corners=False)
            x = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
            y = F.grid_sample(y[None], grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
        if self._p(0.3):
            lo, hi = x.min(), x.max()
            span = (hi - lo).clamp_min(1e-6)
            x = ((x - lo) / span) ** self._u(0.7, 1.5) * span + lo
        if self._p(0.3):
            x = x * (1.0 + self._u(-0.1, 0.1))
        if self._p(0.15):
            x = x + 0.02 * torch.randn(x.shape, generator=self.g)
        return {"image": x, "label": y}
