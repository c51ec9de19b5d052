"""UW-Madison GI Tract: case-day folders + train.csv labels, RLE CSV writer.

The scans of the dataset are not available here (see ../shared/data/uwmgi/SOURCE.md),
so the PNG stacks below are SYNTHETIC stand-ins: 16-bit PNGs with the Kaggle file
names and geometry, whose intensities are a ramp plus the real organ masks. The
labels are the REAL ones from train.csv.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_gi_seg._reader import napari_get_reader
from napari_gi_seg._writer import write_labels as plugin_write_labels
from napari_gi_seg.io import InvalidInputError, read_image, write_labels
from napari_gi_seg.io.rle import rle_runs
from napari_gi_seg.io.uwmgi import (
    UWMGI_CLASSES,
    flatten_multilabel,
    load_train_csv,
    read_uwmgi_case_day,
    read_uwmgi_labels,
    read_uwmgi_multilabel,
)

# (case-day, (H, W), pixel spacing mm): one square and one non-square geometry.
CASE_DAYS = {"case123_day20": ((266, 266), 1.5), "case6_day0": ((310, 360), 1.5)}


def _csv_rows(train_csv: Path, case_day: str) -> list[list[str]]:
    with open(train_csv, newline="") as f:
        return [r for r in csv.reader(f) if r[0].startswith(case_day + "_slice_")]


def _write_synthetic_scans(folder: Path, masks: np.ndarray, spacing: float) -> None:
    """SYNTHETIC 16-bit scans named like Kaggle's: a ramp + 1000 x organ index."""
    folder.mkdir(parents=True)
    k, z, h, w = masks.shape
    ramp = (np.add.outer(np.arange(h), np.arange(w)) * 999 // (h + w)).astype(np.uint16)  # < 1000
    for i in range(z):
        img = ramp + 1000 * flatten_multilabel(masks[:, i : i + 1])[0].astype(np.uint16)
        Image.fromarray(img).save(folder / f"slice_{i + 1:04d}_{w}_{h}_{spacing:.2f}_{spacing:.2f}.png")


@pytest.fixture(scope="module")
def uwmgi_root(tmp_path_factory, uwmgi_csv) -> Path:
    """``<root>/train.csv`` (symlink to the real file) + ``<root>/train/caseN/caseN_dayM/scans``."""
    root = tmp_path_factory.mktemp("uwmgi_synthetic_scans")
    (root / "SYNTHETIC_SCANS.txt").write_text("The PNG scans here are synthetic stand-ins; labels are real.\n")
    (root / "train.csv").symlink_to(uwmgi_csv)
    for cd, ((h, w), sp) in CASE_DAYS.items():
        masks = read_uwmgi_multilabel(uwmgi_csv, cd, (144, h, w))
        case = cd.split("_")[0]
        _write_synthetic_scans(root / "train" / case / cd / "scans", masks, sp)
    return root


@pytest.mark.parametrize("case_day", list(CASE_DAYS))
def test_case_day_opens_as_stack_and_labels(uwmgi_root, uwmgi_csv, case_day):
    (h, w), sp = CASE_DAYS[case_day]
    folder = uwmgi_root / "train" / case_day.split("_")[0] / case_day
    reader = napari_get_reader(str(folder))
    assert reader is not None
    layers = reader(str(folder))
    assert [t for *_, t in layers] == ["image", "labels"]
    (img, ikw, _), (lab, lkw, _) = layers
    assert img.shape == lab.shape == (144, h, w)  # (z, y=H rows, x=W columns)
    assert img.dtype == np.uint16 and lab.dtype == np.uint8
    assert tuple(ikw["scale"]) == tuple(lkw["scale"]) == (3.0, sp, sp)
    assert ikw["name"] == case_day and lkw["name"] == f"{case_day} labels"
    assert lkw["metadata"]["class_names"] == {1: "large_bowel", 2: "small_bowel", 3: "stomach"}
    assert ikw["metadata"]["slice_numbers"] == list(range(1, 145))

    # Each class's voxel count equals the sum of its RLE run lengths in the raw CSV.
    masks = read_uwmgi_multilabel(uwmgi_csv, case_day, lab.shape)
    rows = _csv_rows(uwmgi_csv, case_day)
    assert len(rows) == 3 * 144
    for k, cls in enumerate(UWMGI_CLASSES):
        expected = sum(int(rle_runs(s)[1].sum()) for _, c, s in rows if c == cls)
        assert int(masks[k].sum()) == expected
    # Flattened labels: later class wins where organs overlap.
    assert np.array_equal(lab, flatten_multilabel(masks))
    assert np.array_equal(lab == 3, masks[2] == 1)
    # The synthetic image was built from the same masks: they line up voxel for voxel.
    assert np.array_equal((img // 1000).astype(np.uint8), lab)


def test_slice_spacing_can_be_overridden(uwmgi_root):
    folder = uwmgi_root / "train" / "case6" / "case6_day0"
    assert read_uwmgi_case_day(folder, slice_spacing_mm=5.0).spacing_mm == (5.0, 1.5, 1.5)
    assert read_image(folder, slice_spacing_mm=4.0)[0].spacing_mm == (4.0, 1.5, 1.5)
    vols = read_image(uwmgi_root / "train" / "case6")  # a case folder: one volume per day
    assert [v.metadata["day"] for v in vols] == [0]


def test_csv_writer_is_byte_identical_to_train_csv(uwmgi_root, uwmgi_csv, tmp_path):
    folder = uwmgi_root / "train" / "case123" / "case123_day20"
    img = read_image(folder)[0]
    masks = read_uwmgi_multilabel(uwmgi_csv, "case123_day20", img.shape)
    out = write_labels(tmp_path / "case123_day20.csv", masks, img)
    original = "id,class,segmentation\n" + "".join(",".join(r) + "\n" for r in _csv_rows(uwmgi_csv, "case123_day20"))
    assert out.read_text() == original


def test_plugin_writer_csv_round_trip(uwmgi_root, tmp_path):
    folder = uwmgi_root / "train" / "case6" / "case6_day0"
    (img, ikw, _), (lab, lkw, _) = napari_get_reader(str(folder))(str(folder))
    edited = lab.copy()
    edited[70, 100:110, 200:220] = 3
    out = tmp_path / "edited.csv"
    assert plugin_write_labels(str(out), edited, lkw) == [str(out)]
    table = load_train_csv(out)
    assert table.case_days == ["case6_day0"] and len(table.rles["case6_day0"]) == 144
    back = read_uwmgi_labels(out, "case6_day0", edited.shape)
    assert np.array_equal(back, edited)
    # A single-case-day CSV also opens on its own (geometry inferred from the RLE).
    ((data, kw, kind),) = napari_get_reader(str(out))(str(out))
    assert kind == "labels" and np.array_equal(data, edited)
    assert kw["metadata"]["spacing_assumed"] is True


def test_overlap_policy_later_class_wins():
    m = np.zeros((3, 1, 2, 2), np.uint8)
    m[0, 0, 0, :] = 1  # large bowel
    m[1, 0, :, 0] = 1  # small bowel overlaps large bowel at (0, 0)
    m[2, 0, 1, :] = 1  # stomach overlaps small bowel at (1, 0)
    assert flatten_multilabel(m)[0].tolist() == [[2, 1], [3, 3]]


def test_rgb_png_among_scans_is_named(tmp_path):
    scans = tmp_path / "case1_day0" / "scans"
    scans.mkdir(parents=True)
    for i in range(1, 4):
        Image.fromarray(np.zeros((20, 30), np.uint16)).save(scans / f"slice_{i:04d}_30_20_1.50_1.50.png")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(scans / "slice_0004_30_20_1.50_1.50.png")
    reader = napari_get_reader(str(tmp_path / "case1_day0"))
    assert reader is not None
    with pytest.raises(InvalidInputError, match=r"slice_0004_30_20_1\.50_1\.50\.png: expected a grayscale.*RGB"):
        reader(str(tmp_path / "case1_day0"))


def test_mixed_slice_sizes_are_refused(tmp_path):
    scans = tmp_path / "case1_day0" / "scans"
    scans.mkdir(parents=True)
    Image.fromarray(np.zeros((20, 30), np.uint16)).save(scans / "slice_0001_30_20_1.50_1.50.png")
    Image.fromarray(np.zeros((25, 30), np.uint16)).save(scans / "slice_0002_30_25_1.50_1.50.png")
    with pytest.raises(InvalidInputError, match=r"scans: slices differ in size.*30x20.*30x25"):
        read_image(tmp_path / "case1_day0")


def test_png_not_matching_its_name_is_refused(tmp_path):
    scans = tmp_path / "case1_day0" / "scans"
    scans.mkdir(parents=True)
    Image.fromarray(np.zeros((30, 20), np.uint16)).save(scans / "slice_0001_30_20_1.50_1.50.png")
    with pytest.raises(InvalidInputError, match=r"slice_0001_30_20_1\.50_1\.50\.png: pixel size 20x30"):
        read_image(tmp_path / "case1_day0")


def test_whole_train_csv_alone_asks_for_a_case_day(uwmgi_csv):
    reader = napari_get_reader(str(uwmgi_csv))
    assert reader is not None
    with pytest.raises(InvalidInputError, match=r"train\.csv: holds 274 case-days"):
        reader(str(uwmgi_csv))
    # ... and labels of a case-day the CSV does not hold are a clear error.
    with pytest.raises(InvalidInputError, match="no rows for case-day 'case999_day1'"):
        read_uwmgi_labels(uwmgi_csv, "case999_day1", (1, 266, 266))


def test_train_csv_is_cached(uwmgi_csv):
    assert load_train_csv(uwmgi_csv) is load_train_csv(uwmgi_csv)
