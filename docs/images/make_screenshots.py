"""Regenerate the user-guide screenshots (run under Xvfb, e.g.
``xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/images/make_screenshots.py``).

The pictures show the route a user takes: the sample through File > Open Sample,
the tools through Plugins > GI Seg > GI Seg (all tools) (napari's
``add_plugin_dock_widget``, the same call the menu makes), in a 1366 x 768 window.

Uses the default model when it is installed (``--model`` to choose), the CHAOS
sample, and a throw-away ``NAPARI_GI_SEG_HOME`` so nothing is written to the user
folder. Every picture is of the real widgets doing real work.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _wait(cond, timeout_s: float) -> None:
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    t0 = time.time()
    while not cond():
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout_s:
            raise TimeoutError("waited too long")


def _settle(seconds: float = 0.5) -> None:
    from qtpy.QtWidgets import QApplication

    t0 = time.time()
    while time.time() - t0 < seconds:
        QApplication.instance().processEvents()
        time.sleep(0.02)


def quick_model(steps: int, size: int = 96) -> str:
    """Register ``quick-chaos:1``: a small Unet fitted for ``steps`` steps on CHAOS
    patients 2 and 3 (not the sample patient), for screenshots when the default
    model is not installed. Returns its key."""
    import numpy as np
    import torch

    from napari_gi_seg.engine.preprocess import context_batch, normalise_intensity, resize_images, resize_labels
    from napari_gi_seg.io.nifti import read_nifti
    from napari_gi_seg.models.network import build_network
    from napari_gi_seg.models.registry import register_model
    from napari_gi_seg.models.spec import ModelSpec
    from napari_gi_seg.paths import data_dir
    from napari_gi_seg.training.trainer import segmentation_loss

    names = ["liver", "right_kidney", "left_kidney", "spleen"]
    spec = ModelSpec(
        name="quick-chaos",
        encoder="mobilenet_v2",
        input_size=(size, size),
        classes=[{"index": i + 1, "name": n} for i, n in enumerate(names)],
        description=f"screenshot model: {steps} steps on CHAOS patients 2 and 3",
    )
    torch.manual_seed(0)
    net = build_network(spec)
    xs, ys = [], []
    for pid in (2, 3):
        img = read_nifti(data_dir() / "chaos_mr_t2spir" / f"image_{pid}.nii.gz", as_labels=False)
        lab = read_nifti(data_dir() / "chaos_mr_t2spir" / f"label_{pid}.nii.gz", as_labels=True)
        norm = normalise_intensity(img.data, spec.normalisation, spec.percentiles)
        zs = np.arange(img.shape[0])
        xs.append(resize_images(torch.from_numpy(context_batch(norm, zs, spec.context_offsets)), spec.input_size))
        ys.append(resize_labels(torch.from_numpy(lab.data.astype(np.int64)), spec.input_size))
    x, y = torch.cat(xs), torch.cat(ys)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    net.train()
    for i in range(steps):
        idx = torch.randint(0, len(x), (8,))
        xb = x[idx]
        if i % 2:
            xb = xb * (0.8 + 0.4 * torch.rand(1))
        loss = segmentation_loss(net(xb), y[idx], multilabel=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return register_model(spec, model=net).key


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument(
        "--finetune-args",
        default="--max-steps-per-epoch 4 --batch-size 4",
        help="extra arguments of the fine-tune run shown in finetune.png",
    )
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument(
        "--quick-model-steps",
        type=int,
        default=0,
        help="when the model is not installed: fit a small screenshot model for this many steps",
    )
    args = ap.parse_args(argv)
    out = Path(args.out)
    work = Path(tempfile.mkdtemp(prefix="gi-seg-shots-"))
    os.environ["NAPARI_GI_SEG_HOME"] = str(work / "home")  # never the user folder
    os.environ["NAPARI_GI_SEG_RESTORE"] = "no"

    import numpy as np

    from napari_gi_seg._qt import _context as C
    from napari_gi_seg._qt.demo import open_demo_viewer
    from napari_gi_seg.models.registry import ModelNotFoundError, get_entry

    try:
        get_entry(args.model)
    except ModelNotFoundError:
        if not args.quick_model_steps:
            raise
        args.model = quick_model(args.quick_model_steps)
        print("registered", args.model)

    viewer, w = open_demo_viewer(model=args.model, device="cpu", start=False, show=True)
    qt_win = viewer.window._qt_window
    qt_win.resize(1366, 768)
    dock = w["GI Seg"]
    seg, cor, exp, ft = (w[k] for k in ("Segment", "Correct and review", "Export training data", "Fine-tune"))

    def shot(name: str, tab: str) -> None:
        dock.show_tab(tab)
        _settle(0.6)
        viewer.screenshot(str(out / name), canvas_only=False, flash=False)
        print("wrote", out / name, qt_win.width(), "x", qt_win.height())

    # 1. segmenting: take the picture while the worker is filling in slices
    seg.batch_spin.setValue(4)
    seg.run()
    ctx = seg.context
    _wait(lambda: ctx.tracker.counts()["predicted"] >= 8, 600)
    img = viewer.layers[0]
    liver = np.asarray(viewer.layers[1].data == 1).reshape(img.data.shape[0], -1).sum(1)
    z_best = int(np.argmax(liver))
    shot("segment_running.png", "Segment")
    _wait(lambda: not seg.is_running, 900)
    _settle(0.5)
    assert seg.status_label.text().startswith("Done:"), seg.status_label.text()
    C.set_current_slice(viewer, ctx.labels_layer, z_best)
    viewer.layers.selection.active = ctx.labels_layer
    shot("overview.png", "Segment")

    # 2. correct and review: paint a fix with the brush, review a few slices
    cor.go_to(z_best - 3)
    for _ in range(4):
        cor.mark_reviewed_and_next()
    lab = ctx.labels_layer
    lab.mode = "paint"
    lab.brush_size = 6
    for x in range(60, 70, 2):
        lab.paint((cor.current_z(), 150, x), 4)
    shot("correct.png", "Correct")

    # 3. export the reviewed slices
    ds = work / "Dataset501_Corrections"
    exp.folder_edit.setText(str(ds))
    exp._update_summary()
    exp.export()
    shot("export.png", "Export")

    # 4. fine-tune on the export (a short run), which selects the new model in Segment
    ft.refresh_models()
    ft.folder_edit.setText(str(ds))
    ft.epochs_spin.setValue(args.epochs)
    ft.device_combo.setCurrentText("cpu")
    ft.extra_args = args.finetune_args.split()
    ft.start()
    _wait(lambda: not ft.is_running, 1800)
    shot("finetune.png", "Fine-tune")
    shot("segment_new_model.png", "Segment")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
