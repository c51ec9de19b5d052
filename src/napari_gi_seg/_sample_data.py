"""napari sample data (npe2 command ``napari-gi-seg.make_chaos_sample``).

CHAOS T2-SPIR patient 1 (abdominal MRI, 256 x 256 x 37, 1.25 x 1.25 x 7.7 mm) with its
manual labels (Kavur et al., Medical Image Analysis 69 (2021) 101950; NIfTI copies from
the public ``shenqq377/Q-Net`` repository). Where the files come from, in order:

1. ``data_dir()/chaos_mr_t2spir/`` (``$NAPARI_GI_SEG_DATA`` or ``../shared/data``);
2. a pooch download of the pinned GitHub raw URLs, checked against their sha256,
   cached in ``user_dir()/cache/sample-data``.

This module is the one place where CHAOS's label map is declared for the sample
(:data:`CHAOS_CLASS_NAMES`); models take class names from their spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .paths import data_dir, user_dir

CHAOS_PATIENT = 1
#: Name suffix of the sample's manual (reference) labels layer: ``"image_1 ground truth"``.
REFERENCE_SUFFIX = "ground truth"
#: Label value -> organ in the CHAOS MR ground truth (as converted by Q-Net/SSL-ALPNet).
CHAOS_CLASS_NAMES: dict[int, str] = {1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"}
_QNET_RAW = (
    "https://github.com/shenqq377/Q-Net/raw/70a828d8cec11425785230a98ec965231b5fdd4d/"
    "data/CHAOST2/chaos_MR_T2_normalized/"
)
#: file name -> (URL, sha256), from ``../shared/data/chaos_mr_t2spir/SOURCE.md``.
SAMPLE_FILES: dict[str, tuple[str, str]] = {
    "image_1.nii.gz": (
        _QNET_RAW + "image_1.nii.gz",
        "8fac03aadebfcf858a88b7c68eba4242217339680700427c7b89bc9f74e20058",
    ),
    "label_1.nii.gz": (
        _QNET_RAW + "label_1.nii.gz",
        "c0e9bb2c8823fa2fddf79802f008038ac5d4a0d41ed50c5a886475287c7db879",
    ),
}


def sample_cache_dir() -> Path:
    """``user_dir()/cache/sample-data``: where downloaded sample files are kept."""
    return user_dir() / "cache" / "sample-data"


def sample_file(name: str) -> Path:
    """Local path of a sample file: the shared data folder if it has it, else a
    checked (sha256) download into :func:`sample_cache_dir`.

    Raises
    ------
    KeyError
        Unknown sample file name.
    ValueError / OSError
        Download failed or the sha256 did not match (pooch's errors).
    """
    url, sha256 = SAMPLE_FILES[name]
    d = data_dir()
    if d is not None and (d / "chaos_mr_t2spir" / name).is_file():
        return d / "chaos_mr_t2spir" / name
    import pooch

    return Path(
        pooch.retrieve(url, known_hash=f"sha256:{sha256}", fname=name, path=sample_cache_dir(), progressbar=False)
    )


def chaos_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """CHAOS patient 1 as ``[(image, kwargs, "image"), (labels, kwargs, "labels")]``.

    Image: ``(z, y, x)`` = (37, 256, 256) float32, layer ``image_1``; the manual
    labels: uint8 0..4, a hidden layer ``image_1 ground truth`` (the reference to
    compare with), ``metadata["class_names"]`` = :data:`CHAOS_CLASS_NAMES`; ``scale`` = (7.7, 1.25,
    1.25) mm; both carry the NIfTI affine in ``metadata``. When a napari viewer is
    open, the plugin's display rules are installed on it first, so the sample shows
    radiologically (anterior up, patient right on screen left) with the organs in
    the bundled model's colours.
    """
    from .io.nifti import read_nifti

    img = read_nifti(sample_file("image_1.nii.gz"), as_labels=False)
    lab = read_nifti(sample_file("label_1.nii.gz"), as_labels=True)
    lab = lab.with_data(lab.data, class_names=dict(CHAOS_CLASS_NAMES))
    ikw, lkw = img.layer_kwargs(), lab.layer_kwargs()
    ikw.update(name="image_1", colormap="gray")
    # the manual labels are the reference to compare with, not something to edit: a
    # hidden layer named as such (the Segment tool makes the editable layer)
    lkw.update(name=f"image_1 {REFERENCE_SUFFIX}", visible=False)
    from ._reader import hook_current_viewer

    hook_current_viewer()  # radiological display + the model's organ colours in the viewer
    return [(img.data, ikw, "image"), (lab.data, lkw, "labels")]
