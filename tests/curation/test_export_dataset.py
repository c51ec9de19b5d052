"""Export of reviewed corrections as an nnU-Net v2 dataset, read back by the trainer."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import napari_gi_seg.curation.export as export_mod
from napari_gi_seg import __version__
from napari_gi_seg.curation.export import export_case
from napari_gi_seg.datasets import IGNORE_INDEX, open_dataset
from napari_gi_seg.io.nifti import read_nifti

PATIENT_NAME = "DOE^JOHN"


@pytest.fixture
def named_image(chaos_image_volume):
    """The CHAOS image as if opened from a file named after the patient."""
    return chaos_image_volume.with_data(chaos_image_volume.data, source_path=f"/scans/{PATIENT_NAME}_t2spir.nii.gz")


@pytest.fixture
def patient2(chaos_dir):
    return read_nifti(chaos_dir / "image_2.nii.gz", as_labels=False), read_nifti(
        chaos_dir / "label_2.nii.gz", as_labels=True
    ).data


def _tree(root):
    """{relative path: bytes} of every file under root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_first_case(tmp_path, named_image, chaos_labels, chaos_class_names):
    ds = tmp_path / "Dataset501_Corrections"
    reviewed = list(range(14, 24))
    pred = chaos_labels.copy()
    pred[16][pred[16] == 1] = 0  # the model missed the liver on slice 16
    out = export_case(
        ds, named_image, chaos_labels, reviewed, chaos_class_names, prediction=pred, model_key="chaos-t2spir:2"
    )
    assert out == ds
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "MR"}
    assert meta["labels"] == {
        "background": 0,
        "liver": 1,
        "right_kidney": 2,
        "left_kidney": 3,
        "spleen": 4,
        "ignore": 5,
    }
    assert meta["numTraining"] == 1 and meta["file_ending"] == ".nii.gz"
    (case_id,) = meta["groups"]
    assert sorted(p.name for p in (ds / "imagesTr").iterdir()) == [f"{case_id}_0000.nii.gz"]
    assert sorted(p.name for p in (ds / "labelsTr").iterdir()) == [f"{case_id}.nii.gz"]

    lab = read_nifti(ds / "labelsTr" / f"{case_id}.nii.gz", as_labels=True)
    img = read_nifti(ds / "imagesTr" / f"{case_id}_0000.nii.gz", as_labels=False)
    np.testing.assert_allclose(lab.affine, named_image.affine)
    np.testing.assert_allclose(img.affine, named_image.affine)
    np.testing.assert_allclose(img.data, named_image.data, rtol=1e-6)
    assert np.array_equal(lab.data[reviewed], chaos_labels[reviewed])
    unreviewed = [z for z in range(chaos_labels.shape[0]) if z not in reviewed]
    assert np.all(lab.data[unreviewed] == 5)

    prov = json.loads((ds / "provenance.json").read_text())
    (entry,) = prov["cases"]
    assert entry["case_id"] == case_id and entry["reviewed_slices"] == reviewed
    assert entry["model"] == {"key": "chaos-t2spir:2", "name": "chaos-t2spir", "version": 2}
    assert entry["software"] == {"name": "napari-gi-seg", "version": __version__}
    assert entry["exported_at"].endswith("+00:00")
    dz = entry["correction_dice_per_slice"]
    assert set(dz) == {str(z) for z in reviewed}
    f, q = chaos_labels[16] > 0, pred[16] > 0  # all organs pooled
    assert dz["16"] == pytest.approx(2 * (f & q).sum() / (f.sum() + q.sum()), abs=1e-6)
    assert dz["16"] < 0.9 and all(v == 1.0 for k, v in dz.items() if k != "16")

    # no patient identifiers anywhere: file names, JSON, NIfTI headers
    for rel, blob in _tree(ds).items():
        assert "DOE" not in rel
        if rel.endswith(".json"):
            assert "DOE" not in blob.decode() and "/scans" not in blob.decode()
    for p in list((ds / "imagesTr").iterdir()) + list((ds / "labelsTr").iterdir()):
        h = nib.load(p).header
        for field in ("descrip", "aux_file", "db_name", "intent_name"):
            assert b"DOE" not in h[field].tobytes()

    # the trainer reads it: ignore -> IGNORE_INDEX on unreviewed slices
    dset = open_dataset(ds)
    assert dset.layout == "nnunet"
    assert dset.class_names == ["liver", "right_kidney", "left_kidney", "spleen"]
    case = dset.cases[0].load()
    assert case.case_id == case_id and case.group == entry["group"]
    assert np.all(case.target[unreviewed] == IGNORE_INDEX)
    assert np.array_equal(case.target[reviewed], chaos_labels[reviewed])


