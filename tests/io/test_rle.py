"""RLE codec: UW-Madison (Kaggle) convention, byte-identical on the whole train.csv."""

from __future__ import annotations

import csv
from collections import defaultdict

import numpy as np
import pytest

from napari_gi_seg.io.rle import (
    UWMGI_SHAPES,
    case_day_of,
    infer_mask_shape,
    parse_scan_name,
    parse_uwmgi_id,
    rle_decode,
    rle_encode,
    rle_runs,
)


def _kaggle_reference_encode(img: np.ndarray) -> str:
    """The encoder of the public Kaggle notebooks, written out as the reference."""
    pixels = img.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def test_convention_row_major_one_based():
    m = np.zeros((3, 4), bool)
    m[0, 1:3] = True  # flat 1,2 -> 1-based start 2, length 2
    m[1, 3] = True  # flat 7 -> start 8 ...
    m[2, 0] = True  # flat 8 -> touches flat 7: one run of length 2 across the row end
    assert rle_encode(m) == "2 2 8 2"
    assert np.array_equal(rle_decode("2 2 8 2", (3, 4)), m.astype(np.uint8))
    assert rle_encode(np.zeros((5, 5))) == ""
    assert rle_decode("", (2, 3)).shape == (2, 3) and rle_decode("", (2, 3)).dtype == np.uint8
    assert rle_encode(np.ones((2, 2))) == "1 4"


def test_matches_kaggle_reference_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = rng.random((37, 53)) < rng.uniform(0.01, 0.9)
        s = rle_encode(m)
        assert s == _kaggle_reference_encode(m.astype(np.uint8))
        assert np.array_equal(rle_decode(s, m.shape), m.astype(np.uint8))


@pytest.mark.parametrize("bad", ["1", "0 3", "2 0", "a 3", "1 2 3"])
def test_malformed_rle_is_an_error(bad):
    with pytest.raises(ValueError):
        rle_decode(bad, (4, 4))


def test_run_beyond_the_mask_is_an_error():
    with pytest.raises(ValueError, match="beyond the 4x4"):
        rle_decode("10 8", (4, 4))


def test_parse_ids_and_scan_names():
    assert parse_uwmgi_id("case123_day20_slice_0065") == (123, 20, 65)
    assert case_day_of("case2_day1_slice_0124") == "case2_day1"
    with pytest.raises(ValueError):
        parse_uwmgi_id("case123_slice_0065")
    s = parse_scan_name("some/dir/slice_0001_360_310_1.50_1.50.png")
    assert s == (1, 360, 310, 1.5, 1.5)
    assert (s.height, s.width) == (310, 360)
    assert parse_scan_name("slice_0144_276_276_1.63_1.63.png").spacing_x_mm == pytest.approx(1.63)
    with pytest.raises(ValueError):
        parse_scan_name("slice_0001_360_310.png")


def test_whole_train_csv_round_trips_byte_identically(uwmgi_csv):
    """Decode and re-encode all 115,488 rows. The (H, W) of each case-day is not in
    train.csv; it is inferred as the one known Kaggle geometry in which every run
    fits and no run wraps across a row end (a wrong width would shear the organs and
    wrap runs). Exactly one geometry must qualify for every case-day."""
    with open(uwmgi_csv, newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["id", "class", "segmentation"]
        rows = list(reader)
    assert len(rows) == 115_488
    by_cd = defaultdict(list)
    for sid, _, seg in rows:
        by_cd[case_day_of(sid)].append(seg)
    assert len(by_cd) == 274
    shapes = {cd: infer_mask_shape(segs) for cd, segs in by_cd.items()}
    assert all(s is not None for s in shapes.values()), [cd for cd, s in shapes.items() if s is None]
    # Every geometry of the set occurs, and the common one (266 x 266) dominates.
    counts = {g: sum(1 for s in shapes.values() if s == g) for g in UWMGI_SHAPES}
    assert all(counts.values()) and max(counts, key=counts.get) == (266, 266)

    nonempty = mismatched = 0
    for sid, _, seg in rows:
        h, w = shapes[case_day_of(sid)]
        mask = rle_decode(seg, (h, w))
        nonempty += bool(seg)
        assert mask.sum() == (rle_runs(seg)[1].sum() if seg else 0)
        mismatched += rle_encode(mask) != seg
    assert mismatched == 0
    assert nonempty == 33_913  # SOURCE.md: 33,913 non-empty segmentations


def test_infer_mask_shape_rejects_a_wrong_width():
    m = np.zeros((266, 266), bool)
    m[100:140, 30:90] = True
    rle = rle_encode(m)
    assert infer_mask_shape([rle]) == (266, 266)
    # Encoded with width 360 the same organ cannot be read as 266 wide without wrapping.
    m2 = np.zeros((310, 360), bool)
    m2[100:140, 250:340] = True
    assert infer_mask_shape([rle_encode(m2)]) == (310, 360)
    assert infer_mask_shape(["", ""]) is None
