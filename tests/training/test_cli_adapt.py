"""``napari-gi-seg segment SCAN -o OUT --adapt LABELS --adapt-slices ... [--save-model NAME]``
on a real CHAOS patient, in the file's own slice order and with the slice axis reversed."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_gi_seg.cli import main
from napari_gi_seg.models import registry
from napari_gi_seg.training import adaptation

USED = [14, 19, 24, 28, 33]


@pytest.fixture(autouse=True)
def _few_steps(monkeypatch):
    monkeypatch.setattr(adaptation, "DEFAULT_STEPS", 2)  # the CLI path, not the recipe, is tested here


def _err(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def _flip_z(src, dst) -> None:
    """Write ``src`` with its third voxel axis reversed (affine adjusted: same anatomy)."""
    img = nib.load(str(src))
    data = np.asanyarray(img.dataobj)[:, :, ::-1]
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1, data.shape[2] - 1
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), img.affine @ flip), str(dst))


@pytest.mark.parametrize("reverse", [False, True], ids=["file-order", "z-reversed"])
def test_segment_adapt_writes_corrected_slices_and_registers(
    chaos_image_path, chaos_label_path, tmp_path, capsys, reverse
):
    image, labels = chaos_image_path, chaos_label_path
    used = USED
    if reverse:
        image, labels = tmp_path / "scan_r.nii.gz", tmp_path / "labels_r.nii.gz"
        _flip_z(chaos_image_path, image)
        _flip_z(chaos_label_path, labels)
        depth = nib.load(str(image)).shape[2]
        used = sorted(depth - 1 - z for z in USED)  # the same anatomy, numbered in this file's order
    truth = np.asanyarray(nib.load(str(labels)).dataobj).astype(np.uint8)
    # the clinician's label file: only the listed slices are corrected; the others hold rubbish
    drawn = np.random.default_rng(0).integers(0, 5, truth.shape, dtype=np.uint8)
    drawn[:, :, used] = truth[:, :, used]
    corrected = tmp_path / "corrected.nii.gz"
    nib.save(nib.Nifti1Image(drawn, nib.load(str(labels)).affine), str(corrected))
    out = tmp_path / "out.nii.gz"
    argv = ["segment", str(image), "-o", str(out), "--device", "cpu", "--quiet", "--adapt", str(corrected)]
    rc = main([*argv, "--adapt-slices", ",".join(map(str, used)), "--save-model", "my-patient"])
    assert rc == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    base = registry.get_entry(None).key  # the default model (the newest bundled chaos-t2spir)
    assert f"adapted {base} on slices {','.join(map(str, used))}" in stdout
    assert f"registered my-patient:1 (parent {base})" in stdout
    lab = nib.load(str(out))
    np.testing.assert_allclose(lab.affine, nib.load(str(image)).affine, atol=1e-5)
    arr = np.asanyarray(lab.dataobj)
    np.testing.assert_array_equal(arr[:, :, used], truth[:, :, used])  # corrected slices as drawn
    others = [z for z in range(arr.shape[2]) if z not in used]
    assert set(np.unique(arr[:, :, others])) <= {0, 1, 2, 3, 4}
    # the other slices come from the model: they agree with the truth far better than the rubbish did
    agree = (arr[:, :, others] == truth[:, :, others]).mean()
    assert agree > 0.95 and (drawn[:, :, others] == truth[:, :, others]).mean() < 0.5
    e = registry.get_entry("my-patient")
    spec = e.spec()
    assert spec.parent == base and spec.metrics["adaptation"]["slices"] == used
    assert (e.folder / "MODEL_CARD.md").exists()
    # day 2: the kept model is an ordinary registered model
    out2 = tmp_path / "day2.nii.gz"
    assert main(["segment", str(image), "-o", str(out2), "--model", "my-patient", "--device", "cpu", "--quiet"]) == 0
    assert "my-patient:1" in capsys.readouterr().out


def test_segment_adapt_errors_are_one_line(chaos_image_path, chaos_label_path, chaos_dir, tmp_path, capsys):
    out = tmp_path / "out.nii.gz"
    base = ["segment", str(chaos_image_path), "-o", str(out), "--device", "cpu", "--quiet"]
    cases = [
        (["--adapt-slices", "1,2"], "need --adapt LABELS"),
        (["--save-model", "x"], "need --adapt LABELS"),
        (["--adapt", str(chaos_label_path)], "needs --adapt-slices"),
        (["--adapt", str(chaos_label_path), "--adapt-slices", "3,40"], "outside 0..36"),
        (["--adapt", str(chaos_label_path), "--adapt-slices", "3-5"], "comma-separated integers"),
        (["--adapt", str(tmp_path / "missing.nii.gz"), "--adapt-slices", "3"], "missing.nii.gz"),
        # another patient's labels: not on this scan's grid
        (["--adapt", str(chaos_dir / "label_2.nii.gz"), "--adapt-slices", "3"], "label_2.nii.gz: labels shape"),
        (["--adapt", str(chaos_label_path), "--adapt-slices", "20", "--save-model", "../x"], "model name"),
    ]
    for extra, msg in cases:
        rc = main([*base, *extra])
        err = _err(capsys)
        assert rc == 2, (extra, err)
        assert len(err) == 1 and err[0].startswith("napari-gi-seg: error:") and msg in err[0], (extra, err)
        assert not out.exists()
    assert registry.next_version("x") == 1
    # a folder of scans: adaptation is per scan
    rc = main(["segment", "-i", str(chaos_dir), "-o", str(tmp_path / "outdir"), "--adapt", str(chaos_label_path)])
    err = _err(capsys)
    assert rc == 2 and len(err) == 1 and "--adapt works on one scan" in err[0]
