"""``napari-gi-seg segment -i DIR -o DIR``: a folder with a DICOM series, a NIfTI and a
TIFF (real CHAOS data) -> one output per series, probabilities and a run manifest
without patient data; the same command under torchrun (2 gloo processes on CPU)
shares the scans out and writes one manifest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from dicom_series import DICOM_PATIENT_ID, DICOM_PATIENT_NAME, DICOM_STUDY_UID
from napari_gi_seg.cli import main
from napari_gi_seg.engine.batch import MANIFEST_NAME, find_scans, shard
from napari_gi_seg.io import read_image

OUTPUTS = ["p1_dicom.nii.gz", "p2_nifti.nii.gz", "p3_tiff.nii.gz"]


@pytest.fixture
def scan_folder(tmp_path, chaos_dicom, chaos_dir) -> Path:
    """``in/``: ``p1_dicom/`` (CHAOS patient 1 as a DICOM series), ``p2_nifti.nii.gz``
    (patient 2), ``p3_tiff.tif`` (patient 3 as an ImageJ stack), plus a non-scan file."""
    src = tmp_path / "in"
    shutil.copytree(chaos_dicom.folder, src / "p1_dicom")
    shutil.copyfile(chaos_dir / "image_2.nii.gz", src / "p2_nifti.nii.gz")
    v3 = read_image(chaos_dir / "image_3.nii.gz")[0]
    tifffile.imwrite(
        src / "p3_tiff.tif",
        v3.data.astype(np.float32),
        imagej=True,
        resolution=(1 / v3.spacing_mm[2], 1 / v3.spacing_mm[1]),
        metadata={"spacing": v3.spacing_mm[0], "unit": "mm", "axes": "ZYX"},
    )
    (src / "notes.txt").write_text("not a scan")
    return src


def _args(src, out, *extra):
    return ["segment", "-i", str(src), "-o", str(out), "--model", "tiny-chaos", "--device", "cpu"] + [
        "--precision",
        "fp32",
        "--quiet",
        *extra,
    ]


def test_folder_run_one_output_per_series_and_a_manifest(tiny_entry, scan_folder, tmp_path, capsys):
    assert [p.name for p in find_scans(scan_folder)] == ["p1_dicom", "p2_nifti.nii.gz", "p3_tiff.tif"]
    out = tmp_path / "out"
    assert main(_args(scan_folder, out, "--save-probabilities")) == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    probs = [n.replace(".nii.gz", ".probabilities.npz") for n in OUTPUTS]
    assert names == sorted([*OUTPUTS, *probs, MANIFEST_NAME])
    for name, src in zip(OUTPUTS, ["p1_dicom", "p2_nifti.nii.gz", "p3_tiff.tif"]):
        image = read_image(scan_folder / src)[0]
        lab = nib.load(str(out / name))
        assert lab.shape == tuple(np.transpose(image.data, image.index_order).shape)
        arr = np.asarray(lab.dataobj)
        assert arr.dtype == np.uint8 and set(np.unique(arr)) <= {0, 1, 2, 3, 4}
        with np.load(out / name.replace(".nii.gz", ".probabilities.npz")) as npz:
            p = npz["probabilities"]
            assert p.dtype == np.float16 and p.shape == (5, *image.shape)
            assert np.allclose(p.astype(np.float32).sum(0), 1.0, atol=0.02)
            assert list(npz["class_names"]) == ["background", "liver", "right_kidney", "left_kidney", "spleen"]
    m = json.loads((out / MANIFEST_NAME).read_text())
    weights = tiny_entry.weights_path.read_bytes()
    assert m["model"] == {"key": "tiny-chaos:1", "weights_sha256": hashlib.sha256(weights).hexdigest()}
    assert m["device"]["type"] == "cpu" and m["precision"]["forward"] == "float32" and m["tta"] is False
    assert m["packages"]["torch"] and m["packages"]["napari-gi-seg"] and m["world_size"] == 1
    assert [c["output"] for c in m["cases"]] == OUTPUTS
    assert [c["input_format"] for c in m["cases"]] == ["dicom", "nifti", "tiff"]
    assert len({c["input_sha256"] for c in m["cases"]}) == 3
    text = (out / MANIFEST_NAME).read_text()
    for secret in (str(tmp_path), DICOM_PATIENT_NAME, DICOM_PATIENT_ID, DICOM_STUDY_UID, "p1_dicom/"):
        assert secret not in text


def test_folder_run_rtstruct_fails_only_for_non_dicom(tiny_entry, scan_folder, tmp_path, capsys):
    out = tmp_path / "rt"
    rc = main(_args(scan_folder, out, "--format", "rtstruct"))
    err = capsys.readouterr().err
    assert rc != 0 and "2 of 3 scans failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["p1_dicom.dcm", MANIFEST_NAME]
    cases = json.loads((out / MANIFEST_NAME).read_text())["cases"]
    assert [c["status"] for c in cases] == ["ok", "failed", "failed"]
    assert "need an image read from a DICOM series" in cases[1]["error"] and str(tmp_path) not in cases[1]["error"]


def test_version_and_argument_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("napari-gi-seg ")
    assert main(["segment", "-o", "x.nii.gz"]) == 2
    assert "give either INPUT or -i/--input-dir DIR" in capsys.readouterr().err


def test_shards_are_disjoint_and_complete():
    items = list(range(7))
    parts = [shard(items, r, 3) for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(sum(parts, [])) == items


@pytest.mark.slow
def test_torchrun_two_processes_share_the_scans(tiny_entry, scan_folder, model_home, tmp_path):
    single = tmp_path / "single"
    assert main(_args(scan_folder, single)) == 0
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found next to the Python interpreter"
    env = {**os.environ, "NAPARI_GI_SEG_HOME": str(model_home), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "ddp"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "napari_gi_seg.cli", *_args(scan_folder, out)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=540)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    m = json.loads((out / MANIFEST_NAME).read_text())
    assert m["world_size"] == 2 and [c["output"] for c in m["cases"]] == OUTPUTS
    assert {c["output"]: c["rank"] for c in m["cases"]} == {OUTPUTS[0]: 0, OUTPUTS[1]: 1, OUTPUTS[2]: 0}
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUTS, MANIFEST_NAME])
    for name in OUTPUTS:  # the same labels as one process (bf16 on CPUs that have it and another thread
        # count may flip a handful of tied voxels of the untrained tiny model: allow 1 in 10^5)
        a, b = nib.load(str(out / name)).get_fdata(), nib.load(str(single / name)).get_fdata()
        assert a.shape == b.shape and np.mean(a != b) < 1e-5, f"{name}: {np.mean(a != b):.2e} of voxels differ"
