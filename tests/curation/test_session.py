"""Session save / find / load / delete, atomicity and autosave bookkeeping."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

import napari_gi_seg.curation.session as session_mod
from napari_gi_seg.curation.review import ReviewTracker, SliceState
from napari_gi_seg.curation.session import Autosaver, SessionStore, image_fingerprint
from napari_gi_seg.io.volume import InvalidInputError


def test_fingerprint_identifies_the_scan(chaos_image_volume):
    img = chaos_image_volume.data
    fp = image_fingerprint(img)
    assert len(fp) == 64 and fp == image_fingerprint(img.copy())
    changed = img.copy()
    changed[0, 0, 0] += 1.0  # the first voxel is always sampled
    assert image_fingerprint(changed) != fp
    assert image_fingerprint(img.astype(np.float64)) != fp
    assert image_fingerprint(img[:-1]) != fp
    small = np.zeros((3, 4, 5), np.uint8)  # small arrays are hashed completely
    s2 = small.copy()
    s2[1, 2, 3] = 1
    assert image_fingerprint(small) != image_fingerprint(s2)


def test_save_find_load_round_trip(tmp_path, chaos_image_volume, chaos_labels):
    store = SessionStore(tmp_path / "sessions")
    fp = image_fingerprint(chaos_image_volume.data)
    assert store.find(fp) is None
    pred = chaos_labels.copy()
    pred[20][pred[20] == 1] = 0
    review = ReviewTracker(chaos_labels.shape[0])
    review.mark_predicted(range(chaos_labels.shape[0]))
    review.mark_edited([20])
    review.mark_reviewed([18, 19])
    info = {"model_key": "chaos-t2spir:1", "layer": "image_1", "image_name": "DOE^JOHN"}
    path = store.save(fp, chaos_labels, pred, review, info)
    assert path.is_file() and store.find(fp) == path
    assert path.stat().st_size < chaos_labels.nbytes / 20  # compressed
    data = store.load(fp)
    assert data.labels.dtype == np.uint8 and np.array_equal(data.labels, chaos_labels)
    assert np.array_equal(data.prediction, pred)
    assert np.array_equal(data.review.states, review.states)
    assert data.review.state(20) == SliceState.EDITED
    assert data.info == {"model_key": "chaos-t2spir:1"}  # layer / folder names are never stored (privacy)
    with np.load(path, allow_pickle=False) as z:  # the stored JSON itself (the npz is compressed)
        stored = str(z["meta_json"])
    assert "DOE^JOHN" not in stored and "image_1" not in stored and "chaos-t2spir:1" in stored
    saved = dt.datetime.fromisoformat(data.saved_at)
    assert abs((dt.datetime.now(dt.timezone.utc) - saved).total_seconds()) < 60
    assert store.list() == [fp]
    # without prediction
    store.save(fp, chaos_labels, None, review, {})
    assert store.load(fp).prediction is None
    assert store.delete(fp) and store.find(fp) is None and not store.delete(fp)
    with pytest.raises(FileNotFoundError):
        store.load(fp)


def test_default_root_is_in_user_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_GI_SEG_HOME", str(tmp_path / "home"))
    store = SessionStore()
    assert store.root == tmp_path / "home" / "sessions"
    t = ReviewTracker(2)
    p = store.save("a" * 64, np.zeros((2, 4, 4), np.uint8), None, t, {})
    assert p.parent == tmp_path / "home" / "sessions" and p.is_file()


def test_failure_mid_save_keeps_previous_session(tmp_path, chaos_labels, monkeypatch):
    store = SessionStore(tmp_path)
    fp = "f" * 64
    review = ReviewTracker(chaos_labels.shape[0])
    review.mark_reviewed([5])
    store.save(fp, chaos_labels, None, review, {"model_key": "m:1"})

    real = np.savez_compressed

    def half_then_fail(f, **arrays):
        real(f, labels=arrays["labels"][:3])  # some bytes hit the disk...
        raise OSError("disk full")  # ...then the save dies

    monkeypatch.setattr(session_mod.np, "savez_compressed", half_then_fail)
    new = np.zeros_like(chaos_labels)
    with pytest.raises(OSError, match="disk full"):
        store.save(fp, new, None, ReviewTracker(chaos_labels.shape[0]), {"model_key": "m:2"})
    monkeypatch.undo()
    data = store.load(fp)
    assert np.array_equal(data.labels, chaos_labels) and data.info == {"model_key": "m:1"}
    assert data.review.reviewed_slices() == [5]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{fp}.npz"]  # no temp file left


def test_bad_input_and_corrupt_file(tmp_path):
    store = SessionStore(tmp_path)
    t = ReviewTracker(3)
    lab = np.zeros((3, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="fingerprint"):
        store.save("../../etc", lab, None, t, {})
    with pytest.raises(ValueError, match="slices"):
        store.save("b" * 64, lab[:2], None, t, {})
    with pytest.raises(ValueError, match="JSON"):
        store.save("b" * 64, lab, None, t, {"model_key": object()})
    assert store.find("b" * 64) is None
    (tmp_path / ("c" * 64 + ".npz")).write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InvalidInputError, match="c" * 64):
        store.load("c" * 64)


def test_autosaver(tmp_path):
    store = SessionStore(tmp_path)
    labels = np.zeros((3, 4, 4), np.uint8)
    review = ReviewTracker(3)
    state = {"labels": labels, "prediction": None, "review": review, "info": {"k": 1}}
    a = Autosaver(store, "d" * 64, lambda: state)
    assert not a.dirty and a.save_if_dirty() is None and store.find("d" * 64) is None
    labels[1, 2, 2] = 3
    a.mark_dirty()
    p = a.save_if_dirty()
    assert p == store.find("d" * 64) and not a.dirty
    assert store.load("d" * 64).labels[1, 2, 2] == 3
    # a failing save keeps the flag so the next tick tries again
    a.mark_dirty()
    a.get_state = lambda: (labels[:2], None, review, {})
    with pytest.raises(ValueError):
        a.save_now()
    assert a.dirty
    a.get_state = lambda: (labels, None, review)  # tuple form, info optional
    a.save_now()
    assert not a.dirty and store.load("d" * 64).info == {}


def test_archive_keeps_a_dated_restorable_copy(tmp_path, chaos_labels):
    """Answering "No" to a restore keeps the old session: a dated copy beside the main
    file, which a new save does not touch and load(path=...) reads back."""
    store = SessionStore(tmp_path / "sessions")
    fp = "abcdef12" * 8
    review = ReviewTracker(chaos_labels.shape[0])
    review.mark_reviewed([3, 4, 5, 6, 7])
    p = store.save(fp, chaos_labels, None, review, {"model_key": "m:1"})
    saved_at = dt.datetime.fromtimestamp(p.stat().st_mtime, dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    copy = store.archive(fp)
    assert copy.name == f"{fp}.{saved_at}.npz" and store.find(fp) is None and store.copies(fp) == [copy]
    store.save(fp, np.zeros_like(chaos_labels), None, ReviewTracker(chaos_labels.shape[0]))  # new work
    assert store.list() == [fp] and store.copies(fp) == [copy]
    old = store.load(fp, path=copy)
    np.testing.assert_array_equal(old.labels, chaos_labels)
    assert old.review.reviewed_slices() == [3, 4, 5, 6, 7] and old.info["model_key"] == "m:1"
    assert store.load(fp).review.reviewed_slices() == []
    assert store.archive("00000000" * 8) is None


def test_case_state_round_trip_through_a_session(tmp_path, chaos_labels):
    from napari_gi_seg.curation.session import CaseState, case_from_session, state_from_case

    n = chaos_labels.shape[0]
    review = ReviewTracker(n)
    review.mark_edited([2])
    unc = np.full(n, np.nan, np.float32)
    unc[[1, 2]] = [0.25, 0.5]
    case = CaseState(
        chaos_labels, chaos_labels, review, {0: "background", 1: "liver"}, {1: "#ff0000"}, "m:2", "sigmoid", unc
    )
    state = state_from_case(case)
    assert state["info"]["uncertainty"][:3] == [None, 0.25, 0.5] and state["info"]["class_names"] == {
        "0": "background",
        "1": "liver",
    }
    store = SessionStore(tmp_path)
    store.save("abcdef12" * 8, state["labels"], state["prediction"], state["review"], state["info"])
    back = case_from_session(store.load("abcdef12" * 8))
    assert back.class_names == case.class_names and back.colours == case.colours
    assert (back.model_key, back.activation) == ("m:2", "sigmoid") and back.review.states[2] == SliceState.EDITED
    np.testing.assert_array_equal(back.uncertainty, unc)
    np.testing.assert_array_equal(back.labels, chaos_labels)
