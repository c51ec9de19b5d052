"""Fixtures for the I/O tests: npe2's plugin manager with this plugin registered."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def npe2_pm():
    """npe2's global PluginManager with ``napari-gi-seg`` discovered from its entry point."""
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    assert "napari-gi-seg" in {m.name for m in pm.iter_manifests()}
    return pm


@pytest.fixture(scope="session")
def segmented_dicom(chaos_dicom, tmp_path_factory):
    """One ``segment`` run per output format of the bundled model on the CHAOS DICOM
    series (CPU, float32, so the runs agree voxel for voxel): ``{"nifti": path,
    "rtstruct": path, "dicom-seg": path, "labels": (z, y, x) uint8 labels of the
    run in the series' z order}``."""
    from napari_gi_seg.cli import main
    from napari_gi_seg.io import read_image, read_labels

    out = tmp_path_factory.mktemp("segmented")
    paths = {"nifti": out / "labels.nii.gz", "rtstruct": out / "rt.dcm", "dicom-seg": out / "labels.seg.dcm"}
    for fmt, path in paths.items():
        argv = ["segment", str(chaos_dicom.folder), "-o", str(path), "--format", fmt, "--model", "chaos-t2spir"]
        assert main([*argv, "--device", "cpu", "--precision", "fp32", "--quiet"]) == 0
    image = read_image(chaos_dicom.folder)[0]
    labels = read_labels(paths["nifti"], like=image).data
    return {**paths, "labels": labels, "image": image}
