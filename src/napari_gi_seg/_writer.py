"""napari writer (npe2 command ``napari-gi-seg.write_labels``): a thin adapter.

The labels layer's ``metadata`` carries the source geometry put there by the reader
(``affine``, ``index_order``, ``spacing_mm``; see :meth:`Volume.layer_kwargs`), so the
written file lines up with the image it was drawn on. Format by extension:
``.nii``/``.nii.gz`` (source affine), ``.tif``/``.tiff`` (ImageJ, spacing), ``.csv``
(UW-Madison RLE; needs the case-day in the metadata), ``.dcm`` (DICOM RT Structure
Set) and ``.seg.dcm`` (DICOM-SEG) when the image came from a DICOM series: the layer
metadata's random token finds the series' UIDs and positions kept in this process
(never in the metadata itself); ROI colours come from the model named by
``metadata["model_key"]`` and ``ROIGenerationAlgorithm`` is SEMIAUTOMATIC (the labels
went through the clinician's hands). See :func:`napari_gi_seg.io.write_labels`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer: write a ``(z, y, x)`` labels layer to ``path``.

    ``meta`` is the layer's attribute dict (``metadata``, ``scale``, ``name``...).
    Returns ``[path]``.

    Raises
    ------
    ValueError
        Unsupported extension, a labels layer that is not 3D, non-integer labels, a
        CSV for a layer without a UW-Madison case-day, or a ``.dcm`` for labels whose
        image did not come from a DICOM series (read in this napari session).
    """
    from .io import label_suffix, volume_from_layer_metadata
    from .io import write_labels as _write

    arr = np.asarray(data)
    if arr.ndim != 3:
        raise InputError(f"{path}: only 3D (z, y, x) labels layers can be saved, got shape {arr.shape}")
    if label_suffix(path) is None:
        path = f"{path}.nii.gz"
    md = dict(meta.get("metadata") or {})
    like = volume_from_layer_metadata(arr, md, meta.get("scale"))
    kw = {}
    if str(path).lower().endswith(".dcm"):
        kw = {
            "colours": _model_colours(md.get("model_key")),
            "model_key": md.get("model_key"),
            "generation": "SEMIAUTOMATIC",
        }
    written = _write(path, arr, like, md.get("class_names"), **kw)
    return [str(written)]


def _model_colours(model_key) -> dict[int, str] | None:
    """``{label value: "#rrggbb"}`` of the registered model ``model_key``, else ``None``."""
    if not model_key:
        return None
    try:
        from .models import registry

        spec = registry.get_entry(str(model_key)).spec()
    except (LookupError, ValueError, OSError):
        return None
    return {c.index: c.colour for c in spec.classes}
