"""napari reader hook (npe2 command ``napari-gi-seg.get_reader``): a thin adapter.

All reading is done by :mod:`napari_gi_seg.io`; this module only decides whether a
path is ours and turns :class:`~napari_gi_seg.io.volume.Volume` objects into layer
data tuples ``(data, kwargs, layer_type)``:

* images -> ``"image"`` with ``scale`` = spacing (mm, z, y, x) and ``metadata`` holding
  the source ``affine``, ``index_order`` and ``spacing_mm`` (:meth:`Volume.layer_kwargs`)
  so writers can put labels back in the source geometry;
* label files (NIfTI detected by name/content, TIFF with a label-like name, UW-Madison
  CSV) -> ``"labels"``;
* a UW-Madison case-day folder -> its image and, when a ``train.csv`` is found up the
  tree, its labels;
* a DICOM RT Structure Set or Segmentation file -> ``"labels"`` on the grid of the
  series it references (found in the same folder or its parent; its geometry and
  DICOM reference come along, so Save Layer can write an RTSTRUCT again), ROI /
  segment names as ``metadata["class_names"]``.

The manifest's ``filename_patterns`` list only the suffixes read here; folders
(DICOM series, UW-Madison case-days) come through ``accepts_directories``, so a
DICOM series whose files have no suffix is opened as its folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .io import InvalidInputError, is_supported
from .io.volume import Volume

LayerData = tuple[Any, dict[str, Any], str]


def napari_get_reader(path):
    """Return :func:`read_layers` bound to ``path`` if every path is one we read, else
    ``None``. Cheap and never raises (napari tries every plugin with every path)."""
    try:
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        if not paths or not all(is_supported(p) for p in paths):
            return None
    except Exception:  # noqa: BLE001 - a reader hook must never raise
        return None
    return lambda _path=paths: _read_and_hook(_path)


def _read_and_hook(paths) -> list[LayerData]:
    """:func:`read_layers`, then the plugin's display rules on the viewer being
    opened into (a reader gets no viewer: ``napari.current_viewer()``), so the scan
    is shown radiologically and opened labels take the case's colours."""
    layers = read_layers(paths)
    hook_current_viewer()
    return layers


def hook_current_viewer() -> None:
    """Install :func:`napari_gi_seg._qt._display.install_viewer_hooks` on the current
    napari viewer, if napari with Qt is there (a no-op in headless use)."""
    try:
        from ._qt._display import hook_current_viewer as _hook
    except ImportError:  # no Qt binding: nothing to display
        return
    _hook()


def _labels_tuple(vol: Volume, name: str | None = None) -> LayerData:
    kw = vol.layer_kwargs()
    if name:
        kw["name"] = name
    return (vol.data, kw, "labels")


def _image_tuple(vol: Volume, name: str | None = None) -> LayerData:
    kw = vol.layer_kwargs()
    if name:
        kw["name"] = name
    return (vol.data, kw, "image")


def read_layers(path) -> list[LayerData]:
    """Read one path or a list of paths into napari layer data tuples.

    Raises
    ------
    InvalidInputError
        A broken input, with the file name and the problem (napari shows the message;
        the viewer stays alive).
    """
    from . import io
    from .io import uwmgi
    from .io.nifti import looks_like_labels

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    out: list[LayerData] = []
    for p in map(Path, paths):
        kind = io._kind(p)
        if kind is None:
            raise InvalidInputError(p, "not a file or folder this plugin reads")
        if kind == "csv":
            out.append(_labels_tuple(io.read_labels(p), f"{p.stem} labels"))
            continue
        if kind in ("rtstruct", "seg"):
            out.append(
                _labels_tuple(io.read_labels(p), f"{p.name.split('.')[0]} {'ROIs' if kind == 'rtstruct' else 'SEG'}")
            )
            continue
        try:
            vols = io.read_image(p)
        except MemoryError as e:  # a reader guard missed it: still a message, never a dead viewer
            raise InvalidInputError(p, "not enough memory to read this volume") from e
        for v in vols:
            if kind == "uwmgi":
                cd = uwmgi.volume_case_day(v) or v.name
                out.append(_image_tuple(v, cd))
                csv_path = uwmgi.find_train_csv(p)
                if csv_path is not None and cd in uwmgi.load_train_csv(csv_path).rles:
                    out.append(_labels_tuple(io.read_labels(csv_path, like=v), f"{cd} labels"))
            elif kind == "dicom":
                md = v.metadata
                what = md.get("series_description") or md.get("modality") or "series"
                uid = md.get("series_instance_uid_hash", "")  # a NIfTI beside the series has none
                name = f"{v.name} {what}" + (f" [{uid[:6]}]" if len(vols) > 1 and uid else "")
                out.append(_image_tuple(v, name))
            elif v.metadata.get("is_labels") or (
                kind == "tiff" and looks_like_labels(p, v.data) and v.data.dtype.kind in "iu"
            ):
                if not v.metadata.get("is_labels"):
                    v = io.read_labels(p)
                out.append(_labels_tuple(v))
            else:
                out.append(_image_tuple(v))
    return out
