"""The package's errors: one base class, :class:`GiSegError`, for every failure that is
the user's input or environment rather than a bug.

Each subclass also derives from the built-in type it replaced (``ValueError``,
``LookupError``, ...), so ``except ValueError`` in callers keeps working. The command
line maps :class:`GiSegError` (and ``OSError``/``MemoryError`` from the operating
system) to one line and exit status 2; any other exception is a bug (exit 1,
"internal error").

The concrete classes live in the rooms that raise them (``io.volume.InvalidInputError``,
``datasets.case.DatasetFormatError``, ``models.registry.ModelNotFoundError``, ...); new
code raises one of those or one of the generic classes below.
"""

from __future__ import annotations

__all__ = ["GiSegError", "InputError", "NotFoundError", "OutOfRangeError", "ConflictError", "UsageError"]


class GiSegError(Exception):
    """Base of every expected failure of napari-gi-seg (bad input, a missing model,
    a refused operation). The message names the file or object and the problem."""


class InputError(GiSegError, ValueError):
    """A file, folder or value given by the user that cannot be used as it is."""


class NotFoundError(GiSegError, LookupError):
    """Something the user named (a model, a class, a case) does not exist."""


class ConflictError(GiSegError, FileExistsError):
    """An operation refused because it would overwrite or contradict existing data."""


class UsageError(GiSegError, ValueError):
    """A command-line option or argument value out of its documented range."""


class OutOfRangeError(GiSegError, IndexError):
    """A slice, class or other index the user gave lies outside the data's range."""
