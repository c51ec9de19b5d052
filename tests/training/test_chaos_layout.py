"""The CHAOS MR layout on the organisers' real DICOM + Ground PNGs (two patients):
detection, contrasts as cases of one patient, labels by name, the opposed-phase n ->
n+1 pairing, the shared T1 SeriesInstanceUID, patient-grouped folds, and the CLI's
``train``/``evaluate`` pointed at the folder as it is."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from PIL import Image

from napari_gi_seg import cli
from napari_gi_seg.datasets import DatasetFormatError, detect_layout, open_dataset, split_groups
from napari_gi_seg.datasets.chaos import ground_png_name
from napari_gi_seg.models import registry


def test_layout_cases_groups_and_sequences(chaos_dicom_root, chaos3):
    assert detect_layout(chaos_dicom_root) == "chaos"
    ds = open_dataset(chaos_dicom_root)
    assert ds.layout == "chaos" and ds.class_names == ["liver", "right_kidney", "left_kidney", "spleen"]
    assert [c.case_id for c in ds.cases] == ["1_t2spir", "1_t1in", "1_t1out", "22_t2spir", "22_t1in", "22_t1out"]
    assert {c.case_id: c.group for c in ds.cases}["22_t1out"] == "22"
    assert [c.case_id for c in open_dataset(chaos_dicom_root, sequences="t1out,t2spir").cases] == [
        "1_t1out",
        "1_t2spir",
        "22_t1out",
        "22_t2spir",
    ]
    with pytest.raises(DatasetFormatError, match="t1vibe"):
        open_dataset(chaos_dicom_root, sequences=["t1vibe"])
    with pytest.raises(DatasetFormatError, match="does not take sequences"):
        open_dataset(chaos3, sequences=["t2spir"])
    with pytest.raises(DatasetFormatError, match="unknown: \\['pancreas'\\]"):
        open_dataset(chaos_dicom_root, ["liver", "pancreas"])
    # folds are patient-level: a patient's three contrasts are always on one side
    for fold in (0, 1):
        tr, va = split_groups(ds.groups, 0.5, fold, 0)
        assert {c.case_id for c in ds.subset(va).cases} == {f"{va[0]}_{s}" for s in ("t2spir", "t1in", "t1out")}
        assert not set(tr) & set(va)


def _pixels_by_file(folder):
    return {f.name: pydicom.dcmread(f).pixel_array for f in sorted(folder.glob("*.dcm"))}


def test_opposed_phase_pairs_with_the_next_png_and_labels_are_mapped_by_name(chaos_dicom_root):
    """Each slice of the T1 opposed-phase case is found among the DICOM files by its
    pixels (independently of the layout's slice order); its target must be the Ground
    PNG numbered n + 1, values mapped 63 -> liver, ... 252 -> spleen."""
    pdir = chaos_dicom_root / "22"
    ds = open_dataset(chaos_dicom_root, ["spleen", "liver"], sequences="t1out,t1in")
    cases = {c.case_id: c for c in ds.cases}
    out, inp = cases["22_t1out"].load(), cases["22_t1in"].load()
    # the two phases share one SeriesInstanceUID, yet each is its own series here
    ins, outs = (
        sorted((pdir / "T1DUAL/DICOM_anon/InPhase").glob("*.dcm")),
        sorted((pdir / "T1DUAL/DICOM_anon/OutPhase").glob("*.dcm")),
    )
    uid = {str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in (ins[0], outs[0])}
    assert len(uid) == 1
    assert out.image.shape == inp.image.shape == (35, 256, 256)
    assert out.image.spacing_mm == pytest.approx((9.0, 2.03125, 2.03125))
    pix = _pixels_by_file(pdir / "T1DUAL/DICOM_anon/OutPhase")
    for z in (0, 17, 34):
        name = next(n for n, a in pix.items() if np.array_equal(a.astype(np.float32), out.image.data[z]))
        n = int(name[:-4].split("-")[-1])
        assert n % 2 == 1  # opposed-phase images are numbered odd
        png = np.asarray(Image.open(pdir / "T1DUAL/Ground" / ground_png_name(name, 1)))
        assert ground_png_name(name, 1).endswith(f"{n + 1:05d}.png")
        want = np.zeros(png.shape, np.uint8)
        want[png == 252], want[png == 63] = 1, 2  # class order given by name: spleen, liver
        assert np.array_equal(out.target[z], want)
    assert out.target.max() == 2 and (out.target == 2).sum() == 37099  # the liver voxels of patient 22
    # both phases sit at the same positions and share the labels
    assert np.array_equal(out.target, inp.target)


def test_train_and_evaluate_take_the_chaos_folder(chaos_dicom_root, tiny_key, tmp_path, capsys):
    work = tmp_path / "run"
    rc = cli.main(
        [
            "train",
            str(chaos_dicom_root),
            "--name",
            "chaos-smoke",
            "--sequences",
            "t2spir,t1out",
            "--arch",
            "monai.UNet",
            "--size",
            "64",
            "--epochs",
            "1",
            "--max-steps-per-epoch",
            "1",
            "--batch-size",
            "2",
            "--val-fraction",
            "0.5",
            "--work-dir",
            str(work),
        ]
    )
    assert rc == 0
    run = json.loads((work / "run.json").read_text())
    assert run["dataset"]["layout"] == "chaos" and run["config"]["sequences"] == ["t2spir", "t1out"]
    assert sorted(run["split"]["train"] + run["split"]["validation"]) == ["1", "22"]
    spec = registry.get_entry("chaos-smoke").spec().to_dict()
    val = run["split"]["validation"][0]
    assert sorted(spec["metrics"]["validation"]["per_case"]) == [f"{val}_t1out", f"{val}_t2spir"]
    # the model's frame ranges are the native DICOM geometry of the training patient
    sp = spec["frame"]["spacing_range_mm"]
    assert sp["x"] == pytest.approx([1.54, 1.89] if val == "22" else [1.74, 2.03], abs=0.01)
    capsys.readouterr()
    out = tmp_path / "ev.json"
    rc = cli.main(
        [
            "evaluate",
            str(chaos_dicom_root),
            "--model",
            tiny_key,
            "--cases",
            "1",
            "--sequences",
            "t1in",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["layout"] == "chaos" and list(res["per_case"]) == ["1_t1in"]
    assert {"dice", "ravd", "assd_mm", "mssd_mm"} <= set(res["per_class"]["liver"])
