"""Faults while writing: ``kill -9`` just before the final rename, a full disk, a
read-only destination. Each proves that nothing is lost (the previous file, model or
dataset is intact), nothing half-written is visible, and leftovers of killed runs
are removed by the next run."""

from __future__ import annotations

import errno
import os
import time

import numpy as np
import pytest
from fault_helpers import CHAOS_CLASSES, run_until_paused, temp_leftovers

from napari_gi_seg import _atomic
from napari_gi_seg.io.nifti import read_nifti, write_nifti

WRITE_NIFTI = """
import sys
from napari_gi_seg.io.nifti import read_nifti, write_nifti
v = read_nifti(sys.argv[1], as_labels=False)
write_nifti(v, sys.argv[2])
"""


def test_kill_before_rename_keeps_previous_file_and_next_run_cleans_up(tmp_path, chaos_image_path, chaos_volume):
    out = tmp_path / "seg.nii.gz"
    out.write_bytes(b"previous complete file")
    line = run_until_paused(WRITE_NIFTI, str(chaos_image_path), str(out))
    assert str(out) in line
    assert out.read_bytes() == b"previous complete file"  # nothing lost, nothing half-written at the target
    left = temp_leftovers(tmp_path)
    assert len(left) == 1 and left[0].endswith("-seg.nii.gz")  # the killed run's temp file, hidden
    _atomic._swept.discard(str(tmp_path))
    write_nifti(chaos_volume, out)  # the next run removes the dead process's temp file
    assert temp_leftovers(tmp_path) == []
    back = read_nifti(out, as_labels=False)
    assert back.shape == chaos_volume.shape and np.array_equal(back.data, chaos_volume.data)


def test_stale_temp_of_a_live_process_is_kept_until_it_is_old(tmp_path):
    young = tmp_path / f"{_atomic.TMP_PREFIX}{os.getpid()}-abcd1234-x.nii.gz"
    young.write_bytes(b"in progress")
    assert _atomic.remove_stale(tmp_path) == []  # our own pid, young: still being written
    old = time.time() - _atomic.STALE_AFTER_S - 5
    os.utime(young, (old, old))
    assert _atomic.remove_stale(tmp_path) == [young]  # too old: pid reuse or another host


def test_kill_during_append_export_lists_only_committed_cases(tmp_path, chaos_volume, chaos_labels, caplog):
    from napari_gi_seg.curation.export import export_case
    from napari_gi_seg.datasets import open_dataset

    ds = tmp_path / "Dataset501_Corrections"
    export_case(ds, chaos_volume, chaos_labels, [10, 11], CHAOS_CLASSES, case_id="first")
    json_before = (ds / "dataset.json").read_bytes()
    code = (
        "import sys\n"
        "from napari_gi_seg.io.nifti import read_nifti\n"
        "from napari_gi_seg.curation.export import export_case\n"
        "img = read_nifti(sys.argv[1], as_labels=False); lab = read_nifti(sys.argv[2], as_labels=True)\n"
        "export_case(sys.argv[3], img, lab.data, [12], {1: 'liver', 2: 'right_kidney', 3: 'left_kidney', "
        "4: 'spleen'}, case_id='second')\n"
    )
    src = chaos_volume.metadata["source_path"]
    run_until_paused(code, src, src.replace("image_", "label_"), str(ds), match="dataset.json")
    # killed after the case files were in place, before dataset.json (the commit)
    assert (ds / "labelsTr" / "second.nii.gz").exists()
    assert (ds / "dataset.json").read_bytes() == json_before
    with caplog.at_level("WARNING"):
        d = open_dataset(ds)
    assert [c.case_id for c in d.cases] == ["first"]  # the unlisted case never reaches training
    assert "not listed in dataset.json are ignored" in caplog.text and "second" in caplog.text
    # the next append works and the stale temporaries are gone
    _atomic._swept.clear()
    export_case(ds, chaos_volume, chaos_labels, [13], CHAOS_CLASSES, case_id="third")
    assert [c.case_id for c in open_dataset(ds).cases] == ["first", "third"]
    assert temp_leftovers(ds) == []


