"""Nothing leaked: keyed case ids, sessions without names, and no local absolute path
in anything written for others (specs, model cards, run configs, evaluation reports,
exported datasets)."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest
from fault_helpers import CHAOS_CLASSES, PRIVATE_NAMES

from napari_gi_seg.paths import installation_secret, public_path, user_dir

PRIVATE = "Zzdoe_Janetest_MRN7734921"


def test_installation_secret_is_private_and_stable():
    key = installation_secret()
    p = user_dir() / "installation.key"
    assert len(key) == 32 and p.read_bytes() == key and installation_secret() == key
    assert stat.S_IMODE(p.stat().st_mode) == 0o600


def test_case_ids_are_keyed_not_a_plain_hash(tmp_path, chaos_volume, chaos_labels, monkeypatch):
    from napari_gi_seg.curation.export import export_case
    from napari_gi_seg.io.volume import Volume

    mrn = "123456"  # a 6-digit MRN as the scan's folder name
    img = Volume(
        chaos_volume.data, chaos_volume.spacing_mm, chaos_volume.affine, metadata={"source_path": f"/pacs/{mrn}"}
    )
    ds = export_case(tmp_path / "ds", img, chaos_labels, [10], CHAOS_CLASSES)
    meta = json.loads((ds / "dataset.json").read_text())
    ((case_id, group),) = meta["groups"].items()
    unkeyed = "img" + hashlib.sha256(mrn.encode()).hexdigest()[:8]  # the old, reversible scheme
    assert group.startswith("img") and group != unkeyed and case_id.startswith(group)
    everything = b"".join(p.read_bytes() for p in ds.rglob("*.json"))
    assert mrn.encode() not in everything and b"/pacs" not in everything and str(tmp_path).encode() not in everything
    # another installation (another secret) gives another pseudonym for the same name
    monkeypatch.setenv("NAPARI_GI_SEG_HOME", str(tmp_path / "other_home"))
    ds2 = export_case(tmp_path / "ds2", img, chaos_labels, [10], CHAOS_CLASSES)
    (g2,) = json.loads((ds2 / "dataset.json").read_text())["groups"].values()
    assert g2 != group


def test_public_path():
    assert public_path("/home/doe/data/Dataset501") == "Dataset501"
    assert public_path("/home/doe/data/Dataset501/imagesTr/a.nii.gz", "/home/doe/data/Dataset501") == (
        "Dataset501/imagesTr/a.nii.gz"
    )
    assert public_path("/elsewhere/x.nii.gz", "/home/doe/data", "data") == "x.nii.gz"


@pytest.fixture(scope="module")
def trained(chaos_dir, tmp_path_factory):
    """A 1-step model trained and registered by the real trainer on 2 CHAOS patients
    (dataset and work folders under a recognisable absolute path)."""
    from napari_gi_seg.training.trainer import TrainConfig, train

    root = tmp_path_factory.mktemp("private_site_name")
    ds = root / PRIVATE  # folder and case named after patients, as exports from a PACS often are
    ds.mkdir()
    for pid, case in (("1", PRIVATE), ("2", "Roe_Richard_MRN1234")):
        for kind in ("image", "label"):
            os.symlink(chaos_dir / f"{kind}_{pid}.nii.gz", ds / f"{kind}_{case}.nii.gz")
    (ds / "classes.json").write_text(json.dumps(list(CHAOS_CLASSES.values())))
    home = root / "home"
    old = os.environ.get("NAPARI_GI_SEG_HOME")
    os.environ["NAPARI_GI_SEG_HOME"] = str(home)
    try:
        cfg = TrainConfig(
            dataset=str(ds),
            name="private",
            size=32,
            epochs=1,
            batch_size=4,
            max_steps_per_epoch=1,
            augment=False,
            val_fraction=0.5,
            device="cpu",
        )
        res = train(cfg)
    finally:
        if old is None:
            os.environ.pop("NAPARI_GI_SEG_HOME")
        else:
            os.environ["NAPARI_GI_SEG_HOME"] = old
    return root, ds, res


def test_specs_cards_and_run_configs_hold_no_absolute_path(trained):
    root, ds, res = trained
    files = [res.entry.folder / n for n in ("spec.json", "MODEL_CARD.md")] + [res.work_dir / "config.json"]
    for f in files:
        text = f.read_text()
        assert str(root) not in text and "private_site_name" not in text, f
    spec = json.loads((res.entry.folder / "spec.json").read_text())
    assert spec["training"]["dataset"].startswith("dataset-")  # a keyed pseudonym (napari_gi_seg._privacy)
    assert "registered.json" in {p.name for p in res.work_dir.iterdir()}
    assert res.work_dir.name.startswith("private-v1-")  # unique per run


def test_train_writes_no_dataset_or_case_name(trained):
    """Nothing the run writes (registered spec and card, run.json, config.json, train.log,
    metrics.csv) names the dataset folder or a case taken from a file name."""
    root, ds, res = trained
    files = [res.entry.folder / n for n in ("spec.json", "MODEL_CARD.md")]
    files += [res.work_dir / n for n in ("run.json", "config.json", "train.log", "MODEL_CARD.md", "metrics.csv")]
    for f in files:
        text = f.read_text()
        assert not [w for w in PRIVATE_NAMES if w in text], f
    spec = json.loads((res.entry.folder / "spec.json").read_text())
    t = spec["training"]
    assert len(t["dataset"]) == 16 and all(p.startswith("case-") for p in t["train_patients"] + t["val_patients"])
    run = json.loads((res.work_dir / "run.json").read_text())
    assert run["dataset"]["name"] == t["dataset"] and run["split"]["validation"] == t["val_patients"]
    assert t["dataset"] in (res.work_dir / "train.log").read_text()  # the log says which dataset, by pseudonym


def test_evaluation_outputs_hold_no_absolute_path(trained, tmp_path, monkeypatch):
    from napari_gi_seg.evaluation.evaluate import evaluate_dataset, write_json, write_report

    root, ds, res = trained
    monkeypatch.setenv("NAPARI_GI_SEG_HOME", str(root / "home"))
    ev = evaluate_dataset(ds, model="private", cases=[PRIVATE], device="cpu")
    j = write_json(ev.summary, tmp_path / "metrics.json")
    r = write_report(ev, tmp_path / "report.md")
    for f in (j, r):
        assert str(root) not in f.read_text() and "private_site_name" not in f.read_text()
    assert json.loads(j.read_text())["dataset"] == PRIVATE  # evaluate's own outputs stay with the user
