"""The user guide's Python snippet ("The same loop without the GUI") runs as written,
and its export is a dataset the next command (``napari-gi-seg finetune``) opens.

Two substitutions only: the sample's file name becomes its path in the data folder,
and the default model the tiny test model (the same API; seconds instead of a
minute on CPU)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "user-guide.md"


def python_blocks(text: str) -> list[str]:
    """The fenced ```python blocks of a Markdown text."""
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_snippet_runs_and_exports_a_dataset(tmp_path, monkeypatch, chaos_image_path, tiny_key):
    (snippet,) = [b for b in python_blocks(GUIDE.read_text()) if "export_case(" in b]  # the correction loop
    assert '"image_1.nii.gz"' in snippet and 'load_model("chaos-t2spir")' in snippet
    code = snippet.replace('"image_1.nii.gz"', repr(str(chaos_image_path))).replace(
        'load_model("chaos-t2spir")', f"load_model({tiny_key!r})"
    )
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, str(GUIDE), "exec"), ns)  # noqa: S102 - the documented code itself

    from napari_gi_seg.datasets import open_dataset

    ds = open_dataset(tmp_path / "Dataset501_Corrections")
    assert len(ds.cases) == 1
    z0, z1 = ns["z0"], ns["z1"]
    assert ns["review"].reviewed_slices() == list(range(z0, z1 + 1))
    # the end slices are the model's liver (the interpolation keeps them)
    liver0 = ns["res"].labels[z0] == 1
    assert liver0.any() and np.array_equal(ns["labels"][z0] == 1, liver0)
