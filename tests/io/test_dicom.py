"""DICOM series: a real CHAOS volume written as an MR series with pydicom (with patient
identifiers set) and read back: voxels, spacing, LPS affine, sorting, grouping, and no
patient identifier in the layer metadata."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dicom_helpers import PATIENT_ID, PATIENT_NAME, RAS_TO_LPS, SLOPE, write_dicom_series, write_enhanced_mr
from napari_gi_seg._reader import napari_get_reader
from napari_gi_seg.io import InvalidInputError, read_image, write_labels
from napari_gi_seg.io.dicom import series_uid_hash
from napari_gi_seg.io.nifti import read_nifti
from napari_gi_seg.io.volume import Volume


@pytest.fixture(scope="module")
def chaos_volume(chaos_image_path) -> Volume:
    return read_nifti(chaos_image_path, as_labels=False)


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory, chaos_volume) -> Path:
    root = tmp_path_factory.mktemp("dicom")
    write_dicom_series(chaos_volume, root / "study" / "t2", "1.2.826.0.1.3680043.8.498.11", "T2 SPIR")
    # A second series (every 4th slice) in another subfolder, plus files to ignore.
    sub = Volume(
        chaos_volume.data[::4], (7.7 * 4, 1.25, 1.25), chaos_volume.affine @ np.diag([1, 1, 4, 1]), (2, 1, 0), {}
    )
    write_dicom_series(
        sub,
        root / "study" / "scout",
        "1.2.826.0.1.3680043.8.498.12",
        "coarse",
        names=[f"s{i}" for i in range(sub.shape[0])],
    )  # no extension
    (root / "study" / "README.txt").write_text("not DICOM")
    (root / "study" / "t2" / "notes.json").write_text("{}")
    return root / "study"


def _z_flip(n: int) -> np.ndarray:
    f = np.diag([1.0, 1.0, -1.0, 1.0])
    f[2, 3] = n - 1
    return f


def test_dicom_series_round_trip(dicom_folder, chaos_volume):
    vols = read_image(dicom_folder)
    assert len(vols) == 2  # grouped by SeriesInstanceUID, non-DICOM files ignored
    t2 = next(v for v in vols if v.metadata["series_description"] == "T2 SPIR")
    coarse = next(v for v in vols if v.metadata["series_description"] == "coarse")
    assert t2.shape == chaos_volume.shape == (37, 256, 256)
    assert t2.data.dtype == np.float32
    assert np.allclose(t2.spacing_mm, (7.7, 1.25, 1.25), atol=1e-3)
    assert t2.metadata["coordinate_system"] == "LPS" and t2.metadata["modality"] == "MR"
    assert t2.metadata["series_instance_uid_hash"] == series_uid_hash("1.2.826.0.1.3680043.8.498.11")
    # Slices ascend along the plane normal n = row x column cosine. In this CHAOS
    # geometry (rows run to +L, columns to -P = anterior) n points to the feet, so the stack comes out in
    # the opposite z order to the NIfTI; the affine says so, and every voxel maps to
    # the same LPS point with the same value (within the rescale step).
    normal = np.cross(t2.affine[:3, 0], t2.affine[:3, 1])
    assert normal @ t2.affine[:3, 2] > 0
    src_lps = RAS_TO_LPS @ chaos_volume.affine
    assert np.allclose(np.linalg.inv(src_lps) @ t2.affine, _z_flip(37), atol=1e-4)
    assert np.abs(t2.data - chaos_volume.data[::-1]).max() <= SLOPE / 2 + 1e-3
    assert coarse.shape == (10, 256, 256)
    assert np.allclose(coarse.spacing_mm, (30.8, 1.25, 1.25), atol=1e-3)
    assert np.abs(coarse.data - chaos_volume.data[::4][::-1]).max() <= SLOPE / 2 + 1e-3
    assert np.allclose(coarse.affine[:3, 3], (src_lps @ [0, 0, 36, 1])[:3], atol=1e-3)


def test_no_patient_identifier_reaches_the_layer(dicom_folder):
    layers = napari_get_reader(str(dicom_folder))(str(dicom_folder))
    assert [t for *_, t in layers] == ["image", "image"]
    for _, kw, _ in layers:
        text = repr(kw).lower()
        for secret in (
            PATIENT_NAME.lower(),
            "doe",
            PATIENT_ID.lower(),
            "19700101",
            "1.2.826.0.1.3680043.8.498.11",
            "1.2.826.0.1.3680043.8.498.1",
        ):
            assert secret not in text
        assert not any("patient" in k.lower() for k in kw["metadata"])
        assert np.allclose(kw["scale"][1:], (1.25, 1.25))


def test_labels_on_a_dicom_image_are_written_as_ras_nifti(dicom_folder, chaos_label_path, tmp_path):
    t2 = next(v for v in read_image(dicom_folder) if v.metadata["series_description"] == "T2 SPIR")
    labels = read_nifti(chaos_label_path, as_labels=True).data[::-1]  # in the DICOM stack's z order
    out = write_labels(tmp_path / "t2_labels.nii.gz", labels, t2)
    back, src = nib.load(str(out)), nib.load(str(chaos_label_path))
    # Same voxels at the same RAS points as the original CHAOS label file.
    assert np.allclose(back.affine, src.affine @ _z_flip(37), atol=1e-3)
    assert np.allclose(nib.as_closest_canonical(back).affine, nib.as_closest_canonical(src).affine, atol=1e-3)
    assert np.array_equal(
        np.asarray(nib.as_closest_canonical(back).dataobj), np.asarray(nib.as_closest_canonical(src).dataobj)
    )


def test_a_single_dcm_file_opens_its_series(dicom_folder):
    one = sorted((dicom_folder / "t2").glob("*.dcm"))[0]
    vols = napari_get_reader(str(one))(str(one))
    assert len(vols) == 1 and vols[0][0].shape == (37, 256, 256)


def test_mixed_image_sizes_are_refused(tmp_path, chaos_volume):
    small = Volume(chaos_volume.data[:3], chaos_volume.spacing_mm, chaos_volume.affine, (2, 1, 0), {})
    write_dicom_series(small, tmp_path / "mixed", "1.2.826.0.1.3680043.8.498.13", "broken", rows_cols=(128, 200))
    reader = napari_get_reader(str(tmp_path / "mixed"))
    assert reader is not None
    with pytest.raises(InvalidInputError, match=r"mixed: series [0-9a-f]{16} mixes image sizes.*200x128.*256x256"):
        reader(str(tmp_path / "mixed"))


def test_folder_without_dicom_is_not_ours(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    assert napari_get_reader(str(tmp_path)) is None
    with pytest.raises(InvalidInputError, match="unsupported input"):
        read_image(tmp_path)


# --------------------------------------------------------------- slice gaps
def test_a_missing_slice_is_a_clear_error_naming_the_gap(tmp_path, chaos_volume):
    files = write_dicom_series(chaos_volume, tmp_path / "gap", "1.2.826.0.1.3680043.8.498.14", "gap")
    # file k holds NIfTI slice k; the DICOM stack runs the other way (normal to the feet)
    files[20].unlink()
    msg = r"gap: series [0-9a-f]{16} has uneven slice gaps .*15\.40 mm between slices 15 and 16 .*about 1 missing.*expected 7\.70 mm"
    with pytest.raises(InvalidInputError, match=msg):
        read_image(tmp_path / "gap")
    # explicitly allowed: a warning, the missing position interpolated, the geometry exact
    from napari_gi_seg.io.dicom import read_dicom_folder

    with pytest.warns(UserWarning, match="uneven slice gaps.*interpolated onto an even 7.70 mm grid"):
        (vol,) = read_dicom_folder(tmp_path / "gap", allow_uneven=True)
    ref = next(v for v in read_image(_full_series(tmp_path, chaos_volume)))
    assert vol.shape == ref.shape and np.allclose(vol.spacing_mm, ref.spacing_mm, atol=1e-3)
    assert np.allclose(vol.affine, ref.affine, atol=1e-3)
    z = 16  # the DICOM-order index of the removed NIfTI slice 20 (36 - 20)
    keep = np.arange(ref.shape[0]) != z
    assert np.abs(vol.data[keep] - ref.data[keep]).max() < 1e-3
    np.testing.assert_allclose(vol.data[z], 0.5 * (ref.data[z - 1] + ref.data[z + 1]), atol=1e-3)
    assert "interpolated" in vol.metadata["spacing_source"]


def _full_series(tmp_path, chaos_volume):
    folder = tmp_path / "full"
    if not folder.exists():
        write_dicom_series(chaos_volume, folder, "1.2.826.0.1.3680043.8.498.15", "full")
    return folder


def test_uneven_spacing_is_refused(tmp_path, chaos_volume):
    import pydicom

    files = write_dicom_series(chaos_volume.with_data(chaos_volume.data), tmp_path / "uneven", "1.2.3.4.16", "u")
    ds = pydicom.dcmread(files[10])
    ds.ImagePositionPatient[2] = str(float(ds.ImagePositionPatient[2]) + 2.0)  # one slice 2 mm off
    ds.save_as(files[10])
    with pytest.raises(
        InvalidInputError,
        match=r"uneven slice gaps along the slice normal: 5\.70 mm between slices 25 and 26.*; 9\.70 mm between slices 26 and 27",
    ):
        read_image(tmp_path / "uneven")


# --------------------------------------------------------------- Enhanced MR
def test_enhanced_mr_multiframe_reads_back_voxels_and_geometry(tmp_path, chaos_volume, dicom_folder):
    path = write_enhanced_mr(chaos_volume, tmp_path / "enh" / "mr.dcm", "1.2.826.0.1.3680043.8.498.17")
    (vol,) = read_image(tmp_path / "enh")
    single = next(v for v in read_image(dicom_folder) if v.metadata["series_description"] == "T2 SPIR")
    assert vol.shape == single.shape == (37, 256, 256)
    assert np.allclose(vol.spacing_mm, (7.7, 1.25, 1.25), atol=1e-3)
    assert vol.metadata["coordinate_system"] == "LPS"
    assert np.allclose(vol.affine, single.affine, atol=1e-4)
    np.testing.assert_array_equal(vol.data, single.data)
    # and so to the same RAS points as the NIfTI it came from
    assert np.allclose(np.linalg.inv(RAS_TO_LPS @ chaos_volume.affine) @ vol.affine, _z_flip(37), atol=1e-4)
    assert np.abs(vol.data - chaos_volume.data[::-1]).max() <= SLOPE / 2 + 1e-3
    # the single file opens its series through the napari reader too
    layers = napari_get_reader(str(path))(str(path))
    assert len(layers) == 1 and layers[0][0].shape == (37, 256, 256)
    assert PATIENT_ID.lower() not in repr(layers[0][1]).lower()


# --------------------------------------------------------------- export
def test_case_exported_from_dicom_overlays_the_scan_in_world_space(dicom_folder, chaos_label_path, tmp_path):
    from napari_gi_seg.curation.export import export_case

    t2 = next(v for v in read_image(dicom_folder) if v.metadata["series_description"] == "T2 SPIR")
    labels = read_nifti(chaos_label_path, as_labels=True).data[::-1].copy()  # DICOM stack order
    names = {1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"}
    ds = export_case(tmp_path / "Dataset501_T", t2, labels, range(t2.shape[0]), names, case_id="c1")
    img = nib.load(str(ds / "imagesTr" / "c1_0000.nii.gz"))
    lab = nib.load(str(ds / "labelsTr" / "c1.nii.gz"))
    src_img, src_lab = nib.load(str(chaos_label_path).replace("label_", "image_")), nib.load(str(chaos_label_path))
    # exported image and labels share the scan's RAS geometry (not LPS mirrored)
    assert np.allclose(img.affine, lab.affine) and np.allclose(img.affine, src_img.affine @ _z_flip(37), atol=1e-3)
    assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(src_img.affine)[:2] + ("I",)
    can = [np.asarray(nib.as_closest_canonical(x).dataobj) for x in (img, lab, src_img, src_lab)]
    assert np.array_equal(can[1], can[3])  # every label voxel at its original RAS point
    assert np.abs(can[0] - can[2]).max() <= SLOPE / 2 + 1e-3
    # a world point inside the liver maps to liver in the export
    ijk = np.argwhere(np.asarray(src_lab.dataobj) == 1)[len(np.argwhere(np.asarray(src_lab.dataobj) == 1)) // 2]
    world = src_lab.affine @ [*ijk, 1]
    back = np.round(np.linalg.inv(lab.affine) @ world).astype(int)[:3]
    assert np.asarray(lab.dataobj)[tuple(back)] == 1
