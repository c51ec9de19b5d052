"""Shared fixtures: the real data in ``../shared/data``, an isolated user folder, the
one tiny test model, and the test markers.

Real data is found through :func:`napari_gi_seg.paths.data_dir` (``$NAPARI_GI_SEG_DATA``
or ``../shared/data`` beside the repository). Under CI (``CI=true``) missing data is a
test **failure**. Elsewhere, CHAOS patient 1 (image and labels) falls back to the
plugin's pinned pooch download (:mod:`napari_gi_seg._sample_data`, sha256-checked,
cached in pooch's user cache folder), so a fresh clone without ``../shared`` still runs
the tests that need only that patient; other data tests are skipped with the reason.

Markers (applied here, see :func:`pytest_collection_modifyitems`): every test under
``tests/widgets/`` is ``gui``; tests listed in :data:`SLOW_TESTS` (over ~20 s on 2
cores) are ``slow``. Fast subset: ``bash scripts/test.sh -m "not slow"``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torchvision  # noqa: F401 - see below

from _tiny import CHAOS_CLASS_NAMES, TINY_NAME, TinyModel, fit_tiny, tiny_spec
from dicom_series import RAS_TO_LPS, write_mr_series  # noqa: E402 - tests/ is on sys.path
from napari_gi_seg.paths import data_dir as _data_dir

# torchvision is imported first, at a worker's start: loading triton's libtriton (through
# torchvision -> torch._dynamo) later in a process that had run the Previous-day page
# (tests/widgets/test_propagate_widget.py, then test_dock_fit.py) segfaulted on
# 2026-12-03 (torch 2.14.1, SimpleITK); the cause is not found yet (docs/development.md).

#: A small CHAOS patient is not needed: patient 1 (256 x 256 x 37) reads in ~0.2 s.
CHAOS_PATIENT = 1
#: The CHAOS patients of the ``chaos3`` training fixture.
CHAOS_PATIENTS = ("1", "2", "3")


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_path(path: Path | None, what: str) -> Path:
    """Return ``path`` if it exists; else fail under CI, skip elsewhere."""
    if path is not None and Path(path).exists():
        return Path(path)
    msg = f"real data missing: {what} ({path}); set NAPARI_GI_SEG_DATA or provide ../shared/data"
    if _on_ci():
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(autouse=True)
def _isolated_user_dir(tmp_path_factory, monkeypatch):
    """Every test gets its own empty ``NAPARI_GI_SEG_HOME`` so nothing is written to
    the real user folder (user models, sessions, pooch cache). The bundled model
    lives in the package data and stays visible."""
    home = tmp_path_factory.mktemp("gi_seg_home")
    monkeypatch.setenv("NAPARI_GI_SEG_HOME", str(home))
    yield home


@pytest.fixture
def model_home(_isolated_user_dir) -> Path:
    """This test's empty user folder (``$NAPARI_GI_SEG_HOME``), so the registry starts
    with the bundled model only."""
    from napari_gi_seg.paths import user_dir

    return user_dir()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real-data folder (``chaos_mr_t2spir/``, ``uwmgi/``, ``totalseg_example_mr/``)."""
    return require_path(_data_dir(), "data folder")


@pytest.fixture(scope="session")
def chaos_dir(data_dir) -> Path:
    """``<data>/chaos_mr_t2spir``: 16 CHAOS T2-SPIR patients, image_<id>/label_<id>.nii.gz."""
    return require_path(data_dir / "chaos_mr_t2spir", "CHAOS T2-SPIR folder")


def _chaos_patient_file(kind: str) -> Path:
    """``<data>/chaos_mr_t2spir/<kind>_1.nii.gz``; outside CI, when the shared data is
    missing, the plugin's pinned sample download of the same file (sha256-checked)."""
    name = f"{kind}_{CHAOS_PATIENT}.nii.gz"
    d = _data_dir()
    local = d / "chaos_mr_t2spir" / name if d is not None else None
    if local is not None and local.exists():
        return local
    if _on_ci():
        return require_path(local, f"CHAOS {kind}")
    try:
        import pooch

        from napari_gi_seg._sample_data import SAMPLE_FILES

        url, sha = SAMPLE_FILES[name]
        cache = Path(os.environ.get("NAPARI_GI_SEG_TEST_CACHE") or pooch.os_cache("napari-gi-seg-tests"))
        return Path(pooch.retrieve(url, known_hash=f"sha256:{sha}", fname=name, path=cache, progressbar=False))
    except Exception as e:  # noqa: BLE001 - no network, or a changed file: skip with the reason
        pytest.skip(f"real data missing: {local} and the sample download failed ({type(e).__name__}: {e})")


