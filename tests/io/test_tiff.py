"""TIFF stacks: spacing from ImageJ / OME / resolution tags, the 1 mm fallback flag,
the labels writer, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_gi_seg._reader import napari_get_reader
from napari_gi_seg.io import InvalidInputError, read_image, read_labels
from napari_gi_seg.io.nifti import read_nifti
from napari_gi_seg.io.tiff import read_tiff, write_tiff_labels


@pytest.fixture(scope="module")
def chaos_slices(chaos_image_path):
    """Real data: 5 slices of CHAOS patient 1, (z, y, x) float32."""
    return read_nifti(chaos_image_path, as_labels=False).data[15:20]


def test_imagej_stack_spacing(tmp_path, chaos_slices):
    p = tmp_path / "stack.tif"
    tifffile.imwrite(
        p,
        chaos_slices.astype(np.uint16),
        imagej=True,
        resolution=(1 / 0.125, 1 / 0.125),
        metadata={"axes": "ZYX", "spacing": 0.77, "unit": "cm"},
    )
    ((data, kw, kind),) = napari_get_reader(str(p))(str(p))
    assert kind == "image" and data.shape == (5, 256, 256)
    assert np.allclose(kw["scale"], (7.7, 1.25, 1.25))
    assert kw["metadata"]["spacing_source"] == "imagej" and kw["metadata"]["spacing_assumed"] is False
    assert np.array_equal(data, chaos_slices.astype(np.uint16))


def test_ome_physical_sizes(tmp_path, chaos_slices):
    p = tmp_path / "stack.ome.tif"
    tifffile.imwrite(
        p,
        chaos_slices,
        ome=True,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": 1250.0,
            "PhysicalSizeY": 1250.0,
            "PhysicalSizeZ": 7.7,
            "PhysicalSizeZUnit": "mm",
        },
    )  # x, y in the default unit, µm
    v = read_image(p)[0]
    assert np.allclose(v.spacing_mm, (7.7, 1.25, 1.25))
    assert v.metadata["spacing_source"] == "ome" and v.data.dtype == np.float32


def test_plain_tiff_falls_back_to_1mm_with_a_flag(tmp_path, chaos_slices):
    p = tmp_path / "plain.tif"
    tifffile.imwrite(p, chaos_slices.astype(np.int16))
    v = read_tiff(p)
    assert v.spacing_mm == (1.0, 1.0, 1.0)
    assert v.metadata["spacing_assumed"] is True and "assumed 1 mm" in v.metadata["spacing_source"]


def test_labels_writer_round_trip(tmp_path, chaos_label_path):
    lab = read_nifti(chaos_label_path, as_labels=True)
    p = write_tiff_labels(tmp_path / "image_1_labels.tif", lab.data, lab.spacing_mm)
    with tifffile.TiffFile(p) as t:
        assert t.is_imagej and t.series[0].dtype == np.uint8 and t.series[0].axes == "ZYX"
    back = read_labels(p)
    assert np.array_equal(back.data, lab.data)
    assert np.allclose(back.spacing_mm, lab.spacing_mm, atol=1e-4)
    # Opened in napari, a label-named integer TIFF is a Labels layer.
    ((_, _, kind),) = napari_get_reader(str(p))(str(p))
    assert kind == "labels"


def test_rgb_tiff_is_refused(tmp_path):
    p = tmp_path / "photo.tif"
    tifffile.imwrite(p, np.zeros((4, 20, 30, 3), np.uint8), photometric="rgb")
    with pytest.raises(InvalidInputError, match=r"photo\.tif: expected a grey stack"):
        read_image(p)


def test_truncated_tiff_is_refused(tmp_path, chaos_slices):
    p = tmp_path / "cut.tif"
    tifffile.imwrite(p, chaos_slices)
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(InvalidInputError, match=r"cut\.tif: cannot read TIFF"):
        read_image(p)


def test_non_integer_labels_are_refused(tmp_path):
    p = tmp_path / "soft_mask.tif"
    tifffile.imwrite(p, np.full((2, 8, 8), 0.5, np.float32))
    with pytest.raises(InvalidInputError, match="non-integer"):
        read_labels(p)
