"""Round 2, outputs of ``segment``: an input is never overwritten, folder runs resume
(skip, redo, merge the manifest; a ``kill -9`` mid-run then a rerun), every writer
honours the umask and goes through the atomic helper, output names never come from
free-text DICOM fields, and BurnedInAnnotation is warned about (segment) or refused
(export). Real data: CHAOS T2-SPIR NIfTI and the original CHAOS DICOM series."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from fault_helpers import CHAOS_CLASSES, run_until_paused, temp_leftovers

from napari_gi_seg import _atomic, cli
from napari_gi_seg.engine.batch import MANIFEST_NAME, file_sha256

SLICES = ["--slices", "18:20"]


def _seg(*argv: str) -> list[str]:
    return ["segment", *argv, "--model", "tiny-chaos", "--device", "cpu", "--precision", "fp32", "--quiet"]


def _run(argv, capsys) -> tuple[int, str, str]:
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def scans(tmp_path, chaos_dir) -> Path:
    """``in/``: three real CHAOS T2-SPIR patients as NIfTI files."""
    src = tmp_path / "in"
    src.mkdir()
    for pid in ("1", "2", "3"):
        shutil.copyfile(chaos_dir / f"image_{pid}.nii.gz", src / f"image_{pid}.nii.gz")
    return src


# ------------------------------------------------------------------ data loss: the input is never the output
def test_overwrite_never_replaces_the_input(tiny_entry, tmp_path, chaos_image_path, capsys):
    scan = tmp_path / "scan.nii.gz"
    shutil.copyfile(chaos_image_path, scan)
    before = file_sha256(scan)
    os.symlink(scan, tmp_path / "alias.nii.gz")
    os.link(scan, tmp_path / "hard.nii.gz")
    for out in (scan, tmp_path / "alias.nii.gz", tmp_path / "hard.nii.gz", f"{tmp_path}/./scan.nii.gz"):
        rc, _, err = _run(_seg(str(scan), "-o", str(out), "--overwrite", *SLICES), capsys)
        line = err.strip().splitlines()
        assert rc == 2 and len(line) == 1 and str(out) in line[0] and str(scan) in line[0], err
        assert "is the input" in line[0]
    # the corrected labels given to --adapt are an input too
    labels = tmp_path / "labels.nii.gz"
    shutil.copyfile(chaos_image_path.with_name("label_1.nii.gz"), labels)
    rc, _, err = _run(
        _seg(str(scan), "-o", str(labels), "--overwrite", "--adapt", str(labels), "--adapt-slices", "18"), capsys
    )
    assert rc == 2 and str(labels) in err and "is the input" in err
    assert file_sha256(scan) == before and file_sha256(labels) == file_sha256(
        chaos_image_path.with_name("label_1.nii.gz")
    )


def test_folder_run_into_its_own_input_folder_is_refused(tiny_entry, scans, capsys):
    before = {p.name: file_sha256(p) for p in scans.iterdir()}
    os.symlink(scans, scans.parent / "in_link")
    for out in (scans, f"{scans}/.", scans.parent / "in_link"):
        rc, _, err = _run(_seg("-i", str(scans), "-o", str(out), "--overwrite", *SLICES), capsys)
        assert rc == 2 and str(scans) in err and str(Path(out)) in err and "input folder" in err, err
    assert {p.name: file_sha256(p) for p in scans.iterdir()} == before  # no scan replaced, no output added


# ------------------------------------------------------------------ resumable folder runs
def test_folder_rerun_skips_redoes_and_merges_the_manifest(tiny_entry, scans, tmp_path, chaos_dir, capsys):
    out = tmp_path / "out"
    rc, _, err = _run(_seg("-i", str(scans), "-o", str(out), *SLICES), capsys)
    assert rc == 0, err
    first = json.loads((out / MANIFEST_NAME).read_text())
    assert [c["status"] for c in first["cases"]] == ["ok"] * 3
    shas = {c["output"]: c["output_sha256"] for c in first["cases"]}
    assert shas == {n: file_sha256(out / n) for n in shas}
    mtimes = {n: (out / n).stat().st_mtime_ns for n in shas}

    # a finished run again: nothing to do, exit 0, the good records kept (it used to say "3 of 3 failed")
    rc, stdout, err = _run(_seg("-i", str(scans), "-o", str(out), *SLICES), capsys)
    assert rc == 0, err
    assert stdout.count(": up to date") == 3
    again = json.loads((out / MANIFEST_NAME).read_text())
    assert {c["output"]: c["output_sha256"] for c in again["cases"]} == shas
    assert all(c["status"] == "ok" for c in again["cases"]) and again["n_outputs"] == 3
    assert {n: (out / n).stat().st_mtime_ns for n in shas} == mtimes  # not rewritten
    assert len(again["previous_runs"]) == 1

    # one output deleted, one input replaced by another patient: those two are redone, the third skipped
    (out / "image_1.nii.gz").unlink()
    shutil.copyfile(chaos_dir / "image_8.nii.gz", scans / "image_2.nii.gz")
    rc, stdout, err = _run(_seg("-i", str(scans), "-o", str(out), *SLICES), capsys)
    assert rc == 0, err
    assert "image_3.nii.gz: up to date" in stdout and stdout.count(": up to date") == 1
    assert "image_2.nii.gz: the input changed; segmenting it again" in stdout
    third = {c["output"]: c for c in json.loads((out / MANIFEST_NAME).read_text())["cases"]}
    assert sorted(third) == sorted(shas) and all(c["status"] == "ok" for c in third.values())
    assert third["image_3.nii.gz"]["output_sha256"] == shas["image_3.nii.gz"]
    assert third["image_2.nii.gz"]["input_sha256"] != first["cases"][1]["input_sha256"]
    assert (out / "image_1.nii.gz").exists()

    # another model: every output is stale and redone (never skipped on a different model)
    from _tiny import tiny_spec
    from napari_gi_seg.models.registry import register_model

    register_model(tiny_spec(version=2), weights_path=tiny_entry.weights_path)
    rc, stdout, err = _run(_seg("-i", str(scans), "-o", str(out), *SLICES, "--tta"), capsys)
    assert rc == 2 and "flip" in err  # --tta refused for this model: nothing changed
    rc, stdout, err = _run(
        ["segment", "-i", str(scans), "-o", str(out), "--model", "tiny-chaos:2", "--device", "cpu", "--quiet"]
        + ["--precision", "fp32", *SLICES],
        capsys,
    )
    assert rc == 0 and ": up to date" not in stdout and stdout.count("other model") == 3, stdout


def test_kill_mid_folder_run_then_rerun_completes(tiny_entry, scans, tmp_path, capsys):
    out = tmp_path / "out"
    code = (
        "import sys\nfrom napari_gi_seg import cli\n"
        "sys.exit(cli.main(['segment', '-i', sys.argv[1], '-o', sys.argv[2], '--model', 'tiny-chaos', '--device', "
        "'cpu', '--precision', 'fp32', '--quiet', '--slices', '18:20', '--save-probabilities']))\n"
    )
    # killed while the probabilities of the second scan wait for their rename
    line = run_until_paused(code, str(scans), str(out), match="image_2.probabilities.npz", timeout=120)
    assert "image_2.probabilities.npz" in line
    cases = {c["output"]: c for c in json.loads((out / MANIFEST_NAME).read_text())["cases"]}
    assert cases["image_1.nii.gz"]["status"] == "ok"  # written after every output
    assert cases["image_2.nii.gz"]["status"] == "running"
    assert temp_leftovers(out)  # the hidden temporary of the killed writer
    _atomic._swept.discard(str(out))
    rc, stdout, err = _run(_seg("-i", str(scans), "-o", str(out), *SLICES, "--save-probabilities"), capsys)
    assert rc == 0, err
    assert "image_1.nii.gz: up to date" in stdout
    assert "image_2.nii.gz: left running by an earlier run; segmenting it again" in stdout
    cases = json.loads((out / MANIFEST_NAME).read_text())["cases"]
    assert [c["status"] for c in cases] == ["ok"] * 3
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [MANIFEST_NAME] + [f"image_{i}.nii.gz" for i in (1, 2, 3)] + [f"image_{i}.probabilities.npz" for i in (1, 2, 3)]
    )  # no stale hidden .tmp.npz, no temporary
    with np.load(out / "image_2.probabilities.npz") as z:
        assert z["probabilities"].shape[0] == 5 and z["probabilities"].dtype == np.float16


# ------------------------------------------------------------------ permissions follow the umask
@pytest.mark.parametrize("umask", [0o077, 0o027, 0o002])
def test_written_files_and_folders_honour_the_umask(umask, tmp_path, chaos_volume, chaos_labels):
    from napari_gi_seg.curation.export import export_case
    from napari_gi_seg.engine.batch import write_manifest, write_probabilities
    from napari_gi_seg.io import write_labels

    old = os.umask(umask)
    try:
        lab = write_labels(tmp_path / "seg.nii.gz", chaos_labels, chaos_volume, CHAOS_CLASSES)
        probs = write_probabilities(
            tmp_path / "seg.probabilities.npz", np.zeros((5, 2, 4, 4), np.float16), chaos_volume, {0: "bg", 1: "a"}
        )
        man = write_manifest(tmp_path, {"model": {"key": "m:1"}}, [], "t0")
        ds = export_case(tmp_path / "Dataset501_X", chaos_volume, chaos_labels, [10], CHAOS_CLASSES)
        with _atomic.atomic_dir(tmp_path / "folder") as d:
            (d / "inside.txt").write_text("x")
    finally:
        os.umask(old)
    for f in (lab, probs, man, ds / "dataset.json", tmp_path / "folder" / "inside.txt"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f  # as open() makes it
    for d in (ds, tmp_path / "folder"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o777 & ~umask, d  # as mkdir makes it
    assert stat.S_IMODE(_atomic.write_text(tmp_path / "s", "x", mode=0o600).stat().st_mode) == 0o600


# ------------------------------------------------------------------ names never from SeriesDescription
def _chaos_series(data_dir: Path, pid: str, dest: Path, **tags) -> Path:
    """A real CHAOS T2-SPIR DICOM series copied to ``dest`` with ``tags`` set in every file."""
    import pydicom

    src = data_dir / "chaos_mr_dicom" / pid / "T2SPIR" / "DICOM_anon"
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        for k, v in tags.items():
            setattr(ds, k, v)
        ds.save_as(dest / f"{pid}_{f.name}")
    return dest


def test_output_names_and_manifest_never_carry_the_series_description(tiny_entry, data_dir, tmp_path, capsys):
    src = tmp_path / "in"
    both = src / "study"  # one folder, two real series described with a patient's name
    _chaos_series(data_dir, "1", both, SeriesDescription="Zzdoe^Janetest MRN7734921")
    _chaos_series(data_dir, "3", both, SeriesDescription="Zzdoe^Janetest MRN7734921 fs")
    out = tmp_path / "out"
    rc, stdout, err = _run(_seg("-i", str(src), "-o", str(out), "--slices", "10:12"), capsys)
    assert rc == 0, err
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 3 and all(n.startswith("study_") or n == MANIFEST_NAME for n in files), files
    text = (out / MANIFEST_NAME).read_text() + " ".join(files) + stdout
    assert "Zzdoe" not in text and "Janetest" not in text and "7734921" not in text
    # a single DICOM folder input with two series: OUTPUT_<folder>_<uid hash>
    rc, stdout, err = _run(_seg(str(both), "-o", str(tmp_path / "one" / "seg.nii.gz"), "--slices", "10:12"), capsys)
    assert rc == 0, err
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(names) == 2 and all(n.startswith("seg_study_") and "Zzdoe" not in n for n in names)


def test_burned_in_annotation_warns_in_segment_and_is_refused_by_export(tiny_entry, data_dir, tmp_path, capsys):
    from napari_gi_seg.curation.export import BurnedInAnnotationError, export_case
    from napari_gi_seg.errors import GiSegError
    from napari_gi_seg.io import read_image

    series = _chaos_series(data_dir, "1", tmp_path / "burned", BurnedInAnnotation="YES")
    rc, _, err = _run(_seg(str(series), "-o", str(tmp_path / "seg.nii.gz"), "--slices", "10:12"), capsys)
    assert rc == 0 and "BurnedInAnnotation=YES" in err and str(series) in err, err
    vol = read_image(series)[0]
    labels = np.zeros(vol.shape, np.uint8)
    with pytest.raises(BurnedInAnnotationError, match="BurnedInAnnotation=YES") as ei:
        export_case(tmp_path / "Dataset502_B", vol, labels, [10], CHAOS_CLASSES)
    assert isinstance(ei.value, GiSegError) and not (tmp_path / "Dataset502_B").exists()
    ds = export_case(tmp_path / "Dataset502_B", vol, labels, [10], CHAOS_CLASSES, allow_burned_in=True)
    assert (ds / "dataset.json").exists()
    # the real CHAOS series (no BurnedInAnnotation) is neither warned about nor refused
    plain = read_image(data_dir / "chaos_mr_dicom" / "1" / "T2SPIR" / "DICOM_anon")[0]
    assert plain.metadata["burned_in_annotation"] is False
    export_case(tmp_path / "Dataset503_C", plain, np.zeros(plain.shape, np.uint8), [10], CHAOS_CLASSES)
