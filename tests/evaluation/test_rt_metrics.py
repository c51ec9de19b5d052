"""Radiotherapy contour metrics (surface Dice, mean surface distance, added path length)
on the real CHAOS manual labels with known edits, in evaluate's case metrics, the
report's plot and the export's provenance."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from napari_gi_seg.evaluation.metrics import (
    SURFACE_DICE_TOLERANCE_MM,
    added_path_length_per_slice,
    aggregate,
    evaluate_case,
    mean_surface_distance_mm,
    rt_contour_metrics,
    surface_dice,
)
from napari_gi_seg.io.nifti import read_nifti

CLASSES = {1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"}


@pytest.fixture(scope="module")
def chaos(chaos_label_path, chaos_image_path):
    return read_nifti(chaos_image_path), read_nifti(chaos_label_path, as_labels=True)


def test_identical_contours_need_no_edit(chaos):
    _, lab = chaos
    liver = lab.data == 1
    assert surface_dice(liver, liver, lab.spacing_mm) == 1.0
    assert mean_surface_distance_mm(liver, liver, lab.spacing_mm) == 0.0
    assert not added_path_length_per_slice(liver, liver, lab.spacing_mm).any()
    assert surface_dice(liver & False, liver & False, lab.spacing_mm) == 1.0
    assert surface_dice(liver & False, liver, lab.spacing_mm) == 0.0


def test_shift_within_and_beyond_the_tolerance(chaos):
    _, lab = chaos
    assert np.allclose(lab.spacing_mm[1:], (1.25, 1.25), atol=0.01)
    liver = lab.data == 1
    shifted = np.roll(liver, 2, axis=2)  # 2 columns = 2.5 mm
    sd2 = surface_dice(shifted, liver, lab.spacing_mm, tolerance_mm=2.0)
    sd3 = surface_dice(shifted, liver, lab.spacing_mm, tolerance_mm=3.0)
    assert 0.3 < sd2 < 0.95 and sd3 > 0.99
    msd = mean_surface_distance_mm(shifted, liver, lab.spacing_mm)
    assert 0.3 < msd < 2.5


def test_added_path_length_counts_what_the_clinician_redraws(chaos):
    _, lab = chaos
    sp = lab.spacing_mm
    kidney = lab.data == 2
    zs = np.flatnonzero(kidney.reshape(kidney.shape[0], -1).any(1))
    z = int(zs[len(zs) // 2])
    cross = ndimage.generate_binary_structure(2, 1)
    boundary = kidney[z] & ~ndimage.binary_erosion(kidney[z], cross, border_value=0)
    # The model missed the kidney on slice z: the whole contour is drawn (boundary pixels x 1.25 mm).
    missed = kidney.copy()
    missed[z] = False
    apl = added_path_length_per_slice(missed, kidney, sp)
    assert apl[z] == pytest.approx(boundary.sum() * 1.25, rel=1e-6)
    assert np.count_nonzero(apl) == 1
    # A spurious extra blob costs nothing to add (deleting is fast).
    extra = kidney.copy()
    extra[z, :5, :5] = True
    assert not added_path_length_per_slice(extra, kidney, sp).any()
    # One pixel too small everywhere on slice z: every reference boundary pixel is off by one ...
    eroded = kidney.copy()
    eroded[z] = ndimage.binary_erosion(kidney[z], cross)
    assert added_path_length_per_slice(eroded, kidney, sp)[z] == pytest.approx(boundary.sum() * 1.25)
    # ... but within a 1.8 mm tolerance of the model's contour (except where erosion
    # removed a one-pixel-thin part of the real kidney outline).
    tolerant = added_path_length_per_slice(eroded, kidney, sp, tolerance_mm=1.8)[z]
    assert tolerant < 0.05 * boundary.sum() * 1.25


def test_rt_metrics_in_evaluate_report_and_provenance(chaos, tmp_path):
    from napari_gi_seg.curation.export import export_case
    from napari_gi_seg.evaluation.evaluate import Evaluation, format_table, write_report

    img, lab = chaos
    pred = lab.data.copy()
    z = int(np.argmax((lab.data == 4).sum((1, 2))))
    pred[z][pred[z] == 4] = 0  # the model missed the spleen on one slice
    r = evaluate_case(pred, lab.data, lab.spacing_mm, CLASSES, kaggle=False)
    spleen = r["per_class"]["spleen"]
    assert r["surface_dice_tolerance_mm"] == SURFACE_DICE_TOLERANCE_MM
    assert spleen["apl_mm"] > 0 and spleen["apl_mm_per_slice"][z] == spleen["apl_mm"]
    assert r["per_class"]["liver"]["apl_mm"] == 0 and r["per_class"]["liver"]["surface_dice"] == 1.0
    assert 0 < spleen["surface_dice"] < 1
    summary = {
        "model": "m:1",
        "dataset": "d",
        "layout": "nifti_pairs",
        "classes": list(CLASSES.values()),
        "skipped_classes": [],
        "tta": False,
        "device": "cpu",
        "seconds": 0,
        "created": "now",
        "n_cases": 1,
        "surface_dice_tolerance_mm": 2.0,
        **{k: v for k, v in aggregate({"c1": r}).items()},
        "per_case": {"c1": {**r, "group": "p1"}},
    }
    assert "APL mm" in format_table(summary)
    rep = write_report(Evaluation(summary), tmp_path / "report.md")
    assert "rt_metrics_per_class.png" in rep.read_text() and "surface Dice (2 mm)" in rep.read_text()
    assert (tmp_path / "report_files" / "rt_metrics_per_class.png").stat().st_size > 5000
    # Export provenance: the same metrics on the reviewed slices, per organ and slice.
    reviewed = range(z - 2, z + 3)
    export_case(tmp_path / "ds", img, lab.data, reviewed, CLASSES, prediction=pred, model_key="m:1")
    prov = json.loads((tmp_path / "ds" / "provenance.json").read_text())
    rt = prov["cases"][0]["rt_metrics"]
    assert rt["surface_dice_tolerance_mm"] == 2.0
    assert rt["per_class"]["spleen"]["apl_mm"] == pytest.approx(spleen["apl_mm"], abs=1e-3)
    assert set(rt["per_class"]["spleen"]["apl_mm_per_slice"]) == {str(k) for k in reviewed}
    direct = rt_contour_metrics(pred, lab.data, lab.spacing_mm, CLASSES, reviewed)
    assert direct["per_class"]["liver"]["surface_dice"] == 1.0
