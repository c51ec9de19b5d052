"""Fixtures for the training / fine-tuning / evaluation tests.

* ``chaos3`` (three real CHAOS patients) comes from ``tests/conftest.py``;
* the tiny model (``tiny_model``, ``tiny_entry``) comes from ``tests/conftest.py``;
* ``tiny_train_args``: the ``napari-gi-seg train`` arguments of a short CPU run;
* ``uwmgi_tree``: a stand-in UW-Madison Kaggle tree: REAL ``train.csv`` rows of three
  case-days (two patients + the faulty case7_day0) with synthetic 16-bit PNG scans
  whose bright regions are the real masks (marked synthetic; no scans exist here).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

#: case-day -> slice numbers that get stand-in PNG scans
UWMGI_SLICES = {"case123_day20": range(60, 72), "case2_day1": range(48, 58), "case7_day0": range(60, 64)}
TINY = dict(size=64, epochs=1, batch_size=4, max_steps_per_epoch=1, augment=False, arch="Unet", encoder="mobilenet_v2")


@pytest.fixture
def tiny_train_args():
    """Factory of the ``napari-gi-seg train`` arguments of a short CPU run: 64 px,
    2 epochs of at most 2 steps, one patient in three held out for validation.

    Returns
    -------
    callable
        ``make(dataset, name, batch_size) -> list[str]``: the arguments from ``train``
        on, for ``dataset`` (a folder), registering the model as ``name``.
    """

    def make(dataset: Path, name: str, batch_size: int) -> list[str]:
        return [
            "train",
            str(dataset),
            "--name",
            name,
            "--size",
            "64",
            "--epochs",
            "2",
            "--max-steps-per-epoch",
            "2",
            "--batch-size",
            str(batch_size),
            "--val-fraction",
            "0.34",
            "--device",
            "cpu",
        ]

    return make


def _write_png16(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(arr.astype(np.uint16)).save(path)


@pytest.fixture(scope="session")
def uwmgi_tree(uwmgi_csv, tmp_path_factory) -> Path:
    from napari_gi_seg.io.uwmgi import UWMGI_CLASSES, load_train_csv, read_uwmgi_multilabel

    root = tmp_path_factory.mktemp("uwmgi")
    table = load_train_csv(uwmgi_csv)
    rows = []
    with open(uwmgi_csv, newline="") as f:
        r = csv.reader(f)
        header = next(r)
        for row in r:
            if row[0].rsplit("_slice_", 1)[0] in UWMGI_SLICES:
                rows.append(row)
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    rng = np.random.default_rng(0)
    for cd, numbers in UWMGI_SLICES.items():
        h, w_ = table.mask_shape(cd) or (266, 266)
        masks = read_uwmgi_multilabel(
            table, cd, shape=(len(numbers), h, w_), slice_numbers=list(numbers), classes=UWMGI_CLASSES
        )
        scans = root / "train" / cd.split("_")[0] / cd / "scans"
        scans.mkdir(parents=True)
        for z, n in enumerate(numbers):
            img = rng.normal(3000, 300, (h, w_))  # synthetic stand-in scan
            for k in range(len(UWMGI_CLASSES)):
                img[masks[k, z] == 1] += 4000 * (k + 1)
            _write_png16(scans / f"slice_{n:04d}_{w_}_{h}_1.50_1.50.png", np.clip(img, 0, 65535))
    return root