def test_append_second_case(tmp_path, named_image, chaos_labels, chaos_class_names, patient2):
    ds = tmp_path / "ds"
    export_case(ds, named_image, chaos_labels, [20, 21], chaos_class_names, case_id="chaos_p1", group="p1")
    img2, lab2 = patient2
    export_case(
        ds, img2, lab2, range(10, 15), chaos_class_names, case_id="chaos_p2", group="p2", model_key="chaos-t2spir:1"
    )
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["groups"] == {"chaos_p1": "p1", "chaos_p2": "p2"}
    prov = json.loads((ds / "provenance.json").read_text())
    assert [c["case_id"] for c in prov["cases"]] == ["chaos_p1", "chaos_p2"]
    assert prov["cases"][0]["model"] is None and prov["cases"][0]["correction_dice_per_slice"] is None
    assert prov["cases"][1]["reviewed_slices"] == [10, 11, 12, 13, 14]
    dset = open_dataset(ds)
    assert [c.case_id for c in dset.cases] == ["chaos_p1", "chaos_p2"] and dset.groups == ["p1", "p2"]
    c2 = dset.cases[1].load()
    assert c2.target.shape == lab2.shape
    assert np.array_equal(c2.target[10:15], lab2[10:15]) and np.all(c2.target[:10] == IGNORE_INDEX)
    # a third export of the same image gets a fresh default case id, never overwrites
    export_case(ds, named_image, chaos_labels, [5], chaos_class_names)
    export_case(ds, named_image, chaos_labels, [6], chaos_class_names)
    ids = [c.case_id for c in open_dataset(ds).cases]
    assert len(ids) == 4 and len(set(ids)) == 4
    groups = json.loads((ds / "dataset.json").read_text())["groups"]
    new = [i for i in ids if i not in ("chaos_p1", "chaos_p2")]
    assert groups[new[0]] == groups[new[1]]  # same image file -> same patient group
    with pytest.raises(ValueError, match="exists already"):
        export_case(ds, img2, lab2, [3], chaos_class_names, case_id="chaos_p2")
    # different classes cannot be appended
    before = _tree(ds)
    with pytest.raises(ValueError, match="differ"):
        export_case(ds, img2, np.minimum(lab2, 2), [3], {1: "liver", 2: "kidney"})
    assert _tree(ds) == before


def test_export_refuses_bad_input(tmp_path, named_image, chaos_labels, chaos_class_names):
    ds = tmp_path / "ds"
    with pytest.raises(ValueError, match="no slice is reviewed"):
        export_case(ds, named_image, chaos_labels, [], chaos_class_names)
    with pytest.raises(ValueError, match="1..K"):
        export_case(ds, named_image, chaos_labels, [3], {1: "liver", 3: "spleen"})
    with pytest.raises(ValueError, match="label values"):
        export_case(ds, named_image, chaos_labels, [3], {1: "liver", 2: "right_kidney"})
    with pytest.raises(ValueError, match="shape"):
        export_case(ds, named_image, chaos_labels[:-1], [3], chaos_class_names)
    with pytest.raises(ValueError, match="case_id"):
        export_case(ds, named_image, chaos_labels, [3], chaos_class_names, case_id="../x")
    assert not ds.exists()
    (tmp_path / "notds").mkdir()
    (tmp_path / "notds" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not an nnU-Net dataset"):
        export_case(tmp_path / "notds", named_image, chaos_labels, [3], chaos_class_names)


def _fail_after_first_write(monkeypatch):
    real = export_mod.write_nifti
    calls = []

    def flaky(*args, **kwargs):
        if calls:
            raise OSError("disk full")
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(export_mod, "write_nifti", flaky)
    return calls


def test_interrupted_first_export_leaves_nothing(tmp_path, named_image, chaos_labels, chaos_class_names, monkeypatch):
    ds = tmp_path / "ds"
    calls = _fail_after_first_write(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        export_case(ds, named_image, chaos_labels, [10, 11], chaos_class_names)
    assert len(calls) == 1  # the image was written, the labels were not
    assert not ds.exists()
    assert list(tmp_path.iterdir()) == []  # no temp folder left either


def test_interrupted_append_keeps_previous_dataset(
    tmp_path, named_image, chaos_labels, chaos_class_names, patient2, monkeypatch
):
    ds = tmp_path / "ds"
    export_case(ds, named_image, chaos_labels, [20, 21], chaos_class_names, case_id="chaos_p1")
    before = _tree(ds)
    img2, lab2 = patient2
    _fail_after_first_write(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        export_case(ds, img2, lab2, [12], chaos_class_names, case_id="chaos_p2")
    monkeypatch.undo()
    assert _tree(ds) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    # failure during the final merge (replacing dataset.json) is rolled back too
    import napari_gi_seg._atomic as atomic_mod

    real_replace = atomic_mod.os.replace

    def replace_fails_on_dataset_json(src, dst):
        if str(dst).endswith("dataset.json"):
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic_mod.os, "replace", replace_fails_on_dataset_json)
    with pytest.raises(OSError, match="rename failed"):
        export_case(ds, img2, lab2, [12], chaos_class_names, case_id="chaos_p2")
    monkeypatch.undo()
    assert _tree(ds) == before
    assert [c.case_id for c in open_dataset(ds).cases] == ["chaos_p1"]
