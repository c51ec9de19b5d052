"""Every bad input of the 90-case fault run: memory-bomb and lying NIfTI headers,
broken spacing, oversize TIFF/DICOM, a DICOM folder with two series, malformed
dataset.json files, absurd model specs, a poisoned checkpoint. Each gives a clear
error naming the file (exit 2 and one line from the CLI) or the right result."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
from fault_helpers import bomb_header, child_env, nifti_with_header, write_dicom_series

from napari_gi_seg import cli
from napari_gi_seg.io.nifti import read_nifti
from napari_gi_seg.io.volume import InvalidInputError


def _cli(argv, capsys) -> tuple[int, list[str]]:
    rc = cli.main(argv)
    return rc, capsys.readouterr().err.strip().splitlines()


# ------------------------------------------------------------------ NIfTI memory bombs
@pytest.mark.parametrize(
    ("name", "shape", "gz", "why"),
    [
        ("bomb_1p5GB.nii.gz", (1000, 1000, 375), True, "truncated"),  # 1.5 GB as float32: under the cap, a lie
        ("bomb_absurd.nii.gz", (32767, 32767, 1000), True, "limit"),  # 4 PB: over the cap
        ("bomb_raw.nii", (1000, 1000, 375), False, "truncated"),
    ],
)
def test_memory_bomb_header_is_refused_before_allocating(tmp_path, capsys, name, shape, gz, why):
    p = tmp_path / name
    raw = bomb_header(shape)
    p.write_bytes(gzip.compress(raw) if gz else raw)
    assert p.stat().st_size < 400
    with pytest.raises(InvalidInputError, match=why) as ei:
        read_nifti(p)
    assert str(p) in str(ei.value)
    rc, err = _cli(["segment", str(p), "-o", str(tmp_path / "o.nii.gz"), "--device", "cpu"], capsys)
    assert rc == 2 and len(err) == 1 and str(p) in err[0]
    assert not (tmp_path / "o.nii.gz").exists()


def test_napari_reader_survives_a_bomb_under_a_memory_limit(tmp_path):
    """napari's reader path, in a process limited to 1 GiB of address space (the
    viewer limited to 3 GB used to be killed): a clear error, not a dead process."""
    p = tmp_path / "bomb.nii.gz"
    p.write_bytes(gzip.compress(bomb_header((1000, 1000, 375))))
    code = (
        "import resource, sys\n"
        "from napari_gi_seg._reader import napari_get_reader\n"
        "reader = napari_get_reader(sys.argv[1])\n"
        "assert reader is not None\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "try:\n"
        "    reader(sys.argv[1])\n"
        "except ValueError as e:\n"
        "    print('ERROR', e)\n"
        "hwm = [line for line in open('/proc/self/status') if line.startswith('VmHWM')][0].split()[1]\n"
        "print('maxrss_mb', int(hwm) / 1024)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(p)], env=child_env(), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"ERROR {p}: truncated" in r.stdout
    rss = float(r.stdout.split("maxrss_mb")[1])  # peak resident memory of the child (VmHWM; ru_maxrss survives exec)
    assert rss < 300  # MB: nothing near the 1.5 GB the header claims was allocated


def test_truncated_real_file_is_refused(tmp_path, chaos_image_path):
    b = chaos_image_path.read_bytes()
    for frac, name in ((0.5, "half.nii.gz"), (0.001, "head.nii.gz")):
        p = tmp_path / name
        p.write_bytes(b[: int(len(b) * frac)])
        with pytest.raises(InvalidInputError, match=str(p)):
            read_nifti(p)


# ------------------------------------------------------------------ spacing
@pytest.mark.parametrize(("value", "txt"), [(0.0, "pixdim[3] = 0"), (-7.7, "pixdim[3] = -7.7"), (np.nan, "nan")])
def test_bad_raw_spacing_is_refused_before_nibabel_repairs_it(tmp_path, chaos_image_path, capsys, value, txt):
    p = nifti_with_header(chaos_image_path, tmp_path / "spacing.nii.gz", **{"pixdim[3]": value})
    with pytest.raises(InvalidInputError, match=txt.replace("[", r"\[").replace("]", r"\]")):
        read_nifti(p)
    rc, err = _cli(["segment", str(p), "-o", str(tmp_path / "o.nii.gz"), "--device", "cpu"], capsys)
    assert rc == 2 and len(err) == 1 and str(p) in err[0] and "spacing" in err[0]


def test_in_plane_zero_spacing_too(tmp_path, chaos_image_path):
    p = nifti_with_header(chaos_image_path, tmp_path / "x0.nii.gz", **{"pixdim[1]": 0.0})
    with pytest.raises(InvalidInputError, match=r"pixdim\[1\] = 0"):
        read_nifti(p)


def test_every_real_nifti_passes_the_guards(chaos_dir, totalseg_dir):
    from napari_gi_seg.io.nifti import check_nifti_header

    files = sorted(chaos_dir.glob("*.nii.gz")) + sorted(totalseg_dir.rglob("*.nii.gz"))[:5]
    assert len(files) >= 32
    for f in files:
        shape, _ = check_nifti_header(f)
        assert len(shape) >= 3


# ------------------------------------------------------------------ TIFF / DICOM caps
def test_tiff_and_dicom_size_caps(tmp_path, chaos_volume, monkeypatch):
    import tifffile

    from napari_gi_seg.io.dicom import read_dicom_folder
    from napari_gi_seg.io.tiff import read_tiff

    t = tmp_path / "stack.tif"
    tifffile.imwrite(t, chaos_volume.data[:8].astype(np.uint16))
    d = tmp_path / "dicom"
    write_dicom_series(chaos_volume, d, "1.2.826.0.1.3680043.8.498.77", "T2 SPIR", range(8))
    assert read_tiff(t).shape == (8, 256, 256) and read_dicom_folder(d)[0].shape == (8, 256, 256)
    monkeypatch.setenv("NAPARI_GI_SEG_MAX_VOLUME_BYTES", str(1 << 20))  # 1 MiB: 8 x 256 x 256 float32 is 2 MiB
    with pytest.raises(InvalidInputError, match="limit") as ei:
        read_tiff(t)
    assert str(t) in str(ei.value)
    with pytest.raises(InvalidInputError, match="limit"):
        read_dicom_folder(d)


# ------------------------------------------------------------------ DICOM with two series
def test_dicom_folder_with_two_series_writes_one_output_per_series(tmp_path, chaos_volume, capsys):
    d = tmp_path / "MRN123456"  # PACS exports often name the folder after the patient
    write_dicom_series(chaos_volume, d, "1.2.826.0.1.3680043.8.498.11", "T2 SPIR", range(14, 18))
    write_dicom_series(chaos_volume, d, "1.2.826.0.1.3680043.8.498.12", "T2 SPIR", range(20, 24))
    out = tmp_path / "out" / "seg.nii.gz"
    rc, err = _cli(["segment", str(d), "-o", str(out), "--device", "cpu", "--quiet"], capsys)
    assert rc == 0, err
    outs = sorted((tmp_path / "out").glob("*.nii.gz"))
    assert len(outs) == 2  # the second series no longer overwrites the first
    # the input folder's name and the hashed series UID; never the free-text SeriesDescription
    assert all(o.name.startswith("seg_MRN123456_") and "SPIR" not in o.name for o in outs)
    vols = [read_nifti(o, as_labels=True) for o in outs]
    assert all(v.shape == (4, 256, 256) for v in vols)
    assert not np.array_equal(vols[0].data, vols[1].data)  # different slices, different labels
    for o in outs:
        assert b"DOE^JANE" not in gzip.decompress(o.read_bytes())


def test_clashing_outputs_are_refused(tmp_path):
    from napari_gi_seg._cli_errors import CLIError
    from napari_gi_seg.cli_segment import _output_paths
    from napari_gi_seg.io.volume import Volume

    v = Volume(np.zeros((1, 2, 2), np.float32), (1, 1, 1), metadata={"source_path": "/x/a.nii.gz"})
    with pytest.raises(CLIError, match="several volumes"):
        _output_paths(str(tmp_path / "seg.nii.gz"), [v, v])


# ------------------------------------------------------------------ dataset.json
BAD_DATASET_JSON = {
    "top-level list": ([{"labels": {"background": 0}}], "JSON object"),
    "labels as list": ({"labels": ["background", "liver"]}, "'labels'"),
    "label value string": ({"labels": {"background": 0, "liver": "1"}}, "'labels.liver'"),
    "label value object": ({"labels": {"background": 0, "liver": {"v": 1}}}, "'labels.liver'"),
    "label value bool": ({"labels": {"background": 0, "liver": True}}, "'labels.liver'"),
    "region labels": ({"labels": {"background": 0, "liver": [1, 2]}}, "region-based"),
    "no background": ({"labels": {"liver": 1}}, "background"),
    "groups as list": ({"labels": {"background": 0, "liver": 1}, "groups": ["a"]}, "'groups'"),
    "group value int": ({"labels": {"background": 0, "liver": 1}, "groups": {"c1": 3}}, "'groups.c1'"),
    "case id escapes": ({"labels": {"background": 0, "liver": 1}, "groups": {"../../x": "p"}}, "path separators"),
    "numTraining string": ({"labels": {"background": 0, "liver": 1}, "numTraining": "3"}, "'numTraining'"),
    "file_ending int": ({"labels": {"background": 0, "liver": 1}, "file_ending": 5}, "'file_ending'"),
    "channel_names list": ({"labels": {"background": 0, "liver": 1}, "channel_names": ["MR"]}, "'channel_names'"),
    "not JSON": ("{labels: oops", "cannot read"),
}


@pytest.mark.parametrize("case", list(BAD_DATASET_JSON))
def test_bad_dataset_json_names_the_file_and_key(tmp_path, case):
    from napari_gi_seg.datasets import DatasetFormatError, open_dataset

    content, expect = BAD_DATASET_JSON[case]
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "dataset.json").write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(DatasetFormatError) as ei:
        open_dataset(tmp_path)
    msg = str(ei.value)
    assert str(tmp_path / "dataset.json") in msg and expect in msg, msg


def test_bad_dataset_json_from_the_cli(tmp_path, capsys):
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps([1, 2]))
    rc, err = _cli(["evaluate", str(tmp_path), "--device", "cpu"], capsys)
    assert rc == 2 and len(err) == 1 and "dataset.json" in err[0]


def test_bad_classes_json(tmp_path, chaos_image_path, chaos_label_path):
    from napari_gi_seg.datasets import DatasetFormatError, open_dataset

    (tmp_path / "image_1.nii.gz").symlink_to(chaos_image_path)
    (tmp_path / "label_1.nii.gz").symlink_to(chaos_label_path)
    (tmp_path / "classes.json").write_text(json.dumps({"one": "liver"}))
    with pytest.raises(DatasetFormatError, match="classes.json"):
        open_dataset(tmp_path)


# ------------------------------------------------------------------ model specs
BAD_SPECS = {
    "input_size 100000": ({"input_size": [100000, 100000]}, "input_size"),
    "input_size 3 values": ({"input_size": [64, 64, 64]}, "input_size"),
    "input_size text": ({"input_size": "big"}, "input_size"),
    "100 context slices": ({"context_offsets": list(range(-50, 50))}, "context_offsets"),
    "far offset": ({"context_offsets": [-(10**6), 0]}, "context_offsets"),
    "300 classes": ({"classes": [{"index": i, "name": f"c{i}"} for i in range(1, 301)]}, "classes"),
    "percentiles": ({"percentiles": [99, 1]}, "percentiles"),
    "version 0": ({"version": 0}, "version"),
    "name escapes": ({"name": "../../escaped"}, "model name"),
    "encoder path": ({"encoder": "../x"}, "encoder"),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_spec_bounds_every_size(tmp_path, case):
    from napari_gi_seg.models.spec import ModelSpec

    base = {"name": "ok", "encoder": "resnet18", "input_size": [32, 32], "classes": [{"index": 1, "name": "liver"}]}
    change, field = BAD_SPECS[case]
    p = tmp_path / "spec.json"
    p.write_text(json.dumps({**base, **change}))
    with pytest.raises(ValueError, match=field) as ei:
        ModelSpec.load(p)
    assert str(p) in str(ei.value)


def test_registered_huge_spec_gives_one_line(tmp_path, chaos_image_path, capsys):
    from napari_gi_seg.models import registry

    folder = registry.user_models_root() / "huge" / "1"
    folder.mkdir(parents=True)
    spec = {"name": "huge", "input_size": [100000, 100000], "classes": [{"index": 1, "name": "liver"}]}
    (folder / "spec.json").write_text(json.dumps(spec))
    (folder / "model.safetensors").write_bytes(b"x")
    rc, err = _cli(["segment", "/nonexistent.nii.gz", "-o", str(tmp_path / "o.nii.gz"), "--model", "huge"], capsys)
    assert rc == 2 and len(err) == 1  # missing input first
    rc, err = _cli(["segment", str(chaos_image_path), "-o", str(tmp_path / "o.nii.gz"), "--model", "huge"], capsys)
    assert rc == 2 and len(err) == 1 and "spec.json" in err[0] and "input_size" in err[0]


# ------------------------------------------------------------------ poisoned checkpoint
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if ever unpickled


def test_poisoned_checkpoint_is_refused_clearly(tmp_path):
    import torch

    from napari_gi_seg.models.network import load_checkpoint

    marker = tmp_path / "pwned"
    p = tmp_path / "checkpoint_last.pt"
    torch.save({"model": {}, "optimizer": {}, "epoch": 0, "evil": _Payload(str(marker))}, p)
    with pytest.raises(ValueError) as ei:
        load_checkpoint(p)
    msg = str(ei.value)
    assert str(p) in msg and "refused" in msg and "weights_only" not in msg
    assert ei.value.__cause__ is None and ei.value.__suppress_context__
    assert not marker.exists()  # the payload never ran


def test_poisoned_checkpoint_from_the_cli(tmp_path, chaos_image_path, chaos_label_path, capsys):
    import torch

    ds = tmp_path / "ds"
    ds.mkdir()
    for pid in ("1", "2"):
        src = chaos_image_path.parent
        (ds / f"image_{pid}.nii.gz").symlink_to(src / f"image_{pid}.nii.gz")
        (ds / f"label_{pid}.nii.gz").symlink_to(src / f"label_{pid}.nii.gz")
    (ds / "classes.json").write_text(json.dumps(["liver", "right_kidney", "left_kidney", "spleen"]))
    work = tmp_path / "run"
    work.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "optimizer": {}, "epoch": 0, "evil": _Payload(str(marker))}, work / "checkpoint_last.pt")
    argv = ["train", str(ds), "--name", "poison", "--size", "32", "--epochs", "1", "--val-fraction", "0.5"]
    rc, err = _cli([*argv, "--device", "cpu", "--work-dir", str(work), "--resume"], capsys)
    errors = [line for line in err if line.startswith("napari-gi-seg:")]  # (the trainer logs progress too)
    assert rc == 2 and len(errors) == 1 and errors == err[-1:]
    assert str(work / "checkpoint_last.pt") in errors[0] and "weights_only" not in "\n".join(err)
    assert not marker.exists()


# ------------------------------------------------------------------ CLI contract
def test_memory_error_and_debug(tmp_path, chaos_image_path, monkeypatch, capsys):
    import napari_gi_seg.io as io_mod

    def oom(*a, **k):
        raise MemoryError

    monkeypatch.setattr(io_mod, "read_image", oom)
    argv = ["segment", str(chaos_image_path), "-o", str(tmp_path / "o.nii.gz"), "--device", "cpu"]
    rc, err = _cli(argv, capsys)
    assert rc == 2 and len(err) == 1 and str(chaos_image_path) in err[0] and "memory" in err[0]
    rc, err = _cli(["--debug", *argv], capsys)
    assert rc == 2 and any("Traceback" in line for line in err) and "memory" in err[-1]
    rc, err = _cli([*argv, "--debug"], capsys)  # after the sub-command too
    assert rc == 2 and any("Traceback" in line for line in err)


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "", ".hidden", "x" * 65])
def test_bad_model_names_exit_2_before_any_work(tmp_path, name, capsys):
    from napari_gi_seg.models import registry

    for cmd in (["train", str(tmp_path)], ["finetune", str(tmp_path), "--model", "chaos-t2spir"]):
        with pytest.raises(SystemExit) as ei:
            cli.main([*cmd, "--name", name])
        assert ei.value.code == 2
        assert "not allowed" in capsys.readouterr().err
    assert [p.name for p in registry.user_models_root().iterdir()] == []
    assert not (tmp_path.parent / "escaped").exists()
