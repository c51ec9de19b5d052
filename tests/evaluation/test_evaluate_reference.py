"""``napari-gi-seg evaluate --reference REF --prediction PRED --image DICOM_DIR`` on the
CHAOS organisers' format: per-slice Ground PNGs beside the DICOM series."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from napari_gi_seg import cli
from napari_gi_seg.datasets import open_dataset
from napari_gi_seg.evaluation.chaos_metrics import chaos_metrics


def _edit_pngs(src, dst, fn):
    """Copy the PNG folder ``src`` to ``dst``, applying ``fn(array, index)`` to each
    PNG (natural order)."""
    dst.mkdir()
    files = sorted(src.glob("*.png"))
    for i, f in enumerate(files):
        Image.fromarray(fn(np.asarray(Image.open(f)), i)).save(dst / f.name)


def test_png_reference_vs_png_prediction_on_the_dicom_grid(chaos_dicom_root, tmp_path, capsys):
    """T1 opposed phase of patient 1: the reference is the shared T1DUAL/Ground folder
    (PNG n+1 for image n: natural order pairs them), the prediction the same PNGs with
    the spleen removed from every third slice and the liver written as binary 255 in a
    second run."""
    pdir = chaos_dicom_root / "1"
    ground, image = pdir / "T1DUAL/Ground", pdir / "T1DUAL/DICOM_anon/OutPhase"
    pred = tmp_path / "pred"
    _edit_pngs(ground, pred, lambda a, i: np.where((a == 252) & (i % 3 == 0), 0, a).astype(np.uint8))
    out = tmp_path / "m.json"
    rc = cli.main(
        ["evaluate", "--reference", str(ground), "--prediction", str(pred), "--image", str(image)]
        + ["--classes", "liver,spleen", "--json", str(out)]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert "RAVD %" in table and "ASSD mm" in table
    res = json.loads(out.read_text())
    assert res["spacing_source"] == "DICOM series" and res["spacing_mm"] == pytest.approx([5.5, 1.89, 1.89], abs=0.01)
    liver, spleen = res["per_class"]["liver"], res["per_class"]["spleen"]
    assert liver["dice"] == 1.0 and liver["ravd"] == 0.0 and liver["assd_mm"] == 0.0 and liver["mssd_mm"] == 0.0
    # independent: the same stacks read here, in the dataset's slice order
    case = next(c for c in open_dataset(chaos_dicom_root, sequences="t1out").cases if c.case_id == "1_t1out").load()
    ref = case.target == 4
    names = sorted(p.name for p in ground.glob("*.png"))
    keep = np.array([names.index(n) % 3 != 0 for n in names])
    # slice z of the case is PNG number n+1 of DICOM image n; rebuild the prediction by name
    from napari_gi_seg.datasets.chaos import dicom_slice_files, ground_png_name

    order = [names.index(ground_png_name(f.name, 1)) for f in dicom_slice_files(image)]
    p = ref & keep[order][:, None, None]
    want_dice = 2 * (p & ref).sum() / (p.sum() + ref.sum())
    assert spleen["dice"] == pytest.approx(want_dice)
    want = chaos_metrics(p, ref, case.image.spacing_mm)
    assert spleen["ravd"] == pytest.approx(want["ravd"]) and spleen["ravd"] > 0
    assert spleen["assd_mm"] == pytest.approx(want["assd_mm"]) and spleen["mssd_mm"] == pytest.approx(want["mssd_mm"])

    # a binary prediction (0/255, the kit's other format) names its class with --classes
    binary = tmp_path / "binary"
    _edit_pngs(ground, binary, lambda a, i: np.where(a == 63, 255, 0).astype(np.uint8))
    rc = cli.main(
        ["evaluate", "--reference", str(ground), "--prediction", str(binary), "--image", str(image)]
        + ["--classes", "liver", "--json", str(out)]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert list(res["per_class"]) == ["liver"] and res["per_class"]["liver"]["dice"] == 1.0


def test_bad_reference_inputs_are_one_line_errors(chaos_dicom_root, tmp_path, capsys):
    pdir = chaos_dicom_root / "1"
    ground = pdir / "T2SPIR/Ground"
    short = tmp_path / "short"
    shutil.copytree(ground, short)
    sorted(short.glob("*.png"))[-1].unlink()
    rc = cli.main(
        ["evaluate", "--reference", str(ground), "--prediction", str(short), "--image", str(pdir / "T2SPIR/DICOM_anon")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "35 PNGs but 36 DICOM images" in err and "Traceback" not in err
    binary = tmp_path / "binary"
    _edit_pngs(ground, binary, lambda a, i: np.where(a == 63, 255, 0).astype(np.uint8))
    rc = cli.main(["evaluate", "--reference", str(ground), "--prediction", str(binary)])
    err = capsys.readouterr().err
    assert rc == 2 and "--classes" in err
    rc = cli.main(["evaluate", "--reference", str(ground)])
    assert rc == 2 and "--prediction" in capsys.readouterr().err
