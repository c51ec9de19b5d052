"""One interactive object on one scan: prompts in, a 2D mask per slice and a 3D object out.

::

    from napari_gi_seg.interactive import PromptSession
    s = PromptSession(volume)                 # a Volume from io.read_image; default promptable model
    m = s.add_box(z, y0, x0, y1, x1)          # (y, x) bool: the current object on slice z
    m = s.add_point(z, y, x, positive=True)   # a positive or negative click
    m = s.add_scribble(z, mask, positive=True)
    m3 = s.propagate()                        # (z, y, x) bool: the object through the stack
    s.undo(); s.new_object()

Indices are into ``volume.data`` ``(z, y, x)``; boxes are half-open ``[y0, y1) x [x0, x1)``.

Propagation (micro-sam's slice-to-slice projection, Archit et al. 2025): from every
prompted slice outwards, the mask of slice ``z`` is the only prompt of ``z +- 1``
(the network's previous-mask channel; for the random walker, seeds from it), until the
object vanishes (under ``min_area_px``), stops overlapping the slice before it
(:data:`MIN_OVERLAP`), changes intensity (:data:`INTENSITY_SHIFT_MAD`: the object
has ended and the answer is another tissue), drifts in intensity away from the
prompted slice's object (:data:`ANCHOR_SHIFT_MAD`: step by step into a neighbour), reaches
``max_slices`` from its start, leaves ``[z_min, z_max]``, or meets the next prompted
slice (each slice between two prompted slices follows the nearer one). Prompts on any
slice, propagated or not, refine it from its current mask; the next :meth:`propagate`
carries that slice too.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from . import encoding as enc
from .backends import RandomWalkerBackend, load_backend

log = logging.getLogger(__name__)

#: Undo steps kept per object.
MAX_UNDO = 50
#: Propagation stops where the median intensity inside the new slice's object moves
#: more than this many median absolute deviations (of the object on the slice before)
#: away from the median before: the object has ended and the answer is another tissue.
INTENSITY_SHIFT_MAD = 2.0
#: Propagation stops where the median intensity inside the new slice's object lies
#: more than this many median absolute deviations (of the object on the prompted slice
#: it started from) away from that object's median: a slow drift into a neighbouring
#: tissue that no single step of :data:`INTENSITY_SHIFT_MAD` catches. On the held-out
#: CHAOS patients it raised the 3D Dice from one prompted slice from 0.665 to 0.689
#: (26 of 48 organs better, none worse; docs/benchmarks.md).
ANCHOR_SHIFT_MAD = 3.0
#: Propagation stops where less than this fraction of the smaller of two neighbouring
#: masks overlaps the other (the object jumped: not the same structure).
MIN_OVERLAP = 0.3


@dataclass
class _State:
    prompts: dict[int, enc.SlicePrompts] = field(default_factory=dict)
    mask: np.ndarray | None = None


class PromptSession:
    """Prompted segmentation of one object at a time on a ``(z, y, x)`` stack.

    Parameters
    ----------
    volume : Volume or ndarray
        A :class:`napari_gi_seg.io.volume.Volume` (its ``data``) or a ``(z, y, x)`` array.
    model : None, str or backend
        ``None`` (default): the bundled promptable model, or the random walker when none
        is installed; ``"random-walker"``; a promptable registry key; or a backend
        (:mod:`napari_gi_seg.interactive.backends`).
    min_area_px : int
        Propagation stops on a slice whose object has fewer pixels.
    max_slices : int or None
        Propagation goes at most this many slices from each prompted slice.
    z_range : (int, int) or None
        Inclusive ``(z_min, z_max)`` outside which propagation never goes.
    device : str
        Torch device of the network.
    propagator : None, str or backend
        What carries the object from slice to slice. ``None`` (default): the random
        walker, whatever answers the prompts: on the held-out CHAOS patients it gave
        the better 3D Dice from one prompted slice (0.69 when it carries ``chaos-prompt:1``'s
        slice, against 0.49 when the network propagates itself; docs/benchmarks.md);
        ``"model"``: the prompt backend itself; or any backend.

    Attributes
    ----------
    intensity_shift_mad : float or None
        Stop rule between neighbouring slices, in median absolute deviations of the
        object's intensity on the slice before (:data:`INTENSITY_SHIFT_MAD`, 2.0);
        ``None``: off.
    anchor_shift_mad : float or None
        Stop rule against the prompted slice the propagation started from, in median
        absolute deviations of the object's intensity there (:data:`ANCHOR_SHIFT_MAD`,
        3.0); ``None``: off (the behaviour before 2026-12-03).

    Raises
    ------
    InputError
        A volume that is not 3D.
    """

    def __init__(
        self,
        volume,
        model=None,
        min_area_px: int = 10,
        max_slices: int | None = None,
        z_range: tuple[int, int] | None = None,
        device: str = "cpu",
        propagator=None,
    ):
        data = getattr(volume, "data", volume)
        data = np.asarray(data)
        if data.ndim != 3 or min(data.shape) < 1:
            raise InputError(f"a prompt session needs a (z, y, x) stack, got shape {data.shape}")
        self.volume = data.astype(np.float32, copy=False)
        self.backend = load_backend(model, device)
        if propagator == "model":
            self.propagator = self.backend
        elif propagator is None:
            self.propagator = self.backend if isinstance(self.backend, RandomWalkerBackend) else RandomWalkerBackend()
        else:
            self.propagator = load_backend(propagator, device)
        self.min_area_px = int(min_area_px)
        self.max_slices = max_slices
        self.z_range = z_range
        #: see :data:`INTENSITY_SHIFT_MAD`; ``None`` switches the test off
        self.intensity_shift_mad = INTENSITY_SHIFT_MAD
        #: see :data:`ANCHOR_SHIFT_MAD`; ``None`` switches the test off
        self.anchor_shift_mad = ANCHOR_SHIFT_MAD
        self._state = _State(mask=np.zeros(self.volume.shape, bool))
        self._history: list[_State] = []
        #: seconds per backend call, newest last (latency figures)
        self.timings: list[tuple[str, float]] = []

    # ------------------------------------------------------------ state
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.volume.shape)  # type: ignore[return-value]

    @property
    def mask(self) -> np.ndarray:
        """The current object, ``(z, y, x)`` bool (a copy)."""
        return self._state.mask.copy()

    @property
    def prompted_slices(self) -> list[int]:
        """Slices that hold prompts, ascending."""
        return sorted(z for z, p in self._state.prompts.items() if not p.empty)

    @property
    def can_undo(self) -> bool:
        return bool(self._history)

    def prompts(self, z: int) -> enc.SlicePrompts:
        """A copy of the prompts on slice ``z``."""
        return self._state.prompts.get(int(z), enc.SlicePrompts()).copy()

    def _push(self) -> None:
        self._history.append(_State(copy.deepcopy(self._state.prompts), self._state.mask.copy()))
        del self._history[:-MAX_UNDO]

    def _check_z(self, z) -> int:
        z = int(z)
        if not 0 <= z < self.shape[0]:
            raise InputError(f"slice {z} is outside the stack (0..{self.shape[0] - 1})")
        return z

    def _check_yx(self, y, x) -> tuple[int, int]:
        y, x = int(round(float(y))), int(round(float(x)))
        if not (0 <= y < self.shape[1] and 0 <= x < self.shape[2]):
            raise InputError(f"point ({y}, {x}) is outside the slice ({self.shape[1]} x {self.shape[2]} pixels)")
        return y, x

    def _run(
        self, z: int, prompts: enc.SlicePrompts, previous: np.ndarray | None, what: str, previous_z: int | None = None
    ) -> np.ndarray:
        t0 = time.perf_counter()
        backend = self.propagator if what == "propagate" else self.backend
        m = np.asarray(backend.predict(self.volume, z, prompts, previous, previous_z=previous_z), bool)
        self.timings.append((what, time.perf_counter() - t0))
        return m

    def _update(self, z: int) -> np.ndarray:
        prompts = self._state.prompts[z]
        prev = self._state.mask[z]
        m = self._run(z, prompts, prev if prev.any() else None, "prompt")
        self._state.mask[z] = m
        return m.copy()

    # ------------------------------------------------------------ prompts
    def add_box(self, z: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Place (or replace) the box on slice ``z``: ``[y0, y1) x [x0, x1)`` pixels.

        Returns
        -------
        (y, x) bool
            The object on slice ``z``.

        Raises
        ------
        InputError
            An empty box or a slice outside the stack (nothing changes).
        """
        z = self._check_z(z)
        h, w = self.shape[1:]
        y0, y1 = sorted((int(y0), int(y1)))
        x0, x1 = sorted((int(x0), int(x1)))
        y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
        if y1 - y0 < 1 or x1 - x0 < 1:
            raise InputError(f"the box on slice {z} is empty inside the {h} x {w} slice")
        self._push()
        p = self._state.prompts.setdefault(z, enc.SlicePrompts())
        p.box = (y0, x0, y1, x1)
        return self._update(z)

    def add_point(self, z: int, y: float, x: float, positive: bool = True) -> np.ndarray:
        """A click at pixel ``(y, x)`` of slice ``z``: ``positive`` adds the region
        under it to the object, negative removes it. Returns the object on ``z``,
        ``(y, x)`` bool.

        Raises
        ------
        InputError
            A point outside the stack.
        """
        z = self._check_z(z)
        y, x = self._check_yx(y, x)
        self._push()
        self._state.prompts.setdefault(z, enc.SlicePrompts()).points.append((y, x, bool(positive)))
        return self._update(z)

    def add_scribble(self, z: int, mask: np.ndarray, positive: bool = True) -> np.ndarray:
        """A scribble (brush stroke) on slice ``z``: ``mask`` ``(y, x)`` bool of the slice's
        shape. Returns the object on ``z``.

        Raises
        ------
        InputError
            A mask of another shape, or an empty one.
        """
        z = self._check_z(z)
        mask = np.asarray(mask, bool)
        if mask.shape != self.shape[1:]:
            raise InputError(f"a scribble must have the slice's shape {self.shape[1:]}, got {mask.shape}")
        if not mask.any():
            raise InputError("the scribble is empty")
        self._push()
        self._state.prompts.setdefault(z, enc.SlicePrompts()).scribbles.append((mask.copy(), bool(positive)))
        return self._update(z)

    # ------------------------------------------------------------ 3D
    def propagate(self, max_slices: int | None = None, z_range: tuple[int, int] | None = None) -> np.ndarray:
        """Carry the object from every prompted slice through the stack.

        Parameters
        ----------
        max_slices, z_range
            Override the session's limits for this call (see the class).

        Returns
        -------
        (z, y, x) bool
            The 3D object: prompted slices as they are, the others propagated (slices
            not reached are empty).

        Raises
        ------
        InputError
            When no slice holds a prompt.
        """
        seeds = self.prompted_slices
        if not seeds:
            raise InputError("place a box, click or scribble on a slice before propagating")
        max_slices = self.max_slices if max_slices is None else max_slices
        z_lo, z_hi = z_range or self.z_range or (0, self.shape[0] - 1)
        z_lo, z_hi = max(0, int(z_lo)), min(self.shape[0] - 1, int(z_hi))
        self._push()
        old = self._state.mask
        out = np.zeros_like(old)
        for z in seeds:
            out[z] = old[z]
        for i, z0 in enumerate(seeds):
            below = seeds[i - 1] if i > 0 else None
            above = seeds[i + 1] if i + 1 < len(seeds) else None
            # up to the midpoint with the next prompted slice (the nearer one wins)
            stop_up = z_hi if above is None else min(z_hi, (z0 + above) // 2)
            stop_down = z_lo if below is None else max(z_lo, (z0 + below) // 2 + 1)
            for step, stop in ((1, stop_up), (-1, stop_down)):
                prev = out[z0]
                z, n = z0 + step, 1
                while prev.sum() >= self.min_area_px and (step > 0 and z <= stop or step < 0 and z >= stop):
                    if max_slices is not None and n > max_slices:
                        break
                    m = self._run(z, enc.SlicePrompts(), prev, "propagate", previous_z=z - step)
                    area = int(m.sum())
                    if area < self.min_area_px or (m & prev).sum() < MIN_OVERLAP * min(area, int(prev.sum())):
                        break
                    if self._intensity_jump(z - step, prev, z, m, self.intensity_shift_mad):
                        break
                    if self._intensity_jump(z0, out[z0], z, m, self.anchor_shift_mad):
                        break
                    out[z] = m
                    prev, z, n = m, z + step, n + 1
        self._state.mask = out
        return out.copy()

    def _intensity_jump(self, z_ref: int, ref: np.ndarray, z: int, m: np.ndarray, n_mad: float | None) -> bool:
        """True when the object's median intensity on ``z`` lies more than ``n_mad``
        median absolute deviations from the median of the mask ``ref`` on ``z_ref``
        (robust statistics of the object's pixels); never when ``n_mad`` is ``None``."""
        if n_mad is None:
            return False
        before = self.volume[z_ref][ref]
        med = float(np.median(before))
        mad = float(np.median(np.abs(before - med))) + 1e-6
        return abs(float(np.median(self.volume[z][m])) - med) > n_mad * mad

    # ------------------------------------------------------------ undo / reset
    def undo(self) -> bool:
        """Undo the last prompt or propagation; ``False`` when there is nothing to undo."""
        if not self._history:
            return False
        self._state = self._history.pop()
        return True

    def new_object(self) -> None:
        """Forget the current object, its prompts and its undo history."""
        self._state = _State(mask=np.zeros(self.shape, bool))
        self._history.clear()
