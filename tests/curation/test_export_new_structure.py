"""Export with partial labels: a structure added after the first export, recorded per
case as annotated or not, old label files still valid (real CHAOS patients)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_gi_seg.curation.export import export_case
from napari_gi_seg.curation.structures import (
    StructureError,
    add_structure,
    new_structure,
    rt_roi_names,
    structure_for,
    tg263_name,
)
from napari_gi_seg.datasets import IGNORE_INDEX, open_dataset
from napari_gi_seg.io.nifti import read_nifti

OLD = {1: "liver", 2: "right_kidney", 3: "left_kidney"}  # a model without the spleen
GROWN = {**OLD, 4: "spleen"}


def test_structure_added_after_first_export(tmp_path, chaos_image_volume, chaos_labels, chaos_dir):
    ds = tmp_path / "Dataset502_NewStructure"
    old_labels = chaos_labels.copy()
    old_labels[old_labels == 4] = 0  # the old model had no spleen: nobody drew it
    export_case(ds, chaos_image_volume, old_labels, range(10, 20), OLD, case_id="old")
    assert read_nifti(ds / "labelsTr/old.nii.gz", as_labels=True).data[0].max() == 4  # the old ignore value

    img2 = read_nifti(chaos_dir / "image_2.nii.gz")
    lab2 = read_nifti(chaos_dir / "label_2.nii.gz", as_labels=True).data
    spleen_only = np.where(lab2 == 4, 4, 0).astype(np.uint8)
    reviewed = [int(z) for z in np.nonzero((lab2 == 4).any((1, 2)))[0]]
    export_case(ds, img2, spleen_only, reviewed, GROWN, case_id="new", annotated=["spleen"])
    # and a case from the old model after the dataset grew: the dataset's labels, its own classes annotated
    export_case(ds, chaos_image_volume, old_labels, range(5, 8), OLD, case_id="late")

    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["labels"] == {
        "background": 0,
        "liver": 1,
        "right_kidney": 2,
        "left_kidney": 3,
        "spleen": 4,
        "ignore": 5,
    }
    assert meta["annotated_classes"] == {
        "old": ["liver", "right_kidney", "left_kidney"],
        "new": ["spleen"],
        "late": ["liver", "right_kidney", "left_kidney"],
    }
    prov = {c["case_id"]: c for c in json.loads((ds / "provenance.json").read_text())["cases"]}
    assert prov["new"]["annotated_classes"] == ["spleen"]
    assert prov["new"]["not_annotated_classes"] == ["liver", "right_kidney", "left_kidney"]
    # the old label file was rewritten to the new ignore value (nnU-Net reads it right too)
    old_file = read_nifti(ds / "labelsTr/old.nii.gz", as_labels=True).data
    assert set(np.unique(old_file[0])) == {5} and set(np.unique(old_file[12])) <= {0, 1, 2, 3}

    d = open_dataset(ds)
    assert d.class_names == ["liver", "right_kidney", "left_kidney", "spleen"] and d.partial
    assert d.annotated_classes() == meta["annotated_classes"]
    cases = {c.case_id: c.load() for c in d.cases}
    assert cases["old"].annotated == ("liver", "right_kidney", "left_kidney")
    t_old = cases["old"].target
    assert (t_old[0] == IGNORE_INDEX).all() and np.array_equal(t_old[12], old_labels[12])
    t_new = cases["new"].target
    assert np.array_equal(t_new[reviewed] == 4, lab2[reviewed] == 4)  # spleen voxels exactly
    assert not np.isin(t_new, [1, 2, 3]).any()


def test_unrewritten_old_file_still_reads_right(tmp_path, chaos_image_volume, chaos_labels):
    """A crash between the commit and the rewrite leaves old files with the old ignore
    value (= the new structure's value): the reader must not read them as spleen."""
    ds = tmp_path / "ds"
    old_labels = np.where(chaos_labels == 4, 0, chaos_labels).astype(np.uint8)
    export_case(ds, chaos_image_volume, old_labels, [12], OLD, case_id="old")
    before = (ds / "labelsTr/old.nii.gz").read_bytes()
    export_case(ds, chaos_image_volume, chaos_labels, [12], GROWN, case_id="new")
    (ds / "labelsTr/old.nii.gz").write_bytes(before)  # as if the rewrite never happened
    c = next(c for c in open_dataset(ds).cases if c.case_id == "old").load()
    assert not (c.target == 4).any() and (c.target[0] == IGNORE_INDEX).all()


def test_append_refuses_other_classes(tmp_path, chaos_image_volume, chaos_labels):
    ds = tmp_path / "ds"
    export_case(ds, chaos_image_volume, np.where(chaos_labels == 4, 0, chaos_labels), [12], OLD)
    with pytest.raises(ValueError, match="new structures can only be added after"):
        export_case(ds, chaos_image_volume, chaos_labels, [12], {1: "spleen", 2: "liver", 3: "a", 4: "b"})
    with pytest.raises(ValueError, match="subset of the classes"):
        export_case(ds, chaos_image_volume, chaos_labels, [12], GROWN, annotated=["stomach"])


def test_tg263_names_and_new_structure_checks():
    assert [tg263_name(n) for n in GROWN.values()] == ["Liver", "Kidney_R", "Kidney_L", "Spleen"]
    assert tg263_name("large_bowel") == "Bowel_Large" and tg263_name("my_lesion") == "my_lesion"
    s = new_structure("Stomach", "", GROWN)
    assert s.tg263 == "Stomach" and s.colour.startswith("#") and s.single_component
    assert structure_for("spleen").single_component and structure_for("spleen").name == "spleen"
    with pytest.raises(StructureError, match="exists already"):
        new_structure("Kidney_R", "", GROWN)  # right_kidney under its TG-263 name
    with pytest.raises(StructureError, match="name"):
        new_structure("ignore", "", GROWN)
    with pytest.raises(StructureError, match="colour"):
        new_structure("Duodenum", "red", GROWN)
    assert rt_roi_names({0: "background", **GROWN, 5: "Stomach"}) == {
        1: "Liver", 2: "Kidney_R", 3: "Kidney_L", 4: "Spleen", 5: "Stomach"
    }  # fmt: skip
    assert rt_roi_names({1: "liver", 2: "Liver"}) == {1: "liver", 2: "Liver"}  # a clash keeps the own names
    names, colours, value = add_structure(
        {0: "background", **GROWN}, {4: "#f58231"}, new_structure("Stomach", "", GROWN)
    )
    assert value == 5 and names[5] == "Stomach" and colours[5] == "#f5c26b" and names[4] == "spleen"


def test_bad_annotated_classes_names_the_key(tmp_path, chaos_image_volume, chaos_labels):
    from napari_gi_seg.datasets import DatasetFormatError

    ds = tmp_path / "ds"
    export_case(ds, chaos_image_volume, chaos_labels, [12], GROWN, case_id="a")
    meta = json.loads((ds / "dataset.json").read_text())
    meta["annotated_classes"]["a"] = ["stomach"]
    (ds / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetFormatError, match=r"annotated_classes\.a.*not in 'labels': \['stomach'\]"):
        open_dataset(ds)
