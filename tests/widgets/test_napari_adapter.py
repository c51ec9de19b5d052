"""napari's private API is used in one adapter (``_qt/_napari_private.py``), and this
test fails when napari changes what it relies on: the proxy class's module, the proxy
a docked widget receives, and ``__wrapped__``. The ``_qt`` modules import each other
without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import napari_gi_seg._qt as qt_pkg

QT = Path(qt_pkg.__file__).parent


def test_napari_hands_docked_widgets_the_proxy_the_adapter_unwraps(make_napari_viewer, monkeypatch, qtbot):
    from napari.utils._proxies import PublicOnlyProxy as napari_proxy

    from napari_gi_seg._qt import _napari_private as adapter
    from napari_gi_seg._qt.export_widget import ExportWidget

    assert adapter.PublicOnlyProxy is napari_proxy
    received = []
    real_init = ExportWidget.__init__

    def spy(self, napari_viewer, parent=None):
        received.append(napari_viewer)
        real_init(self, napari_viewer, parent)

    monkeypatch.setattr(ExportWidget, "__init__", spy)
    viewer = make_napari_viewer()
    viewer.add_image(__import__("numpy").zeros((3, 8, 8), "float32"))
    _, w = viewer.window.add_plugin_dock_widget("napari-gi-seg", "Export training data")
    (got,) = received
    assert isinstance(got, napari_proxy) and adapter.unwrap(got) is viewer and got.__wrapped__ is viewer
    layer = got.layers[0]  # a fresh proxy per access, the same layer behind
    assert isinstance(layer, napari_proxy) and adapter.unwrap(layer) is viewer.layers[0]
    assert adapter.unwrap(w).viewer is viewer


def _imports(path: Path) -> set[str]:
    """The ``_qt`` modules ``path`` imports (module level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("napari_gi_seg._qt."):
            out.add(node.module.split(".")[2])
    return {m for m in out if (QT / f"{m}.py").is_file()}


def test_no_import_cycle_among_the_qt_modules():
    graph = {p.stem: _imports(p) - {p.stem} for p in QT.glob("*.py")}
    assert "_display" in graph["controller"] and "_display" not in graph["_context"]
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            assert state.get(n) != 1, " -> ".join([*path, m, n])
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
