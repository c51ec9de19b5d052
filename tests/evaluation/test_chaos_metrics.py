"""The CHAOS challenge metrics (RAVD, ASSD, MSSD) against values worked out by hand and
an independent computation with scipy distance transforms, on a simple shape and on a
real CHAOS liver."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from napari_gi_seg.evaluation.chaos_metrics import chaos_metrics, ravd_percent, surface_voxels
from napari_gi_seg.evaluation.metrics import evaluate_case


def _cubes():
    """Reference: a 10^3 voxel cube; prediction: the 12^3 cube around it (one voxel
    thicker on every side), in a volume large enough that neither touches the edge."""
    ref = np.zeros((20, 20, 20), bool)
    ref[5:15, 5:15, 5:15] = True
    pred = ndimage.binary_dilation(ref, structure=np.ones((3, 3, 3), bool))
    return pred, ref


def test_ravd_by_hand():
    pred, ref = _cubes()
    assert ravd_percent(pred, ref) == pytest.approx((1728 - 1000) / 1000 * 100)  # 72.8 %
    assert ravd_percent(ref, pred) == pytest.approx((1728 - 1000) / 1728 * 100)  # relative to the reference
    assert ravd_percent(np.zeros(3, bool), np.zeros(3, bool)) == 0.0
    assert math.isnan(ravd_percent(np.ones(3, bool), np.zeros(3, bool)))


def test_assd_mssd_of_nested_cubes_analytic():
    """Anisotropic voxels (z 2 mm, y and x 1 mm). Surface voxels of the 12-cube (728)
    and their nearest 10-cube surface voxel: z-face interiors 200 at 2 mm, y/x-face
    interiors 400 at 1 mm, edges along x and y 80 at sqrt(5), edges along z 40 at
    sqrt(2), corners 8 at sqrt(6). The 10-cube's 488 surface voxels: 128 only on a
    z-face at 2 mm, the other 360 at 1 mm. ASSD = sum / (728 + 488), MSSD = sqrt(6)."""
    pred, ref = _cubes()
    assert len(surface_voxels(pred)) == 728 and len(surface_voxels(ref)) == 488
    total = 200 * 2 + 400 * 1 + 80 * math.sqrt(5) + 40 * math.sqrt(2) + 8 * math.sqrt(6) + 128 * 2 + 360 * 1
    m = chaos_metrics(pred, ref, (2.0, 1.0, 1.0))
    assert m["assd_mm"] == pytest.approx(total / (728 + 488))
    assert m["mssd_mm"] == pytest.approx(math.sqrt(6))
    assert m["ravd"] == pytest.approx(72.8)


def _edt_reference(pred, ref, spacing):
    """Independent ASSD/MSSD: the kit's surface voxels, distances read from a
    distance transform (scipy EDT with ``sampling``) of each surface's complement."""
    st = ndimage.generate_binary_structure(3, 1)
    sp = ref ^ ndimage.binary_erosion(ref, st, border_value=1)
    ss = pred ^ ndimage.binary_erosion(pred, st, border_value=1)
    d_to_ref = ndimage.distance_transform_edt(~sp, sampling=spacing)[ss]
    d_to_pred = ndimage.distance_transform_edt(~ss, sampling=spacing)[sp]
    both = np.concatenate([d_to_ref, d_to_pred])
    return both.mean(), both.max()


def test_assd_matches_distance_transforms_on_a_real_liver(chaos_dicom_root):
    """The real Ground liver of CHAOS patient 1 (T2-SPIR, native spacing 7.7 x 1.54 x
    1.54 mm) against a shifted and eroded copy of itself."""
    from napari_gi_seg.datasets import open_dataset

    case = next(c for c in open_dataset(chaos_dicom_root, sequences="t2spir").cases if c.case_id == "1_t2spir").load()
    ref = case.target == 1
    pred = np.roll(ndimage.binary_erosion(ref, iterations=2), 3, axis=2)
    spacing = case.image.spacing_mm
    assd, mssd = _edt_reference(pred, ref, spacing)
    m = chaos_metrics(pred, ref, spacing)
    assert m["assd_mm"] == pytest.approx(assd, rel=1e-9) and m["mssd_mm"] == pytest.approx(mssd, rel=1e-9)
    assert 1.0 < m["assd_mm"] < 20.0
    assert m["ravd"] == pytest.approx(abs(int(ref.sum()) - int(pred.sum())) / int(ref.sum()) * 100)


def test_empty_masks_and_evaluate_case_fields():
    pred, ref = _cubes()
    none = np.zeros_like(ref)
    assert chaos_metrics(none, none, (1, 1, 1)) == {"ravd": 0.0, "assd_mm": 0.0, "mssd_mm": 0.0}
    m = chaos_metrics(none, ref, (1, 1, 1))
    assert m["ravd"] == 100.0 and math.isnan(m["assd_mm"]) and math.isnan(m["mssd_mm"])
    # beside Dice in every evaluation; ignored voxels are left out of both masks
    lab_p, lab_r = pred.astype(np.uint8), ref.astype(np.uint8)
    res = evaluate_case(lab_p, lab_r, (2.0, 1.0, 1.0), ["liver"], kaggle=False, rt=False)
    assert res["per_class"]["liver"]["mssd_mm"] == pytest.approx(math.sqrt(6))
    lab_r2 = lab_r.copy()
    lab_r2[:, :, :10] = 255  # ignore the half of the volume
    res2 = evaluate_case(lab_p, lab_r2, (2.0, 1.0, 1.0), ["liver"], kaggle=False, rt=False)
    keep = np.zeros_like(ref)
    keep[:, :, 10:] = True
    assert res2["per_class"]["liver"]["ravd"] == pytest.approx(ravd_percent(pred & keep, ref & keep))
