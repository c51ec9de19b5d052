"""DICOM-SEG: written by ``segment --format dicom-seg`` from a real CHAOS DICOM MR series,
valid for dciodvfy, equal to the run's labels voxel for voxel when read back with
highdicom, and reopened by the plugin's reader (and napari's viewer) on the image grid."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from test_rtstruct import CLASSES, dciodvfy_errors

from dicom_series import DICOM_PATIENT_ID, require_tool
from napari_gi_seg._reader import napari_get_reader
from napari_gi_seg.io import read_image, read_labels
from napari_gi_seg.io.dicom_seg import write_dicom_seg
from napari_gi_seg.models import registry


def test_segment_dicom_seg_is_valid_and_read_back_by_highdicom(segmented_dicom):
    import highdicom as hd

    path, labels, image = segmented_dicom["dicom-seg"], segmented_dicom["labels"], segmented_dicom["image"]
    require_tool("dciodvfy")
    assert dciodvfy_errors(path) == []
    seg = hd.seg.segread(path)
    assert [seg.get_segment_description(n).segment_label for n in seg.segment_numbers] == list(CLASSES.values())
    desc = seg.get_segment_description(1)
    assert desc.algorithm_type.value == "AUTOMATIC"
    algo = desc.algorithm_identification[0]
    default = registry.get_entry(None)  # the fixture segmented with the default model
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == (default.name, str(default.version)) == ("chaos-t2spir", "5")
    assert desc.segmented_property_type.value == "10200004"  # SNOMED CT liver
    assert seg.PatientID == DICOM_PATIENT_ID and seg.FrameOfReferenceUID == image._dicom_ref.frame_of_reference_uid
    px = seg.get_pixels_by_source_instance(
        list(image._dicom_ref.sop_instance_uids), combine_segments=True, assert_missing_frames_are_empty=True
    )
    assert px.shape == labels.shape
    assert np.array_equal(px, labels)
    # the plugin's own reader: same labels on the series' grid, segment labels as class names
    back = read_labels(path)
    assert np.array_equal(back.data, labels) and back.metadata["class_names"] == CLASSES
    [(data, kw, kind)] = napari_get_reader(str(path))(str(path))
    assert kind == "labels" and np.array_equal(data, labels) and np.allclose(kw["scale"], image.spacing_mm)


def test_dicom_seg_second_orientation_and_overlaps_refused(chaos_dicom_flipped, tmp_path):
    image = read_image(chaos_dicom_flipped.folder)[0]
    out = write_dicom_seg(tmp_path / "x.seg.dcm", chaos_dicom_flipped.labels, image, CLASSES, model_name="m")
    assert dciodvfy_errors(out) == []
    assert np.array_equal(read_labels(out, like=image).data, chaos_dicom_flipped.labels)
    assert pydicom.dcmread(out, stop_before_pixels=True).Modality == "SEG"
    with pytest.raises(ValueError, match=r"label values \[5\] have no class name"):
        bad = chaos_dicom_flipped.labels.copy()
        bad[0, 0, 0] = 5
        write_dicom_seg(tmp_path / "bad.seg.dcm", bad, image, CLASSES)
    assert not (tmp_path / "bad.seg.dcm").exists()


@pytest.mark.gui
def test_viewer_opens_series_and_both_label_objects(qtbot, make_napari_viewer, segmented_dicom, chaos_dicom, tmp_path):
    """napari's viewer: the series, then the RTSTRUCT and the SEG as Labels on its grid;
    Save Layer writes an RTSTRUCT again through the plugin."""
    viewer = make_napari_viewer()
    [img] = viewer.open(str(chaos_dicom.folder), plugin="napari-gi-seg")
    for key in ("rtstruct", "dicom-seg"):
        [lab] = viewer.open(str(segmented_dicom[key]), plugin="napari-gi-seg")
        assert lab.__class__.__name__ == "Labels"
        assert lab.data.shape == img.data.shape and np.allclose(lab.scale, img.scale)
        assert np.array_equal(np.asarray(lab.data), segmented_dicom["labels"])
    out = tmp_path / "saved.dcm"
    viewer.layers[-1].save(str(out), plugin="napari-gi-seg")
    assert np.array_equal(read_labels(out).data, segmented_dicom["labels"])
    # The Export widget's "Save RTSTRUCT..." (path given instead of the file dialog).
    from napari_gi_seg._qt.export_widget import ExportWidget

    w = ExportWidget(viewer)
    qtbot.addWidget(w)
    w.labels_combo.setCurrentText(viewer.layers[1].name)
    written = w.save_rtstruct(tmp_path / "from_widget.dcm")
    assert written is not None and np.array_equal(read_labels(written).data, segmented_dicom["labels"])
    assert {r.ROIGenerationAlgorithm for r in pydicom.dcmread(written).StructureSetROISequence} == {"SEMIAUTOMATIC"}
