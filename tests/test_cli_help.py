"""``napari-gi-seg --help`` and every ``COMMAND --help`` are plain text: no reST
markup (double back-quotes, ``:func:`` roles) from the docstrings."""

from __future__ import annotations

import re

from napari_gi_seg.cli import build_parser

MARKUP = re.compile(r"``|:[a-z]+:`")


def test_help_texts_are_plain():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    texts = {"napari-gi-seg": parser.format_help(), **{n: p.format_help() for n, p in sub.choices.items()}}
    assert set(texts) >= {"segment", "models", "train", "finetune", "evaluate", "demo"}
    bad = {k: [ln for ln in t.splitlines() if MARKUP.search(ln)] for k, t in texts.items()}
    assert not any(bad.values()), bad
    assert "exit status" in texts["napari-gi-seg"] and "internal error" in texts["napari-gi-seg"]


def test_the_markup_check_can_fail():
    assert MARKUP.search("Command line: ``napari-gi-seg segment``") and MARKUP.search("see :func:`x`")
