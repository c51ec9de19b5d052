"""Screenshots of the Prompt tab (run under Xvfb, e.g.
``xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/images/make_prompt_screenshots.py``).

- ``prompt.png`` (1366 x 768): the CHAOS sample opened through the plugin's reader, the
  GI Seg dock from the Plugins menu route (``add_plugin_dock_widget``), Prompt tab; a
  box and two clicks on the right kidney (placed where the protocol's simulated user
  would put them, from the manual labels), the object propagated through the stack.
- ``prompt_uwmgi_stomach.png`` (napari's default window size): a real UW-Madison slice
  (``uwmgi/scans_sample``), a structure the bundled semantic model does not know: the
  stomach outlined with a box and clicks, committed as a new structure.

Real widgets, real layers' events, the bundled promptable model (or the random walker
when none is installed); a throw-away ``NAPARI_GI_SEG_HOME``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _settle(seconds: float = 0.5) -> None:
    from qtpy.QtWidgets import QApplication

    t0 = time.time()
    while time.time() - t0 < seconds:
        QApplication.instance().processEvents()
        time.sleep(0.02)


def _wait(w, timeout_s: float = 300) -> None:
    from qtpy.QtWidgets import QApplication

    t0 = time.time()
    while w.is_running:
        QApplication.instance().processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout_s:
            raise TimeoutError("waited too long")
    _settle(0.3)


def _prompt(w, z, truth2d, clicks: int) -> None:
    import numpy as np

    from napari_gi_seg.interactive import next_click

    ys, xs = np.nonzero(truth2d)
    y0, x0, y1, x1 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
    w.set_tool("box")
    w.layer("box").add_rectangles(np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], float))
    _wait(w)
    w.set_tool("point")
    for _ in range(clicks):
        m = np.asarray(w.layer("preview").data[z]).astype(bool)
        c = next_click(m, truth2d)
        if c is None:
            break
        if c[2] != w.positive:
            w.toggle_sign()
        w.layer("point").add(np.array([z, c[0], c[1]], float))
        _wait(w)


def main() -> int:
    os.environ["NAPARI_GI_SEG_HOME"] = tempfile.mkdtemp(prefix="gi-seg-prompt-shots-")
    os.environ["NAPARI_GI_SEG_RESTORE"] = "no"
    import napari
    import numpy as np

    from napari_gi_seg._qt import _context as C
    from napari_gi_seg.io import read_labels
    from napari_gi_seg.io.uwmgi import UWMGI_CLASSES, read_uwmgi_multilabel
    from napari_gi_seg.paths import data_dir

    data = data_dir()
    # 1. CHAOS sample, 1366 x 768, the right kidney through the stack
    img_path = data / "chaos_mr_t2spir" / "image_1.nii.gz"
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    viewer.open(str(img_path), plugin="napari-gi-seg")
    _, dock = viewer.window.add_plugin_dock_widget("napari-gi-seg", "GI Seg (all tools)")
    dock = C.unwrap(dock)
    dock.show_tab("Prompt")
    w = dock.prompt
    image = viewer.layers[0]
    truth = read_labels(data / "chaos_mr_t2spir" / "label_1.nii.gz").data == 2
    z = int(np.argmax(truth.sum((1, 2))))
    C.set_current_slice(viewer, image, z)
    w.add_structure("right_kidney_prompted")
    _prompt(w, z, truth[z], clicks=2)
    w.propagate()
    _wait(w)
    viewer.layers.selection.active = w.layer("point")
    _settle(1.0)
    viewer.screenshot(str(HERE / "prompt.png"), canvas_only=False, flash=False)
    print(
        "wrote prompt.png", viewer.window._qt_window.width(), viewer.window._qt_window.height(), w.status_label.text()
    )
    viewer.close()

    # 2. a real UW-Madison slice, napari's default size: the stomach, committed
    folder = data / "uwmgi" / "scans_sample" / "train" / "case85" / "case85_day0"
    viewer = napari.Viewer(show=True)
    viewer.open(str(folder), plugin="napari-gi-seg")
    _, w = viewer.window.add_plugin_dock_widget("napari-gi-seg", "Prompt (box, clicks, scribbles)")
    w = C.unwrap(w)
    image = viewer.layers[0]
    number = int(next((folder / "scans").glob("slice_*.png")).name.split("_")[1])
    masks = read_uwmgi_multilabel(data / "uwmgi" / "train.csv", folder.name, (1, *image.data.shape[1:]), [number])
    stomach = masks[UWMGI_CLASSES.index("stomach"), 0] > 0
    w.add_structure("stomach")
    _prompt(w, 0, stomach, clicks=3)
    w.commit()
    for lyr in viewer.layers:  # the manual labels the reader opened beside the scan: hidden
        if lyr.name.endswith(" labels"):
            lyr.visible = False
    _settle(1.0)
    viewer.screenshot(str(HERE / "prompt_uwmgi_stomach.png"), canvas_only=False, flash=False)
    print(
        "wrote prompt_uwmgi_stomach.png",
        viewer.window._qt_window.width(),
        viewer.window._qt_window.height(),
        w.status_label.text(),
    )
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