def test_kill_during_registration_leaves_no_model_and_the_version_is_reused(tmp_path):
    from napari_gi_seg.models import registry

    code = (
        "import sys\n"
        "from napari_gi_seg.models import registry\n"
        "from napari_gi_seg.models.spec import ModelSpec, ClassInfo\n"
        "spec = ModelSpec(name='killed', encoder='resnet18', input_size=(32, 32), classes=[ClassInfo(1, 'liver')])\n"
        "registry.register_model(spec, weights_path=sys.argv[1], next_free=True)\n"
    )
    w = tmp_path / "w.safetensors"
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(4, np.float32)}, str(w))
    run_until_paused(code, str(w), match="1")
    assert [e.key for e in registry.list_models() if e.name == "killed"] == []  # nothing half-registered
    name_dir = registry.user_models_root() / "killed"
    assert temp_leftovers(name_dir)  # the killed run's assembly folder
    old = time.time() - registry.STALE_RESERVATION_S - 5
    os.utime(name_dir / "1", (old, old))  # the empty reservation of the dead process
    _atomic._swept.clear()
    from napari_gi_seg.models.spec import ClassInfo, ModelSpec

    spec = ModelSpec(name="killed", encoder="resnet18", input_size=(32, 32), classes=[ClassInfo(1, "liver")])
    e = registry.register_model(spec, weights_path=w, next_free=True)
    assert e.key == "killed:1" and temp_leftovers(name_dir) == []


def _fill(folder):
    """Fill a tiny file system to the last byte: every later write fails with ENOSPC."""
    fd = os.open(folder / "filler.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (65536, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)


def _patch_disk_full(monkeypatch):
    """Without a tiny file system (not root): flushing a written file fails with ENOSPC
    (what delayed allocation on ext4/NFS really does)."""

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_atomic, "_fsync_path", full)


def test_full_disk_names_the_file_and_leaves_nothing(tiny_fs, tmp_path, chaos_volume, monkeypatch, capsys):
    from napari_gi_seg import cli

    folder = tiny_fs if tiny_fs is not None else tmp_path / "full"
    folder.mkdir(exist_ok=True)
    (folder / "keep.txt").write_text("kept\n")
    if tiny_fs is not None:
        _fill(folder)
    else:
        _patch_disk_full(monkeypatch)
    before = sorted(p.name for p in folder.iterdir())
    out = folder / "image_copy.nii.gz"
    with pytest.raises(OSError) as ei:
        write_nifti(chaos_volume, out)
    assert ei.value.errno == errno.ENOSPC and ei.value.filename == str(out)
    assert "image_copy.nii.gz" in str(ei.value)
    assert sorted(p.name for p in folder.iterdir()) == before  # no half-written (hidden) temp file
    # the CLI: exit 2 and one line naming the output file
    seg = folder / "seg.nii.gz"
    argv = ["segment", chaos_volume.metadata["source_path"], "-o", str(seg), "--slices", "18:20", "--quiet"]
    rc = cli.main([*argv, "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(seg) in err[0] and "No space left" in err[0], err
    assert sorted(p.name for p in folder.iterdir()) == before
    assert (folder / "keep.txt").read_text() == "kept\n"


def test_read_only_destination(readonly_dir, chaos_volume, capsys):
    from napari_gi_seg import cli
    from napari_gi_seg.curation.review import ReviewTracker
    from napari_gi_seg.curation.session import SessionStore

    out = readonly_dir / "seg.nii.gz"
    with pytest.raises(OSError) as ei:
        write_nifti(chaos_volume, out)
    assert ei.value.errno in (errno.EROFS, errno.EACCES) and ei.value.filename == str(out)
    with pytest.raises(OSError):
        SessionStore(readonly_dir).save("a" * 64, np.zeros((2, 3, 3), np.uint8), None, ReviewTracker(2))
    argv = ["segment", chaos_volume.metadata["source_path"], "-o", str(out), "--slices", "18:20", "--quiet"]
    rc = cli.main([*argv, "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(out) in err[0], err
    assert sorted(p.name for p in readonly_dir.iterdir()) == ["existing.txt"]
    assert (readonly_dir / "existing.txt").read_text() == "kept\n"
