"""``napari-gi-seg segment`` and ``models``: real CHAOS input, a registered tiny
model, the output's geometry, and one clear error line for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from napari_gi_seg.cli import main


def _err_lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def test_segment_writes_nifti_with_input_affine(tiny_entry, chaos_image_path, tmp_path, capsys):
    out = tmp_path / "sub" / "labels.nii.gz"
    rc = main(["segment", str(chaos_image_path), "-o", str(out), "--model", "tiny-chaos", "--device", "cpu", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    src, lab = nib.load(str(chaos_image_path)), nib.load(str(out))
    assert lab.shape == src.shape
    np.testing.assert_allclose(lab.affine, src.affine, atol=1e-5)
    arr = np.asanyarray(lab.dataobj)
    assert arr.dtype == np.uint8 and set(np.unique(arr)) <= {0, 1, 2, 3, 4} and arr.any()
    assert "tiny-chaos:1" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["labels.nii.gz"]  # no temp files left


def test_segment_slice_range_and_progress(tiny_entry, chaos_image_path, tmp_path, capsys):
    out = tmp_path / "part.nii.gz"
    rc = main(
        [
            "segment",
            str(chaos_image_path),
            "-o",
            str(out),
            "--model",
            "tiny-chaos:1",
            "--device",
            "cpu",
            "--slices",
            "3:7",
            "--batch-size",
            "2",
        ]
    )
    assert rc == 0
    err = capsys.readouterr().err
    assert "4/4" in err and "slice" in err  # tqdm progress bar on stderr
    arr = np.asanyarray(nib.load(str(out)).dataobj)  # (x, y, z) on disk
    segmented = np.flatnonzero(arr.reshape(-1, arr.shape[2]).any(0))
    assert set(segmented) <= {3, 4, 5, 6} and len(segmented) > 0
    # an existing output is not overwritten without --overwrite
    rc = main(["segment", str(chaos_image_path), "-o", str(out), "--model", "tiny-chaos", "--quiet"])
    assert rc != 0 and "already exists" in _err_lines(capsys)[0]


def test_segment_missing_file(tiny_entry, tmp_path, capsys):
    missing = tmp_path / "nope.nii.gz"
    rc = main(["segment", str(missing), "-o", str(tmp_path / "o.nii.gz"), "--model", "tiny-chaos"])
    lines = _err_lines(capsys)
    assert rc != 0 and len(lines) == 1
    assert str(missing) in lines[0] and "not found" in lines[0]
    assert not (tmp_path / "o.nii.gz").exists()


def test_segment_unreadable_file(tiny_entry, chaos_image_path, tmp_path, capsys):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(chaos_image_path.read_bytes()[:5000])  # truncated gzip
    rc = main(["segment", str(bad), "-o", str(tmp_path / "o.nii.gz"), "--model", "tiny-chaos", "--quiet"])
    lines = _err_lines(capsys)
    assert rc != 0 and len(lines) == 1 and str(bad) in lines[0]
    assert "Traceback" not in lines[0]
    assert not (tmp_path / "o.nii.gz").exists()


def test_segment_unknown_model_lists_known(tiny_entry, chaos_image_path, tmp_path, capsys):
    rc = main(["segment", str(chaos_image_path), "-o", str(tmp_path / "o.nii.gz"), "--model", "no-such-model"])
    lines = _err_lines(capsys)
    assert rc != 0 and len(lines) == 1
    assert "unknown model 'no-such-model'" in lines[0] and "tiny-chaos:1" in lines[0]


def test_segment_bad_output_suffix_and_slices(tiny_entry, chaos_image_path, tmp_path, capsys):
    rc = main(["segment", str(chaos_image_path), "-o", str(tmp_path / "o.png"), "--model", "tiny-chaos"])
    lines = _err_lines(capsys)
    assert rc != 0 and len(lines) == 1 and "unknown output format" in lines[0]
    rc = main(
        [
            "segment",
            str(chaos_image_path),
            "-o",
            str(tmp_path / "o.nii.gz"),
            "--model",
            "tiny-chaos",
            "--slices",
            "30:999",
            "--quiet",
        ]
    )
    lines = _err_lines(capsys)
    assert rc != 0 and len(lines) == 1 and "--slices" in lines[0]
    # flip TTA is refused for a model that never saw a mirrored abdomen
    rc = main(["segment", str(chaos_image_path), "-o", str(tmp_path / "o.nii.gz"), "--model", "tiny-chaos", "--tta"])
    lines = _err_lines(capsys)
    assert rc != 0 and len(lines) == 1 and "--tta needs a model trained with left-right flips" in lines[0]
    assert not (tmp_path / "o.nii.gz").exists()


def test_models_lists_registry(tiny_entry, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tiny-chaos:1" in out and "Unet/mobilenet_v2" in out and "liver,right_kidney,left_kidney,spleen" in out


def test_console_script_models_json(tiny_entry, model_home):
    exe = Path(sys.executable).with_name("napari-gi-seg")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "napari_gi_seg.cli"]
    env = {**os.environ, "NAPARI_GI_SEG_HOME": str(model_home), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([*cmd, "models", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    rows = [r for r in json.loads(p.stdout) if r["source"] == "user"]
    assert len(rows) == 1
    r = rows[0]
    assert (r["name"], r["version"], r["architecture"], r["parent"]) == ("tiny-chaos", 1, "Unet", None)
    assert r["classes"] == ["liver", "right_kidney", "left_kidney", "spleen"]
    # a bad call from the shell: non-zero exit, one line
    p = subprocess.run(
        [*cmd, "segment", "missing.nii.gz", "-o", "x.nii.gz"], capture_output=True, text=True, env=env, timeout=120
    )
    assert p.returncode != 0 and p.stderr.strip().splitlines() == [
        "napari-gi-seg: error: missing.nii.gz: file not found"
    ]
