"""Sample data: the npe2 sample command gives CHAOS patient 1 as image + labels."""

from __future__ import annotations

import hashlib

import numpy as np

from napari_gi_seg import _sample_data


def test_sample_command_yields_image_and_labels(npe2_pm):
    gen = next(s for s in npe2_pm.get_manifest("napari-gi-seg").contributions.sample_data if s.key == "chaos_t2spir")
    layers = gen.open()
    assert [t for *_, t in layers] == ["image", "labels"]
    (img, ikw, _), (lab, lkw, _) = layers
    assert img.shape == lab.shape == (37, 256, 256)
    assert np.allclose(ikw["scale"], (7.7, 1.25, 1.25), atol=1e-5) and np.allclose(lkw["scale"], ikw["scale"])
    assert lkw["name"] == "image_1 ground truth" and lkw["visible"] is False  # the reference, hidden
    assert lkw["metadata"]["class_names"] == {1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"}
    assert set(np.unique(lab).tolist()) == {0, 1, 2, 3, 4}
    # SOURCE.md voxel counts for patient 1: liver, right kidney, left kidney, spleen.
    assert [int((lab == v).sum()) for v in (1, 2, 3, 4)] == [153742, 18074, 17961, 10886]


def test_pinned_sha256_match_the_shared_files(data_dir):
    for name, (url, sha) in _sample_data.SAMPLE_FILES.items():
        assert url.startswith("https://github.com/shenqq377/Q-Net/raw/70a828d8cec11425785230a98ec965231b5fdd4d/")
        assert hashlib.sha256((data_dir / "chaos_mr_t2spir" / name).read_bytes()).hexdigest() == sha


def test_without_local_data_it_downloads_with_pooch(monkeypatch, tmp_path, data_dir, _isolated_user_dir):
    """No network in tests: pooch.retrieve is replaced by a stand-in that checks the
    arguments and copies the shared file, as a successful download would."""
    import pooch

    monkeypatch.setenv("NAPARI_GI_SEG_DATA", str(tmp_path / "no-data-here"))
    calls = []

    def fake_retrieve(url, known_hash, fname, path, progressbar):
        calls.append((url, known_hash, fname, path))
        dst = path / fname
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes((data_dir / "chaos_mr_t2spir" / fname).read_bytes())
        return str(dst)

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    layers = _sample_data.chaos_sample()
    assert len(layers) == 2 and layers[1][0].max() == 4
    assert [c[2] for c in calls] == ["image_1.nii.gz", "label_1.nii.gz"]
    for url, known_hash, fname, path in calls:
        assert url.endswith("/data/CHAOST2/chaos_MR_T2_normalized/" + fname)
        assert known_hash == "sha256:" + _sample_data.SAMPLE_FILES[fname][1]
        assert path == _isolated_user_dir / "cache" / "sample-data"  # under user_dir(), not the real home
