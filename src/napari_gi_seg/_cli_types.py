"""argparse ``type=`` functions with ranges: every numeric option of every sub-command
is checked while the command line is parsed, before any import of torch, any data is
read or any run folder is made (argparse then exits 2 with
``napari-gi-seg <command>: error: argument --epochs: must be an integer >= 1, got 0``).

Each factory returns a function named after the rule, so ``--help`` and error
messages stay readable.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["int_at_least", "float_above", "float_at_least", "fraction", "probability", "SEED_MAX"]

#: Largest seed numpy's and torch's generators accept (2**32 - 1).
SEED_MAX = 2**32 - 1


def int_at_least(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An integer ``lo <= v`` (and ``v <= hi`` when given)."""

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {s!r}") from None
        if v < lo or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise argparse.ArgumentTypeError(f"must be an integer {rng}, got {v}")
        return v

    parse.__name__ = f"integer >= {lo}" if hi is None else f"integer {lo}..{hi}"
    return parse


def _finite(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {s!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {s!r}")
    return v


def float_above(lo: float) -> Callable[[str], float]:
    """A finite number ``v > lo`` (e.g. a learning rate or a time budget > 0)."""

    def parse(s: str) -> float:
        v = _finite(s)
        if not v > lo:
            raise argparse.ArgumentTypeError(f"must be a number > {lo:g}, got {s}")
        return v

    parse.__name__ = f"number > {lo:g}"
    return parse


def float_at_least(lo: float) -> Callable[[str], float]:
    """A finite number ``v >= lo``."""

    def parse(s: str) -> float:
        v = _finite(s)
        if not v >= lo:
            raise argparse.ArgumentTypeError(f"must be a number >= {lo:g}, got {s}")
        return v

    parse.__name__ = f"number >= {lo:g}"
    return parse


def probability(s: str) -> float:
    """A probability: ``0 <= v <= 1``."""
    v = _finite(s)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1], got {s}")
    return v


def fraction(allow_zero: bool = False) -> Callable[[str], float]:
    """A share strictly below 1: ``0 < v < 1`` (``0 <= v < 1`` with ``allow_zero``)."""

    def parse(s: str) -> float:
        v = _finite(s)
        if not ((0 <= v) if allow_zero else (0 < v)) or not v < 1:
            rng = "in [0, 1)" if allow_zero else "in (0, 1)"
            raise argparse.ArgumentTypeError(f"must be a fraction {rng}, got {s}")
        return v

    parse.__name__ = "fraction in [0, 1)" if allow_zero else "fraction in (0, 1)"
    return parse
