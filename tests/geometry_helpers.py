"""Test and benchmark helpers (not product code): one real CHAOS patient stored in many
ways that describe the same anatomy in the same world coordinates, and resampled or
re-framed copies of it. Used by ``tests/engine/test_geometry.py`` and
``benchmarks/geometry.py`` so the tests and the benchmark table measure the same inputs."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from napari_gi_seg.io.nifti import nifti_affine, read_nifti, write_nifti
from napari_gi_seg.io.orientation import reorient_volume
from napari_gi_seg.io.volume import Volume

#: (name, axis codes in nibabel voxel order (x, y, z)) of the in-memory storage variants
#: of a CHAOS volume (stored L, A, S): each axis reversed, in-plane axes swapped, combinations.
REORIENTED = (
    ("x axis stored reversed", ("R", "A", "S")),
    ("y axis stored reversed", ("L", "P", "S")),
    ("slice order reversed", ("L", "A", "I")),
    ("in-plane axes swapped", ("A", "L", "S")),
    ("all three axes reversed", ("R", "P", "I")),
    ("swapped, x and z reversed", ("P", "R", "I")),
)


def storage_variants(image: Volume, labels: Volume, tmp: Path, dicom: bool = True) -> dict[str, tuple[Volume, Volume]]:
    """``{name: (image, labels)}``: the same patient stored other ways, each image with its
    labels on the same grid. Besides :data:`REORIENTED`: ``"RAS canonical (nibabel)"``
    (``nibabel.as_closest_canonical``, written and read back as NIfTI), and with
    ``dicom``: ``"LPS DICOM series (pydicom)"`` (single-frame slices read with
    :func:`napari_gi_seg.io.read_image`) and ``"dcm2niix-like NIfTI"`` (that DICOM
    written as NIfTI the way dcm2niix lays it out: rows bottom-up, slices in the DICOM
    order, RAS affine)."""
    from napari_gi_seg.io import read_image

    out = {"as in CHAOS": (image, labels)}
    for name, codes in REORIENTED:
        out[name] = (reorient_volume(image, codes), reorient_volume(labels, codes))
    tmp.mkdir(parents=True, exist_ok=True)
    can = tmp / "ras_canonical.nii.gz"
    nib.save(nib.as_closest_canonical(nib.load(image.metadata["source_path"])), str(can))
    ras = read_nifti(can, as_labels=False)
    out["RAS canonical (nibabel)"] = (ras, reorient_volume(labels, nib.aff2axcodes(ras.affine)))
    if dicom:
        from dicom_helpers import write_dicom_series

        write_dicom_series(image, tmp / "dicom", "1.2.826.0.1.3680043.8.498.90", "T2 SPIR")
        (dcm,) = read_image(tmp / "dicom")
        codes = nib.aff2axcodes(nifti_affine(dcm))
        out["LPS DICOM series (pydicom)"] = (dcm, reorient_volume(labels, codes))
        # dcm2niix: the DICOM rows stored bottom-up, RAS affine (our writer converts LPS)
        flipped = reorient_volume(dcm, (codes[0], {"A": "P", "P": "A"}[codes[1]], codes[2]))
        path = write_nifti(flipped, tmp / "dcm2niix_like.nii.gz")
        d2n = read_nifti(path, as_labels=False)
        out["dcm2niix-like NIfTI"] = (d2n, reorient_volume(labels, nib.aff2axcodes(d2n.affine)))
    for name, (im, lab) in out.items():
        assert np.allclose(nifti_affine(im), nifti_affine(lab), atol=1e-3), name
    return out


def to_grid_of(labels: Volume, ref: Volume) -> np.ndarray:
    """``labels`` (a Volume on some storage variant's grid) laid out on ``ref``'s grid;
    asserts that both grids are the same voxels in world space (RAS affines agree)."""
    v = reorient_volume(labels, nib.aff2axcodes(nifti_affine(ref)))
    assert np.allclose(nifti_affine(v), nifti_affine(ref), atol=1e-3), "grids differ in world space"
    return v.data


def _with(vol: Volume, data: np.ndarray, spacing, affine) -> Volume:
    return Volume(np.ascontiguousarray(data), spacing, affine, vol.index_order, dict(vol.metadata))


def resampled_inplane(image: Volume, labels: Volume, spacing_mm: float) -> tuple[Volume, Volume]:
    """In-plane resampled to about ``spacing_mm`` pixels over the same field of view
    (bilinear image, nearest labels; ``scipy.ndimage.zoom`` with ``grid_mode=True``,
    pixel edges aligned), affine adjusted."""
    from scipy import ndimage

    h, w = image.shape[1:]
    ny, nx = round(h * image.spacing_mm[1] / spacing_mm), round(w * image.spacing_mm[2] / spacing_mm)
    f = (1, ny / h, nx / w)
    im = ndimage.zoom(image.data, f, order=1, grid_mode=True, mode="grid-constant")
    lab = ndimage.zoom(labels.data, f, order=0, grid_mode=True, mode="grid-constant")
    sy, sx = h * image.spacing_mm[1] / ny, w * image.spacing_mm[2] / nx
    # NIfTI voxel (x, y, z): new voxel i covers old [i / f, (i + 1) / f): centre shift
    scale = np.diag([w / nx, h / ny, 1.0, 1.0])
    scale[:2, 3] = [0.5 * (w / nx - 1), 0.5 * (h / ny - 1)]
    aff = image.affine @ scale
    sp = (image.spacing_mm[0], sy, sx)
    return _with(image, im.astype(np.float32), sp, aff), _with(labels, lab, sp, aff)


def fov_enlarged(image: Volume, labels: Volume, factor: float = 1.5) -> tuple[Volume, Volume]:
    """The field of view enlarged ``factor`` times by a zero border at the same spacing."""
    h, w = image.shape[1:]
    py, px = round(h * (factor - 1) / 2), round(w * (factor - 1) / 2)
    pad = ((0, 0), (py, py), (px, px))
    t = np.eye(4)
    t[:2, 3] = [-px, -py]
    aff = image.affine @ t
    return _with(image, np.pad(image.data, pad), image.spacing_mm, aff), _with(
        labels, np.pad(labels.data, pad), labels.spacing_mm, aff
    )


def cropped_around_organs(image: Volume, labels: Volume, factor: float = 0.8) -> tuple[Volume, Volume]:
    """The field of view cropped to ``factor`` of its size, centred on the organs'
    bounding box (kept inside the image)."""
    h, w = image.shape[1:]
    ny, nx = round(h * factor), round(w * factor)
    _, yy, xx = np.nonzero(labels.data)
    y0 = int(np.clip((yy.min() + yy.max()) // 2 - ny // 2, 0, h - ny))
    x0 = int(np.clip((xx.min() + xx.max()) // 2 - nx // 2, 0, w - nx))
    t = np.eye(4)
    t[:2, 3] = [x0, y0]
    aff = image.affine @ t
    sl = (slice(None), slice(y0, y0 + ny), slice(x0, x0 + nx))
    return _with(image, image.data[sl], image.spacing_mm, aff), _with(labels, labels.data[sl], labels.spacing_mm, aff)


def spacing_variants(image: Volume, labels: Volume) -> dict[str, tuple[Volume, Volume]]:
    """``{name: (image, labels)}``: in-plane 0.9 and 1.6 mm pixels, field of view 1.5x
    (zero border) and 0.8x (cropped around the organs)."""
    return {
        "in-plane 0.9 mm pixels": resampled_inplane(image, labels, 0.9),
        "in-plane 1.6 mm pixels": resampled_inplane(image, labels, 1.6),
        "field of view 1.5x (zero border)": fov_enlarged(image, labels, 1.5),
        "field of view 0.8x (cropped around the organs)": cropped_around_organs(image, labels, 0.8),
    }
