"""How the command line fails: one line naming the file, a fixed exit status.

Expected failures (bad input, a missing file, an unknown model, a file-system error
such as a full disk or a read-only folder, not enough memory) print
``napari-gi-seg: error: <file>: <problem>`` and exit 2; an interrupt exits 130; an
unexpected error (a bug) prints one line and exits 1. ``--debug`` adds the traceback
and DEBUG logging.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from .errors import GiSegError

__all__ = ["CLIError", "EXPECTED_ERRORS", "error_line", "run_guarded"]


class CLIError(GiSegError):
    """An error reported as one line and exit status 2."""


#: Exceptions that are the user's input or environment, never a bug: exit 2. Every
#: expected failure of the package derives from :class:`~napari_gi_seg.errors.GiSegError`
#: (``InvalidInputError``, ``DatasetFormatError``, ``ModelNotFoundError``, ``InputError``,
#: ...); ``OSError`` and ``MemoryError`` come from the operating system. A plain
#: ``ValueError``, ``IndexError``, ``KeyError`` ... is a bug: exit 1, "internal error".
EXPECTED_ERRORS = (GiSegError, OSError, MemoryError)


def _subject(args: argparse.Namespace) -> str:
    """The file the command works on (named in messages that carry no file name)."""
    for k in ("input", "dataset", "out"):
        v = getattr(args, k, None)
        if v:
            return str(v)
    return "napari-gi-seg"


def error_line(e: BaseException, args: argparse.Namespace | None = None) -> str:
    """The one line printed for an expected failure ``e`` (without the prefix): the
    file and the problem. ``OSError``: ``<filename>: <strerror>``; ``MemoryError``:
    ``<input>: not enough memory ...``; others: their message (which names the file)."""
    subject = _subject(args) if args is not None else "napari-gi-seg"
    if isinstance(e, MemoryError):
        return f"{subject}: not enough memory for this input (a smaller --batch-size or a smaller volume may help)"
    if isinstance(e, OSError) and e.strerror:
        name = e.filename if e.filename is not None else subject
        return f"{name}: {e.strerror}"
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, KeyError):
        msg = f"{subject}: missing entry {msg}"
    return msg.splitlines()[0] if "\n" in msg else msg


def run_guarded(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace, debug: bool) -> int:
    """Call ``func(args)`` and turn its failure into an exit status and one line on
    stderr (see the module docstring)."""
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("napari-gi-seg: interrupted", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as e:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"napari-gi-seg: error: {error_line(e, args)}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: still one line; the traceback with --debug
        if debug:
            import traceback

            traceback.print_exc()
        first = str(e).splitlines()[0] if str(e) else ""
        print(
            f"napari-gi-seg: internal error: {type(e).__name__}: {first} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
