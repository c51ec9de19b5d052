"""Shared by the hand-run benchmarks: write one section of ``docs/benchmarks.md``.

Each benchmark owns the text between its two markers ``<!-- NAME:start -->`` and
``<!-- NAME:end -->``; every other part of the file is kept as it is.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def markers(name: str) -> tuple[str, str]:
    """``("<!-- name:start -->", "<!-- name:end -->")``."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_section(name: str, markdown: str, path: str | Path = "docs/benchmarks.md") -> Path:
    """Replace the section ``name`` of ``path`` with ``markdown`` (appended when the
    file has no such section; the file is created with a ``# Benchmarks`` title when
    missing). ``markdown`` may already be wrapped in the section's markers.

    A relative ``path`` is taken from the repository root. The file is written to a
    temporary sibling and renamed, so a crash never leaves it half-written.
    Returns the path written. Raises ``ValueError`` for a name that is not
    ``[a-z0-9_-]+``.
    """
    if not re.fullmatch(r"[a-z0-9_-]+", name):
        raise ValueError(f"section name {name!r} must be lower-case letters, digits, '_' or '-'")
    path = Path(path)
    if not path.is_absolute():
        path = REPO / path
    start, end = markers(name)
    body = markdown.strip("\n")
    if body.startswith(start):
        body = body[len(start) :]
    if body.endswith(end):
        body = body[: -len(end)]
    block = f"{start}\n{body.strip(chr(10))}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.escape(start) + r".*?" + re.escape(end)
    if re.search(pattern, text, flags=re.S):
        text = re.sub(pattern, lambda _: block, text, count=1, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text)
    tmp.replace(path)
    return path
