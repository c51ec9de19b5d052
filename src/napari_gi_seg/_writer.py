"""napari writer (npe2 command ``napari-gi-seg.write_labels``): a thin adapter.

The labels layer's ``metadata`` carries the source geometry put there by the reader
(``affine``, ``index_order``, ``spacing_mm``; see :meth:`Volume.layer_kwargs`), so the
written file lines up with the image it was drawn on. Format by extension:
``.nii``/``.nii.gz`` (source affine), ``.tif``/``.tiff`` (ImageJ, spacing), ``.csv``
(UW-Madison RLE; needs the case-day in the metadata). See
:func:`napari_gi_seg.io.write_labels`.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer: write a ``(z, y, x)`` labels layer to ``path``.

    ``meta`` is the layer's attribute dict (``metadata``, ``scale``, ``name``...).
    Returns ``[path]``.

    Raises
    ------
    ValueError
        Unsupported extension, a labels layer that is not 3D, non-integer labels or a
        CSV for a layer without a UW-Madison case-day.
    """
    from .io import label_suffix, volume_from_layer_metadata
    from .io import write_labels as _write

    arr = np.asarray(data)
    if arr.ndim != 3:
        raise ValueError(f"{path}: only 3D (z, y, x) labels layers can be saved, got shape {arr.shape}")
    if label_suffix(path) is None:
        path = f"{path}.nii.gz"
    md = dict(meta.get("metadata") or {})
    like = volume_from_layer_metadata(arr, md, meta.get("scale"))
    written = _write(path, arr, like, md.get("class_names"))
    return [str(written)]
