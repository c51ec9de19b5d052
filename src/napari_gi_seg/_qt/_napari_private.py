"""The one place the plugin touches napari's private API (an adapter).

napari hands a widget docked from the Plugins menu (``add_plugin_dock_widget``,
``napari -w``) a ``PublicOnlyProxy`` of the viewer (``napari.utils._proxies``), whose
layers are proxies made afresh on every access. The case state is keyed by the real
layers (weak references), so everything is unwrapped first (:func:`unwrap`).

``tests/widgets/test_napari_adapter.py`` fails when napari moves or changes this: the
import below, the proxy type napari hands a docked widget, ``__wrapped__``.
"""

from __future__ import annotations

from napari.utils._proxies import PublicOnlyProxy

__all__ = ["PublicOnlyProxy", "unwrap"]


def unwrap(obj):
    """The real napari object behind napari's ``PublicOnlyProxy`` (the viewer and
    layers a menu-docked widget receives); other objects unchanged.

    Parameters
    ----------
    obj
        A viewer, layer or anything else.

    Returns
    -------
    The wrapped object (recursively), or ``obj``.
    """
    while isinstance(obj, PublicOnlyProxy):
        obj = obj.__wrapped__
    return obj
