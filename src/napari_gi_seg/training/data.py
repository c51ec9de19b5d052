"""Training samples: the 2.5D slice dataset (cases brought into the model's frame,
exactly as inference sees a scan) with its MONAI augmentation."""

from __future__ import annotations

import math

import torch

from ..datasets import IGNORE_INDEX, Case
from ..datasets.case import not_annotated
from ..engine.frame import case_to_model_frame
from ..engine.preprocess import context_indices
from ..models.spec import ModelSpec

__all__ = ["SliceDataset", "invert_intensity", "seed_worker"]


class SliceDataset(torch.utils.data.Dataset):
    """All labelled slices of a list of cases as 2.5D training samples (slices that
    are entirely the ignore label are left out; they still serve as 2.5D context).

    Volumes are normalised per volume and brought into the model's frame
    (reoriented, resampled to its spacing, padded/cropped to ``spec.input_size``:
    :func:`~napari_gi_seg.engine.frame.case_to_model_frame`) once at construction
    (float16 in memory). ``__getitem__`` returns ``(x, y)``:
    ``x`` ``(C, size, size)`` float32, ``y`` ``(size, size)`` int64 (softmax, with
    :data:`IGNORE_INDEX`) or ``(K, size, size)`` float32 (multi-label, 255 = ignore).
    With partial labels (a softmax model and a case whose ``annotated`` leaves out one
    of the spec's classes) it returns ``(x, y, not_annotated)``, ``not_annotated``
    ``(spec.out_channels,)`` bool, for the marginal loss
    (:func:`~napari_gi_seg.training.losses.segmentation_loss`); multi-label targets
    carry partial labels as per-channel ignore instead
    (:func:`~napari_gi_seg.datasets.as_multilabel`).

    Parameters
    ----------
    cases : list of Case
        Loaded cases in their file's storage order; ``target`` ``(z, y, x)`` uint8 or
        ``(K, z, y, x)``.
    spec : ModelSpec
        Input size, 2.5D offsets, normalisation, activation, mirrored classes.
    augment : bool
        MONAI augmentation (:meth:`_make_transform`).
    allow_flip : bool
        Left-right flips (p = 0.5) with the mirrored classes swapped (only with ``augment``).
    invert : float
        Probability of an inverted-intensity sample (only with ``augment``;
        :func:`invert_intensity`), 0 = never.
    """

    def __init__(self, cases: list[Case], spec: ModelSpec, augment: bool, allow_flip: bool, invert: float = 0.0):
        self.spec = spec
        self.invert = float(invert) if augment else 0.0
        # Left-right flips (p = 0.5) when allowed; for lateralised classes the flip also
        # swaps each class with its mirror (left kidney <-> right kidney) when
        # spec.flip_labels == "swap" (anatomical), and keeps them when "keep" (contextual):
        # spec.mirror_permutation() says which, for training and flip TTA alike.
        self.flip = bool(augment and allow_flip)
        perm = spec.mirror_permutation()
        if spec.activation == "softmax":
            lut = torch.arange(256, dtype=torch.long)
            lut[: len(perm)] = torch.tensor(perm)
            self.flip_lut, self.flip_channels = lut, None
        else:
            self.flip_lut, self.flip_channels = None, torch.tensor(perm)
        self.images, self.targets, self.index, self.not_annotated = [], [], [], []
        names = [k.name for k in spec.classes]
        for c in cases:
            u = torch.zeros(spec.out_channels, dtype=torch.bool)
            if spec.activation == "softmax":
                for n in not_annotated(c.annotated, names):
                    u[names.index(n) + 1] = True
            self.not_annotated.append(u)
        self.partial = any(bool(u.any()) for u in self.not_annotated)
        for ci, c in enumerate(cases):
            # the model's frame, exactly as inference sees a scan (engine.frame)
            im, t = case_to_model_frame(c.image, c.target, spec)
            im = im.half()
            self.images.append(im)
            self.targets.append(t)
            # slices whose every voxel is the ignore label (not reviewed) teach nothing: skip them
            flat = t.reshape(t.shape[0], -1) if t.ndim == 3 else t.transpose(0, 1).reshape(t.shape[1], -1)
            labelled = (flat != IGNORE_INDEX).any(1)
            self.index.extend((ci, z) for z in range(im.shape[0]) if bool(labelled[z]))
        self.transform = self._make_transform() if augment else None

    @staticmethod
    def _make_transform():
        """MONAI augmentation of one 2.5D sample: geometry (affine) on image and label,
        then MR intensity variation on the image: bias field, non-linear histogram
        shift (tissue contrast differs between scanners and patients: on CHAOS the
        kidney/liver intensity ratio ranges from 1.5 to 2.4), gamma, scale, shift,
        blur and noise. No left-right flip here (see ``flip``)."""
        from monai.transforms import (
            Compose,
            RandAdjustContrastd,
            RandAffined,
            RandBiasFieldd,
            RandGaussianNoised,
            RandGaussianSmoothd,
            RandHistogramShiftd,
            RandScaleIntensityd,
            RandShiftIntensityd,
        )

        t = [
            RandAffined(
                keys=("image", "label"),
                prob=0.8,
                rotate_range=(math.radians(15),),
                scale_range=(0.15, 0.15),
                translate_range=(12, 12),
                shear_range=(0.05, 0.05),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandBiasFieldd(keys="image", coeff_range=(0.0, 0.3), prob=0.3),
            RandHistogramShiftd(keys="image", num_control_points=(5, 10), prob=0.4),
            RandAdjustContrastd(keys="image", gamma=(0.5, 2.0), prob=0.4),
            RandScaleIntensityd(keys="image", factors=0.3, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.3),
            RandGaussianSmoothd(keys="image", sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0), prob=0.1),
            RandGaussianNoised(keys="image", std=0.03, prob=0.15),
        ]
        return Compose(t)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        ci, z = self.index[i]
        im = self.images[ci]
        idx = context_indices([z], self.spec.context_offsets, im.shape[0])[0]
        x = im[idx].float()
        t = self.targets[ci]
        y = t[z] if t.ndim == 3 else t[:, z]
        if self.transform is not None:
            lab = y[None].float() if y.ndim == 2 else y.float()
            d = self.transform({"image": x, "label": lab})
            x = torch.as_tensor(d["image"]).float()
            lab = torch.as_tensor(d["label"])
            y = lab[0].round().long() if y.ndim == 2 else lab.round().float()
        else:
            y = y.long() if y.ndim == 2 else y.float()
        if self.invert and torch.rand(()) < self.invert:
            x = invert_intensity(x, self.spec.normalisation)
        u = self.not_annotated[ci]
        if self.flip and torch.rand(()) < 0.5:
            x, y = torch.flip(x, (-1,)), torch.flip(y, (-1,))
            y = self.flip_lut[y] if y.ndim == 2 else y[self.flip_channels]
            if self.flip_lut is not None:
                u = u[self.flip_lut[: u.numel()]]
        if self.partial:
            return x.contiguous(), y.contiguous(), u
        return x.contiguous(), y.contiguous()


def invert_intensity(x: torch.Tensor, normalisation: str) -> torch.Tensor:
    """The image with its intensity order reversed, in the model's normalised scale:
    ``1 - x`` after ``"percentile"`` (values in [0, 1]), ``-x`` after ``"zscore"``.

    A contrast augmentation: T1 and T2 reverse the organs' order of brightness (kidney
    darker than liver on T1, brighter on T2), and on some T1 scans the kidneys are as
    bright as on T2 (CHAOS patient 36), so a network that learns brightness rules per
    contrast misses them; inverted samples push it towards shape and context. The
    background becomes bright too (the whole image is inverted).

    Parameters
    ----------
    x : torch.Tensor
        ``(C, y, x)`` float, normalised as ``normalisation`` (ModelSpec).
    normalisation : str
        ``"percentile"`` or ``"zscore"``.
    """
    return -x if normalisation == "zscore" else 1.0 - x


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy, ``random`` and the worker's copy of
    the MONAI transforms from the worker's torch seed (which the loader derives from
    its seeded generator), so ``--seed`` reaches every random draw with workers too."""
    import random

    import numpy as np
    import torch
    from monai.data.utils import worker_init_fn

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002
    random.seed(seed)
    worker_init_fn(worker_id)
