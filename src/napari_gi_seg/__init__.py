"""napari-gi-seg: deep-learning segmentation of abdominal MRI in napari, with a
clinician correction loop that feeds fine-tuning."""

try:
    from importlib.metadata import version as _v

    __version__ = _v("napari-gi-seg")
except Exception:  # pragma: no cover - not installed
    __version__ = "0.0.0+unknown"
