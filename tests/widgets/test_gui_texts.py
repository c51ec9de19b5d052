"""What the dock tells a user names the dock's own actions (buttons, check boxes,
tabs), never a command-line flag: every string literal in the ``_qt`` modules that is
not a docstring and not a command line the widgets run is free of ``--option``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import napari_gi_seg._qt as qt_pkg

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")


def _docstrings(tree) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _argv_strings(tree) -> set[int]:
    """String constants that are a command line's own words (``"--model"``, or the
    ``extra.append("--resume")`` / ``extra += ["--stop-file", ...]`` of the Fine-tune
    widget's process): exactly one flag and nothing else."""
    return {
        id(n)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and re.fullmatch(r"--[a-z-]+", n.value)
    }


def user_facing_flags(source: str) -> list[str]:
    """``"line: text"`` for each non-docstring string literal naming a ``--flag``."""
    tree = ast.parse(source)
    skip = _docstrings(tree) | _argv_strings(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if FLAG.search(node.value):
                out.append(f"{node.lineno}: {node.value}")
    return out


def test_no_cli_flags_in_widget_messages():
    bad = {}
    for path in sorted(Path(qt_pkg.__file__).parent.glob("*.py")):
        found = user_facing_flags(path.read_text())
        if found:
            bad[path.name] = found
    assert not bad, bad


def test_the_scan_finds_a_flag():
    src = 'def f():\n    """Docstring with --ok."""\n    show_error("register it with --register-if-worse")\n    x = ["--model"]\n'
    assert user_facing_flags(src) == ["3: register it with --register-if-worse"]
