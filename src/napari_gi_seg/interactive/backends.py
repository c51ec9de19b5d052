"""What turns one slice's prompts into a mask: the promptable network, or scikit-image's
random walker when no promptable model is installed (and as the benchmark's baseline).

Both answer ``predict(volume, z, prompts, previous) -> (y, x) bool`` for a ``(z, y, x)``
float32 stack; ``previous`` is the object's current mask on slice ``z`` (refinement)
or the mask of the neighbouring slice (propagation, with empty ``prompts``).
"""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import InputError
from . import encoding as enc

log = logging.getLogger(__name__)

#: Name of the fallback backend (``PromptSession(volume, model=RANDOM_WALKER)``).
RANDOM_WALKER = "random-walker"


def _disk_seeds(seeds: np.ndarray, points, radius: float, value_pos: int = 1, value_neg: int = 2) -> None:
    h, w = seeds.shape
    yy, xx = np.ogrid[0:h, 0:w]
    for y, x, p in points:
        seeds[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = value_pos if p else value_neg


class RandomWalkerBackend:
    """The random walker (Grady 2006; :func:`skimage.segmentation.random_walker`, mode
    ``cg``, ``beta`` 130) on a crop of the slice.

    Seeds: outside the box and the crop's edge are background; positive/negative
    clicks are disks of ``click_radius_px`` pixels and scribbles are seeds as drawn;
    the box's central rectangle (``core`` of each side), where its intensity is typical
    of that rectangle, is object (less the surroundings of negative prompts). Without a box, the previous mask eroded by 2 pixels
    eroded by 15 % of its size, where the intensity lies within 2 median absolute
    deviations of the object's median on its own slice, is object (no such pixel: the
    object has ended, the mask is empty), and everything beyond the previous mask
    dilated by 10 % of its size is background;
    clicks and scribbles override both. Crops wider than ``max_side`` pixels are
    solved at ``max_side`` and the probability resampled back.
    """

    name = RANDOM_WALKER
    kind = "random walker"

    def __init__(self, beta: float = 130.0, click_radius_px: float = 2.0, max_side: int = 128, core: float = 0.4):
        self.beta = beta
        self.core = core
        self.click_radius_px = click_radius_px
        self.max_side = max_side

    def _box_core(self, img: np.ndarray, prompts: enc.SlicePrompts) -> np.ndarray:
        """Object seeds from a box: its central rectangle (``core`` of each side), only
        the pixels within 1.5 median absolute deviations of that rectangle's median
        intensity, less disks of the same radius as the clicks around negative clicks
        and the negative scribbles."""
        y0, x0, y1, x1 = prompts.box
        h, w = y1 - y0, x1 - x0
        cy0, cy1 = y0 + int(h * (1 - self.core) / 2), y1 - int(h * (1 - self.core) / 2)
        cx0, cx1 = x0 + int(w * (1 - self.core) / 2), x1 - int(w * (1 - self.core) / 2)
        core = np.zeros(img.shape, bool)
        core[cy0 : max(cy1, cy0 + 1), cx0 : max(cx1, cx0 + 1)] = True
        vals = img[core]
        med = float(np.median(vals))
        mad = float(np.median(np.abs(vals - med))) + 1e-6
        core &= np.abs(img - med) <= 1.5 * mad
        neg = np.zeros(img.shape, np.uint8)
        _disk_seeds(neg, [(y, x, True) for y, x, p in prompts.points if not p], 3 * self.click_radius_px)
        for m, p in prompts.scribbles:
            if not p:
                neg[m] = 1
        return core & (neg == 0)

    def predict(
        self,
        volume: np.ndarray,
        z: int,
        prompts: enc.SlicePrompts,
        previous: np.ndarray | None,
        previous_z: int | None = None,
    ) -> np.ndarray:
        """The object on slice ``z`` as a ``(y, x)`` bool mask (see the class docstring);
        ``previous_z`` is the slice ``previous`` was drawn on (``z`` when omitted)."""
        from skimage.segmentation import random_walker

        img = volume[z].astype(np.float32)
        shape = img.shape
        crop = enc.crop_for(shape, prompts.box, previous if prompts.box is None else None, prompts.points)
        seeds = np.zeros(shape, np.uint8)
        if prompts.box is not None:
            y0, x0, y1, x1 = prompts.box
            seeds[:] = 2
            seeds[y0:y1, x0:x1] = 0
            seeds[self._box_core(img, prompts)] = 1
        elif previous is not None and previous.any():
            b = enc.bbox_of(previous)
            size = max(b[2] - b[0], b[3] - b[1])
            core = ndimage.binary_erosion(previous, iterations=max(2, int(0.15 * size)))
            if not core.any():
                core = ndimage.binary_erosion(previous, iterations=1)
            src = volume[previous_z if previous_z is not None else z].astype(np.float32)
            vals = src[previous]
            med = float(np.median(vals))
            mad = float(np.median(np.abs(vals - med))) + 1e-6
            core &= np.abs(img - med) <= 2.0 * mad  # the object's intensity, or it has ended
            if core.sum() < 3 and not any(p for _, _, p in prompts.points):
                return np.zeros(shape, bool)
            grow = max(3, int(0.1 * size))
            seeds[~ndimage.binary_dilation(previous, iterations=grow)] = 2
            seeds[core] = 1
        for m, p in prompts.scribbles:
            seeds[m] = 1 if p else 2
        _disk_seeds(seeds, prompts.points, self.click_radius_px)
        sc = enc.extract(seeds, crop)
        ic = enc.extract(img, crop)
        outside = enc.extract(np.ones(shape, np.uint8), crop) == 0
        ring = np.zeros_like(outside)
        ring[[0, -1], :] = ring[:, [0, -1]] = True
        sc[(outside | ring) & (sc == 0)] = 2  # the crop's edge is background
        if not (sc == 1).any():
            return np.zeros(shape, bool)
        if not (sc == 2).any():
            return enc.paste(np.ones_like(sc, bool), crop, shape) & (seeds != 2)
        lo, hi = np.percentile(ic[~outside] if (~outside).any() else ic, enc.CROP_PERCENTILES)
        ic = np.clip((ic - lo) / max(hi - lo, 1e-6), 0, 1)
        side = crop.side
        if side > self.max_side:
            ic_s = enc.resize(ic, self.max_side)
            sc_s = enc.resize(sc.astype(np.float32), self.max_side, mode="nearest").astype(np.uint8)
        else:
            ic_s, sc_s = ic, sc
        if not (sc_s == 1).any():  # a seed lost by the shrink: solve at full size
            ic_s, sc_s = ic, sc
        if float(ic_s.std()) < 1e-6:  # a flat crop: no edges to follow
            return enc.paste(sc == 1, crop, shape)
        with warnings.catch_warnings():  # "cg did not converge" on a few hard crops: the result is still usable
            warnings.simplefilter("ignore")
            prob = random_walker(ic_s, sc_s, beta=self.beta, mode="cg", tol=1e-3, return_full_prob=True)[0]
        if prob.shape[0] != side:
            prob = enc.resize(prob, side)
        return enc.paste(prob > 0.5, crop, shape)


class PromptModelBackend:
    """A promptable network from the registry (spec ``kind == "promptable"``).

    Parameters
    ----------
    spec : ModelSpec
    weights_path : path
        Its ``model.safetensors``.
    device : str
        ``"cpu"`` (default) or a torch device.
    """

    kind = "promptable network"

    def __init__(self, spec, weights_path: str | Path, device: str = "cpu"):
        from ..models.network import load_network

        if getattr(spec, "kind", "semantic") != "promptable":
            raise InputError(f"model {spec.key} is not promptable (kind {spec.kind!r})")
        self.spec = spec
        self.name = spec.key
        self.device = device
        self.net = load_network(spec, weights_path, device)
        pe = spec.prompt_encoding or {}
        self.margin = float(pe.get("crop_margin", enc.CROP_MARGIN))
        self.radius = float(pe.get("click_radius_px", enc.CLICK_RADIUS_PX))
        self.size = int(spec.input_size[0])

    def predict(
        self,
        volume: np.ndarray,
        z: int,
        prompts: enc.SlicePrompts,
        previous: np.ndarray | None,
        previous_z: int | None = None,
    ) -> np.ndarray:
        """The object on slice ``z`` as a ``(y, x)`` bool mask (``previous_z`` is unused:
        the network sees the previous mask and slices ``z + context_offsets``)."""
        import torch

        shape = volume.shape[1:]
        crop = enc.crop_for(shape, prompts.box, previous, prompts.points, margin=self.margin)
        ctx = enc.context_slices(volume, z, self.spec.context_offsets)
        x = enc.encode(ctx, prompts, previous, crop, size=self.size, radius=self.radius)
        with torch.inference_mode():
            logits = self.net(torch.from_numpy(x[None]).to(self.device))[0, 0].float().cpu().numpy()
        return enc.decode(logits, crop, shape)


@functools.lru_cache(maxsize=4)
def _cached_model(folder: str, key: str, device: str) -> PromptModelBackend:
    from ..models.spec import ModelSpec

    spec = ModelSpec.load(Path(folder) / "spec.json")
    return PromptModelBackend(spec, Path(folder) / "model.safetensors", device)


def default_prompt_model_key() -> str | None:
    """The key of the newest bundled promptable model (else the newest user one), or
    ``None`` when none is installed."""
    from ..models.registry import list_models

    entries = list_models(kind="promptable")
    if not entries:
        return None
    bundled = [e for e in entries if e.bundled]
    return max(bundled or entries, key=lambda e: e.version).key


def load_backend(model=None, device: str = "cpu"):
    """The backend for ``model``.

    Parameters
    ----------
    model : None, str or backend
        ``None``: the default promptable model, or the random walker when none is
        installed; :data:`RANDOM_WALKER`; a registry key ``"name[:version]"`` of a
        promptable model; or any object with ``predict``.

    Returns
    -------
    RandomWalkerBackend or PromptModelBackend
        Networks are loaded once per process and key (cached).

    Raises
    ------
    napari_gi_seg.models.registry.ModelNotFoundError
        Unknown key.
    ValueError
        The model is not promptable.
    """
    from ..models import registry

    if model is not None and not isinstance(model, str):
        return model
    if model == RANDOM_WALKER:
        return RandomWalkerBackend()
    key = model or default_prompt_model_key()
    if key is None:
        log.info("no promptable model installed: using the random walker")
        return RandomWalkerBackend()
    name, version = registry.parse_key(key)
    entry = registry.get_entry(name, version)
    return _cached_model(str(entry.folder), entry.key, device)
