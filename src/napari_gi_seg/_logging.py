"""Logging setup: the package logs through :mod:`logging` (logger ``napari_gi_seg``),
never ``print``, except for a command's own result lines.

* :func:`setup_cli_logging`: the CLI's stderr handler (``INFO``; ``--debug``: ``DEBUG``
  with logger names, and tracebacks for errors).
* :func:`run_log_file`: a context manager that writes every record of the package
  into a run's log file (``<run folder>/train.log``) while the run lasts.

A library user (or napari) who configures nothing sees only warnings, as Python's
logging does by default.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

LOGGER_NAME = "napari_gi_seg"
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_cli_handler: logging.Handler | None = None


class _CLIFormatter(logging.Formatter):
    """The bare message; warnings and errors prefixed ``warning: `` / ``error: ``."""

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        if record.levelno >= logging.ERROR:
            return f"error: {msg}"
        if record.levelno >= logging.WARNING:
            return f"warning: {msg}"
        return msg


def setup_cli_logging(debug: bool = False) -> logging.Logger:
    """Send the package's log records to stderr (one handler, installed once).

    Parameters
    ----------
    debug : bool
        ``DEBUG`` level with logger names (``--debug``); otherwise ``INFO`` with the
        bare message.

    Returns
    -------
    logging.Logger
        The package logger ``napari_gi_seg``.
    """
    global _cli_handler
    logger = logging.getLogger(LOGGER_NAME)
    if _cli_handler is not None:
        logger.removeHandler(_cli_handler)
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s") if debug else _CLIFormatter())
    h.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.addHandler(h)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False  # the root logger (``--debug`` configures it for other libraries) must not repeat us
    _cli_handler = h
    return logger


def is_debug() -> bool:
    """True when the package logger is at ``DEBUG`` (``--debug`` on the CLI)."""
    return logging.getLogger(LOGGER_NAME).isEnabledFor(logging.DEBUG)


@contextlib.contextmanager
def run_log_file(path: str | Path, level: int = logging.DEBUG, redact: dict[str, str] | None = None) -> Iterator[Path]:
    """Append every log record of the package to ``path`` while the block runs.

    Parameters
    ----------
    path : str or Path
        The log file (its folder is created; an existing file is appended to, so a
        resumed run keeps one log; nested calls for the same file write it once).
    level : int
        Lowest level written (default ``DEBUG``: the file keeps more than the terminal).
    redact : dict, optional
        ``{private text: pseudonym}`` replaced in every line the file gets (dataset
        folder and case names: :func:`napari_gi_seg._privacy.redactions`); a nested
        call for the same file adds its pairs to the enclosing one's.

    Yields
    ------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(LOGGER_NAME)
    target = str(path.resolve())
    from ._privacy import RedactingFormatter

    for other in logger.handlers:
        if getattr(other, "baseFilename", None) == target:  # an enclosing run already writes this file
            if redact and isinstance(other.formatter, RedactingFormatter):
                other.formatter.add(redact)
            yield path
            return
    h = logging.FileHandler(path, encoding="utf-8")
    h.setLevel(level)
    h.setFormatter(RedactingFormatter(FILE_FORMAT, redact or {}))
    old = logger.level
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    logger.addHandler(h)
    try:
        yield path
    except BaseException:
        # the traceback goes to the file only: the terminal gets the caller's one-line error
        h.handle(logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "run failed", None, sys.exc_info()))
        raise
    finally:
        logger.removeHandler(h)
        h.close()
        logger.setLevel(old)