@pytest.fixture(scope="session")
def chaos_image_path() -> Path:
    """CHAOS patient 1 image: 256 x 256 x 37 (x, y, z), spacing 1.25 x 1.25 x 7.7 mm."""
    return _chaos_patient_file("image")


@pytest.fixture(scope="session")
def chaos_label_path() -> Path:
    """CHAOS patient 1 labels: 0 background, 1 liver, 2 right kidney, 3 left kidney, 4 spleen."""
    return _chaos_patient_file("label")


@pytest.fixture(scope="session")
def chaos_volumes(chaos_image_path, chaos_label_path):
    """(image Volume, label Volume) of CHAOS patient 1, read once."""
    from napari_gi_seg.io.nifti import read_nifti

    return read_nifti(chaos_image_path, as_labels=False), read_nifti(chaos_label_path, as_labels=True)


@pytest.fixture(scope="session")
def chaos3(chaos_dir, tmp_path_factory) -> Path:
    """A temp folder with three real CHAOS patients (1, 2, 3: symlinks to the shared data,
    plus ``classes.json``), small enough for a few training steps."""
    root = tmp_path_factory.mktemp("chaos3")
    for pid in CHAOS_PATIENTS:
        for kind in ("image", "label"):
            os.symlink(chaos_dir / f"{kind}_{pid}.nii.gz", root / f"{kind}_{pid}.nii.gz")
    (root / "classes.json").write_text(json.dumps(CHAOS_CLASS_NAMES))
    return root


# ----------------------------------------------------------------- the one tiny model
@pytest.fixture(scope="session")
def tiny_model(chaos_volumes, tmp_path_factory) -> TinyModel:
    """The tiny test model (see ``tests/_tiny.py``), fitted once per session:
    ``.spec``, ``.weights`` (safetensors), ``.state_dict``, ``.network()``."""
    image, labels = chaos_volumes
    return TinyModel(fit_tiny(image, labels, tmp_path_factory.mktemp("tiny_model") / "model.safetensors"))


@pytest.fixture
def tiny_entry(tiny_model, _isolated_user_dir):
    """The tiny model registered as ``tiny-chaos:1`` in this test's user folder."""
    from napari_gi_seg.models.registry import register_model

    return register_model(tiny_spec(), weights_path=tiny_model.weights)


@pytest.fixture
def tiny_key(tiny_entry) -> str:
    """``"tiny-chaos:1"``, registered in this test's user folder."""
    assert tiny_entry.key == f"{TINY_NAME}:1"
    return tiny_entry.key


# ----------------------------------------------------------------- markers
#: Tests that take more than ~5 s in the two-worker suite on 2 CPU cores (measured with
#: ``--durations``; see docs/development.md): ``-m "not slow"`` leaves them out.
SLOW_TESTS = {
    "test_clinician_loop",
    "test_torchrun_two_processes_registers_one_model",
    "test_finetune_cancel_stops_gracefully_and_keeps_best_epoch",
    "test_torchrun_two_processes_share_the_scans",
    "test_kill_mid_folder_run_then_rerun_completes",  # a child process imports torch (~15-35 s)
    "test_sigterm_during_finetune_cli_finishes_the_epoch_and_resume_completes",  # two fine-tunes (~30 s)
    "test_known_synthetic_deformation_is_recovered",  # three registrations of a real scan
    "test_new_structure_route_from_the_plugins_menu",  # a fine-tune process (~20-40 s)
    "test_whole_loop_from_the_plugins_menu",
    "test_evaluate_json_report_and_table",
    "test_adapting_on_five_corrected_slices_improves_the_other_slices",
    "test_evaluation_outputs_hold_no_absolute_path",
    "test_heartbeat_during_adaptation",
    "test_finetune_grows_base_and_predicts_new_class",
    "test_whole_train_csv_round_trips_byte_identically",
    "test_a_worse_copy_is_not_applied_unless_asked",
    "test_train_and_evaluate_take_the_chaos_folder",
    "test_same_seed_same_run_with_dataloader_workers",
    "test_adapt_resegments_untouched_slices_through_undo_and_keeps_for_patient",
    "test_sigmoid_model_through_the_whole_loop",
    "test_same_seed_same_run_with_augmentation",
    "test_same_patient_stored_nine_ways_gives_the_same_labels",
    "test_adapt_in_a_worker_thread_can_be_cancelled",
    "test_stop_keeps_best_epoch_and_resume_continues",
}


