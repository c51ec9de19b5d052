"""The Qt binding must not corrupt Python's reference counts.

PySide6 6.12.0 on Python 3.11 drops a reference to ``None`` on every call of a
void Qt method; after a few thousand calls (minutes of normal napari use) the
interpreter aborts with ``Fatal Python error: none_dealloc``. This test fails on
such a binding so the environment gets fixed (another PySide6 version, PyQt, or
Python >= 3.12), instead of napari crashing in a clinician's hands.
"""

from __future__ import annotations

from widget_helpers import qt_binding_leaks_none


def test_qt_binding_keeps_none_refcount(qapp):
    import qtpy

    assert not qt_binding_leaks_none(), (
        f"{qtpy.API_NAME} {qtpy.QT_VERSION} drops references to None on every void call: "
        "napari will abort after a few thousand calls on this Python; use another binding/version"
    )
