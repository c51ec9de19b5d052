"""NIfTI through the npe2 manifest: reader (image + labels), writer (aligned labels),
and the clear errors for broken files."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from napari_gi_seg._reader import napari_get_reader
from napari_gi_seg.io import InvalidInputError, read_image, read_labels, write_labels

CHAOS_SCALE = (7.7, 1.25, 1.25)


def test_chaos_image_and_labels_open_through_npe2(npe2_pm, chaos_image_path, chaos_label_path):
    import npe2

    layers = npe2.read([str(chaos_image_path)], stack=False, plugin_name="napari-gi-seg")
    assert len(layers) == 1
    data, kw, kind = layers[0]
    assert kind == "image"
    assert data.shape == (37, 256, 256) and data.dtype == np.float32
    assert np.allclose(kw["scale"], CHAOS_SCALE, atol=1e-5)
    nii = nib.load(str(chaos_image_path))
    assert np.allclose(kw["metadata"]["affine"], nii.affine)
    assert kw["metadata"]["index_order"] == [2, 1, 0]
    # (z, y, x) is the NIfTI (x, y, z) array transposed.
    assert np.allclose(data, np.asarray(nii.dataobj).transpose(2, 1, 0))

    ((ldata, lkw, lkind),) = npe2.read([str(chaos_label_path)], stack=False, plugin_name="napari-gi-seg")
    assert lkind == "labels"
    assert ldata.dtype == np.uint8 and ldata.shape == data.shape
    assert set(np.unique(ldata).tolist()) == {0, 1, 2, 3, 4}
    assert np.allclose(lkw["scale"], CHAOS_SCALE, atol=1e-5)


def test_labels_written_by_the_plugin_writer_line_up(npe2_pm, chaos_label_path, tmp_path):
    import npe2

    ((ldata, lkw, _),) = npe2.read([str(chaos_label_path)], stack=False, plugin_name="napari-gi-seg")
    edited = ldata.copy()
    edited[10, 100:120, 50:60] = 4  # a correction
    out = tmp_path / "corrected.nii.gz"
    written = npe2.write(str(out), [(edited, lkw, "labels")], plugin_name="napari-gi-seg")
    assert written == [str(out)]
    src, back = nib.load(str(chaos_label_path)), nib.load(str(out))
    assert np.allclose(back.affine, src.affine)
    assert np.allclose(back.header.get_zooms()[:3], src.header.get_zooms()[:3])
    assert np.array_equal(np.asarray(back.dataobj), edited.transpose(2, 1, 0))
    assert back.get_data_dtype() == np.uint8
    assert not list(tmp_path.glob(".tmp-*"))  # no temp file left behind


def test_write_labels_tiff_keeps_spacing(chaos_image_path, chaos_label_path, tmp_path):
    img = read_image(chaos_image_path)[0]
    lab = read_labels(chaos_label_path, like=img)
    p = write_labels(tmp_path / "labels.tif", lab.data, img)
    back = read_labels(p, like=img)
    assert np.array_equal(back.data, lab.data)
    assert np.allclose(back.spacing_mm, CHAOS_SCALE, atol=1e-4)
    assert back.metadata["spacing_source"] == "imagej"


def test_labels_of_another_shape_are_refused(chaos_image_path, data_dir):
    img = read_image(chaos_image_path)[0]
    other = data_dir / "chaos_mr_t2spir" / "label_2.nii.gz"  # 31 slices, not 37
    with pytest.raises(InvalidInputError, match=r"label_2\.nii\.gz.*differs from the image"):
        read_labels(other, like=img)
    with pytest.raises(ValueError, match="differs from the image"):
        write_labels("x.nii.gz", np.zeros((3, 4, 5), np.uint8), img)


def test_reader_returns_none_for_unrelated_files(tmp_path, data_dir):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "empty_dir").mkdir()
    for p in ["notes.txt", "other.csv", "photo.png", "empty_dir", "missing.xyz"]:
        assert napari_get_reader(str(tmp_path / p)) is None
    assert napari_get_reader(str(data_dir / "uwmgi" / "SOURCE.md")) is None
    assert napari_get_reader([str(tmp_path / "notes.txt")]) is None
    assert napari_get_reader(None) is None  # never raises


def _save(arr, path, affine=np.diag([1.25, 1.25, 7.7, 1])):
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


def test_4d_nifti_gives_a_clear_error(tmp_path):
    p = _save(np.zeros((8, 8, 4, 3), np.float32), tmp_path / "dwi.nii.gz")
    reader = napari_get_reader(str(p))
    assert reader is not None
    with pytest.raises(InvalidInputError, match=r"dwi\.nii\.gz: 4D NIfTI \(8, 8, 4, 3\) is not supported"):
        reader(str(p))


def test_truncated_gz_gives_a_clear_error(chaos_image_path, tmp_path):
    p = tmp_path / "cut.nii.gz"
    p.write_bytes(chaos_image_path.read_bytes()[:20000])
    with pytest.raises(InvalidInputError, match=r"cut\.nii\.gz: cannot read NIfTI \(truncated"):
        napari_get_reader(str(p))(str(p))


def test_nan_voxels_give_a_clear_error(tmp_path):
    a = np.ones((8, 8, 4), np.float32)
    a[2, 3, 1] = np.nan
    p = _save(a, tmp_path / "nan.nii.gz")
    with pytest.raises(InvalidInputError, match=r"nan\.nii\.gz: 1 voxels are NaN"):
        read_image(p)


def test_not_gzip_at_all_gives_a_clear_error(tmp_path):
    p = tmp_path / "fake.nii.gz"
    p.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    with pytest.raises(InvalidInputError, match=r"fake\.nii\.gz"):
        read_image(p)


def test_napari_viewer_model_opens_files_and_survives_a_broken_one(npe2_pm, chaos_image_path, tmp_path):
    """napari's own open path (ViewerModel, no Qt): layers with mm scale; a broken file
    raises our message and the layers already open stay."""
    from napari.components import ViewerModel

    vm = ViewerModel()
    vm.open(str(chaos_image_path), plugin="napari-gi-seg")
    assert [type(lay).__name__ for lay in vm.layers] == ["Image"]
    assert np.allclose(vm.layers[0].scale, CHAOS_SCALE, atol=1e-5)
    bad = _save(np.zeros((8, 8, 4, 2), np.float32), tmp_path / "bad_4d.nii.gz")
    with pytest.raises(Exception, match=r"bad_4d\.nii\.gz: 4D NIfTI"):
        vm.open(str(bad), plugin="napari-gi-seg")
    assert len(vm.layers) == 1
