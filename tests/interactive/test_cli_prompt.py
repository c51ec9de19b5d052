"""``napari-gi-seg prompt``: boxes and clicks from a JSON file, labels written with the
scan's geometry; bad prompt files fail with one line and exit 2."""

from __future__ import annotations

import json

import numpy as np

from napari_gi_seg.cli import main
from napari_gi_seg.io import read_image, read_labels

RIGHT_KIDNEY = 2


def test_prompt_command_writes_the_object(chaos_image_path, chaos_label_path, tmp_path, capsys):
    image = read_image(chaos_image_path)[0]
    truth = read_labels(chaos_label_path, like=image).data == RIGHT_KIDNEY
    z = int(np.argmax(truth.sum((1, 2))))
    ys, xs = np.nonzero(truth[z])
    box = [int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1]
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"label": 7, "name": "kidney", "prompts": [{"z": z, "box": box}]}]))
    out = tmp_path / "out.nii.gz"
    rc = main(["prompt", str(chaos_image_path), "--prompts", str(prompts), "-o", str(out), "--model", "random-walker"])
    assert rc == 0 and "1 object(s)" in capsys.readouterr().out
    lab = read_labels(out, like=image).data
    assert set(np.unique(lab)) == {0, 7}
    assert np.flatnonzero(lab.any((1, 2))).tolist() == [z]  # no propagation asked
    m = lab[z] == 7
    assert 2 * (m & truth[z]).sum() / (m.sum() + truth[z].sum()) > 0.8


def test_prompt_command_bad_file_is_one_line(chaos_image_path, tmp_path, capsys):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"label": 1, "prompts": [{"z": 3}]}]))
    rc = main(["prompt", str(chaos_image_path), "--prompts", str(prompts), "-o", str(tmp_path / "o.nii.gz")])
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("napari-gi-seg: error:")]
    assert rc == 2 and len(errors) == 1 and "object 0 prompt 0" in errors[0] and "prompts.json" in errors[0]
    assert not (tmp_path / "o.nii.gz").exists()