def pytest_collection_modifyitems(config, items):
    """Mark every test under ``tests/widgets/`` as ``gui`` and the tests in
    :data:`SLOW_TESTS` as ``slow``."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "widgets" in parts:
            item.add_marker(pytest.mark.gui)
        if item.originalname in SLOW_TESTS or item.name in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def uwmgi_csv(data_dir) -> Path:
    """The full UW-Madison GI Tract ``train.csv`` (115,488 rows, labels only, no scans)."""
    return require_path(data_dir / "uwmgi" / "train.csv", "UW-Madison train.csv")


@pytest.fixture(scope="session")
def totalseg_dir(data_dir) -> Path:
    """``<data>/totalseg_example_mr``: one tiny MR volume with model-predicted labels."""
    return require_path(data_dir / "totalseg_example_mr", "TotalSegmentator example MR")


# ----------------------------------------------------------------- a real CHAOS volume as a DICOM MR series
@dataclass
class DicomCase:
    """A CHAOS patient written as a DICOM MR series: ``folder`` (the series),
    ``labels`` ``(z, y, x)`` uint8 manual labels in the DICOM stack's z order,
    ``class_names`` {1: "liver", ...}."""

    folder: Path
    labels: object
    class_names: dict


def _dicom_case(tmp_path_factory, chaos_image_path, chaos_label_path, name: str, flip_x: bool) -> DicomCase:
    import numpy as np

    from napari_gi_seg.io import read_image
    from napari_gi_seg.io.nifti import read_nifti

    img = read_nifti(chaos_image_path, as_labels=False)
    lab = read_nifti(chaos_label_path, as_labels=True)
    data, labels, aff = img.data, lab.data, np.asarray(RAS_TO_LPS) @ img.affine
    if flip_x:  # a second orientation: columns reversed, so the row cosine and the slice normal flip
        data, labels = data[:, :, ::-1], labels[:, :, ::-1]
        f = np.diag([-1.0, 1.0, 1.0, 1.0])
        f[0, 3] = data.shape[2] - 1
        aff = aff @ f
    root = tmp_path_factory.mktemp(name)
    uid = "1.2.826.0.1.3680043.8.498.7701" + ("9" if flip_x else "1")
    write_mr_series(np.ascontiguousarray(data), aff, root / "MR", uid)
    vol = read_image(root / "MR")[0]
    # The reader sorts slices along the plane normal: find the z order it chose.
    zs = [int(round(v)) for v in (np.linalg.inv(aff) @ np.c_[vol._dicom_ref.positions, np.ones(vol.shape[0])].T)[2]]
    return DicomCase(
        root / "MR", np.ascontiguousarray(labels[zs]), {1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"}
    )


@pytest.fixture(scope="session")
def chaos_dicom(tmp_path_factory, chaos_image_path, chaos_label_path) -> DicomCase:
    """CHAOS patient 1 as a DICOM MR series (scanner-like orientation, slices in the
    file names' random order) with its manual labels in the series' z order."""
    return _dicom_case(tmp_path_factory, chaos_image_path, chaos_label_path, "chaos_dicom", flip_x=False)


@pytest.fixture(scope="session")
def chaos_dicom_flipped(tmp_path_factory, chaos_image_path, chaos_label_path) -> DicomCase:
    """The same patient in a second orientation (columns running the other way)."""
    return _dicom_case(tmp_path_factory, chaos_image_path, chaos_label_path, "chaos_dicom_flip", flip_x=True)


# ----------------------------------------------------------------- the CHAOS MR DICOM as the organisers ship it
@pytest.fixture(scope="session")
def chaos_dicom_dir(data_dir) -> Path:
    """``<data>/chaos_mr_dicom``: the 16 CHAOS MR patients' original DICOM and Ground PNGs
    (T2-SPIR, T1 in/opposed phase; see its SOURCE.md)."""
    return require_path(data_dir / "chaos_mr_dicom", "CHAOS MR DICOM folder")


@pytest.fixture(scope="session")
def chaos_dicom_root(chaos_dicom_dir, tmp_path_factory) -> Path:
    """A CHAOS MR folder with two real patients (symlinks): 1 (axial, T2 256 px 1.54 mm)
    and 22 (oblique, T1 2.03 mm pixels: the coarsest in-plane spacing of the 16)."""
    root = tmp_path_factory.mktemp("chaos_dicom")
    for pid in ("1", "22"):
        os.symlink(chaos_dicom_dir / pid, root / pid)
    return root
