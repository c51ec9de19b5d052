"""nnU-Net v2 as a peer: its own planning, preprocessing, training recipe and inference
on one patient cross-validation fold of CHAOS T2-SPIR, on CPU, under a wall-clock budget.

Used by ``benchmarks/peer_training.py`` (method ``nnunet``) and runnable alone for a
smoke test::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/_nnunet_peer.py --work /tmp/nnunet-peer \\
        --minutes 0.5 --train 1,2,3 --val 8

nnU-Net: Isensee, F., Jaeger, P. F., Kohl, S. A. A., Petersen, J. & Maier-Hein, K. H.
(2021). nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation. *Nature Methods* 18(2), 203-211. https://doi.org/10.1038/s41592-020-01008-z
(package ``nnunetv2``, https://github.com/MIC-DKFZ/nnUNet).

What runs is nnU-Net's own: the raw dataset (``Dataset501_CHAOS``, channel ``MRI`` so
that its normalisation is per-case z-scoring) goes through its fingerprint extraction,
the default ``ExperimentPlanner`` (plans ``nnUNetPlans``) and the ``DefaultPreprocessor``
for the ``2d`` configuration; training is ``nnUNetTrainer``'s (its plan's patch size,
batch size and network, Dice + CE loss with deep supervision, SGD with Nesterov momentum
0.99 from lr 1e-2 on a poly schedule, its augmentation pipeline and foreground
oversampling data loader); prediction is ``nnUNetPredictor`` (Gaussian-weighted sliding
window with tile step 0.5, mirroring test-time augmentation on the axes its trainer
allows), resampled back to each case's native grid.

Changed from nnU-Net's defaults, and why (:class:`nnUNetTrainerBudget`):

- Budget instead of 1000 epochs x 250 iterations: every peer in
  ``peer_training.py`` gets the same wall-clock training time. The poly schedule
  ``lr = 1e-2 * (1 - f) ** 0.9`` runs on the elapsed fraction ``f`` of the budget
  (set before every step) rather than on ``epoch / 1000``, so the schedule completes
  in the budget however fast the machine steps. Training stops at the first check
  (before each training or validation iteration) where the budget is spent.
- 25 training and 5 validation iterations per epoch (instead of 250 and 50), so that
  epochs (and nnU-Net's per-epoch logging, pseudo-Dice and checkpointing) happen
  within a CPU budget of minutes. An epoch cut short by the budget is closed without
  its validation iterations. The validation iterations (nnU-Net's online pseudo-Dice
  on the held-out cases, used only for its ``checkpoint_best``) count as training
  time, as they do in nnU-Net; the final weights are evaluated, never the "best".
- CPU: ``device=cpu``, ``torch.set_num_threads(threads)``, no ``torch.compile``
  (``nnUNet_compile=f``; nnU-Net disables it on CPU anyway), augmentation in the main
  process by default (``nnUNet_n_proc_DA=0``) so one run fits one core.
- The split is given, not nnU-Net's 5-fold split: ``do_split`` returns exactly the
  fold's training and validation cases (recorded as ``splits_final.json`` next to the
  results; nothing is written to the shared preprocessed folder).
- The full-volume validation nnU-Net runs after training (``perform_actual_validation``)
  is not run; the held-out cases are predicted here from the raw files instead and scored
  as 3D Dice per class against the raw labels.

Everything nnU-Net writes goes under ``work`` (``nnUNet_raw`` with symlinks to the data,
``nnUNet_preprocessed``, ``nnUNet_results/<split tag>``); the data are never copied into
the repository.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import random
import sys
import time
from pathlib import Path

DATASET_ID = 501
DATASET_NAME = "Dataset501_CHAOS"
PLANS = "nnUNetPlans"
CONFIG = "2d"
ITERS_PER_EPOCH = 25
VAL_ITERS_PER_EPOCH = 5
POLY_EXPONENT = 0.9  # nnU-Net's PolyLRScheduler


def _set_env(work: Path, results: Path | None = None, da_processes: int = 0) -> None:
    """Point nnU-Net at ``work`` (its paths are read from the environment when used)."""
    work = Path(work).resolve()
    os.environ["nnUNet_raw"] = str(work / "nnUNet_raw")
    os.environ["nnUNet_preprocessed"] = str(work / "nnUNet_preprocessed")
    os.environ["nnUNet_results"] = str(results if results is not None else work / "nnUNet_results")
    os.environ["nnUNet_compile"] = "f"
    os.environ["nnUNet_n_proc_DA"] = str(int(da_processes))


def _case(pid: str) -> str:
    """nnU-Net case identifier of patient ``pid``."""
    return f"CHAOS_{pid}"


@contextlib.contextmanager
def _locked(path: Path):
    """Exclusive advisory lock on ``path`` (so parallel runs prepare the dataset once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _plan_summary(plans: dict) -> dict:
    """Short summary of the 2d configuration of an nnU-Net plans dict."""
    c = plans["configurations"][CONFIG]
    return {
        "configuration": CONFIG,
        "patch_size": [int(v) for v in c["patch_size"]],
        "batch_size": int(c["batch_size"]),
        "spacing": [float(v) for v in c["spacing"]],
        "median_image_size_in_voxels": [float(v) for v in c["median_image_size_in_voxels"]],
        "normalization": list(c["normalization_schemes"]),
        "features_per_stage": list(c["architecture"]["arch_kwargs"]["features_per_stage"]),
        "network": c["architecture"]["network_class_name"].rsplit(".", 1)[-1],
    }


def _patients(data_root: Path) -> list[str]:
    """Patient ids with both ``image_<pid>.nii.gz`` and ``label_<pid>.nii.gz`` in ``data_root``."""
    ids = []
    for img in sorted(Path(data_root).glob("image_*.nii.gz")):
        pid = img.name[len("image_") : -len(".nii.gz")]
        if (Path(data_root) / f"label_{pid}.nii.gz").is_file():
            ids.append(pid)
    if not ids:
        raise FileNotFoundError(f"{data_root}: no image_<id>.nii.gz / label_<id>.nii.gz pairs")
    return ids


def prepare_nnunet(data_root: Path, class_names: list[str], work: Path, threads: int = 1) -> dict:
    """Write the nnU-Net raw dataset and run its fingerprint, planning and 2d preprocessing.

    Parameters
    ----------
    data_root : Path
        Folder with ``image_<pid>.nii.gz`` and ``label_<pid>.nii.gz`` (CHAOS T2-SPIR layout;
        label value ``i + 1`` is ``class_names[i]``, 0 is background).
    class_names : list of str
        Foreground class names in label order (value 1, 2, ...).
    work : Path
        Working folder; receives ``nnUNet_raw/Dataset501_CHAOS`` (``imagesTr/CHAOS_<pid>_0000.nii.gz``
        and ``labelsTr/CHAOS_<pid>.nii.gz`` as symlinks to ``data_root``, ``dataset.json`` with
        channel ``MRI``), ``nnUNet_preprocessed`` and ``nnUNet_results``.
    threads : int
        Processes for nnU-Net's fingerprint extraction and preprocessing.

    Returns
    -------
    dict
        ``{'seconds': float, 'plans': dict, 'cases': int, 'skipped': list[str]}``: wall time of
        this call, a summary of the 2d plan (patch size, batch size, spacing in mm (z, y, x) order
        of nnU-Net's SimpleITK reader, normalisation, network) and the steps skipped because their
        outputs already existed.

    Raises
    ------
    FileNotFoundError
        If ``data_root`` holds no image/label pairs.
    RuntimeError
        If ``work`` already holds a raw dataset with different cases or labels.
    """
    t0 = time.time()
    work = Path(work).resolve()
    # the planner sets torch's threads to nnUNet_n_proc_DA while it sizes networks: it must be >= 1 here
    _set_env(work, da_processes=max(1, threads))
    raw = work / "nnUNet_raw" / DATASET_NAME
    pre = work / "nnUNet_preprocessed" / DATASET_NAME
    pids = _patients(Path(data_root))
    dataset_json = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, **{name: i + 1 for i, name in enumerate(class_names)}},
        "numTraining": len(pids),
        "file_ending": ".nii.gz",
        "name": "CHAOS",
        "description": f"CHAOS MR T2-SPIR, symlinks to {Path(data_root).resolve()}",
    }
    skipped = []
    with _locked(work / ".prepare.lock"):
        if (raw / "dataset.json").is_file():
            old = json.loads((raw / "dataset.json").read_text())
            if old != dataset_json:
                raise RuntimeError(f"{raw / 'dataset.json'}: holds a different dataset; use another work folder")
            skipped.append("raw")
        else:
            for sub in ("imagesTr", "labelsTr"):
                (raw / sub).mkdir(parents=True, exist_ok=True)
            for pid in pids:
                for src, dst in (
                    (Path(data_root) / f"image_{pid}.nii.gz", raw / "imagesTr" / f"{_case(pid)}_0000.nii.gz"),
                    (Path(data_root) / f"label_{pid}.nii.gz", raw / "labelsTr" / f"{_case(pid)}.nii.gz"),
                ):
                    if dst.is_symlink() or dst.exists():
                        dst.unlink()
                    dst.symlink_to(src.resolve())
            (raw / "dataset.json").write_text(json.dumps(dataset_json, indent=2))

        from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
        from nnunetv2.experiment_planning.plan_and_preprocess_api import (
            extract_fingerprint_dataset,
            plan_experiment_dataset,
            preprocess_dataset,
        )

        if (pre / "dataset_fingerprint.json").is_file():
            skipped.append("fingerprint")
        else:
            extract_fingerprint_dataset(
                DATASET_ID, num_processes=threads, check_dataset_integrity=True, verbose=False, show_progress_bar=False
            )
        if (pre / f"{PLANS}.json").is_file():
            skipped.append("plan")
        else:
            plan_experiment_dataset(DATASET_ID, ExperimentPlanner)
        done = pre / f".{PLANS}_{CONFIG}.done"
        if done.is_file():
            skipped.append("preprocess")
        else:
            preprocess_dataset(
                DATASET_ID, PLANS, configurations=(CONFIG,), num_processes=[threads], show_progress_bar=False
            )
            done.write_text("ok\n")
        plans = json.loads((pre / f"{PLANS}.json").read_text())
    return {
        "seconds": round(time.time() - t0, 1),
        "plans": _plan_summary(plans),
        "cases": len(pids),
        "skipped": skipped,
    }


def _trainer_class():
    """Build :class:`nnUNetTrainerBudget` (nnU-Net is imported only once its paths are set)."""
    import numpy as np
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class nnUNetTrainerBudget(nnUNetTrainer):  # noqa: N801  (nnU-Net's naming)
        """``nnUNetTrainer`` trained for a wall-clock budget on a given split.

        Everything is nnU-Net's except: the poly learning rate runs on the elapsed fraction of
        ``budget_s`` (set before every step), 25/5 training/validation iterations per epoch,
        training stops when the budget is spent (checked before every iteration), and
        :meth:`do_split` returns ``split`` (``(train_keys, val_keys)``).
        """

        def __init__(
            self,
            plans: dict,
            configuration: str,
            fold: int,
            dataset_json: dict,
            device: torch.device = torch.device("cpu"),
        ):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_iterations_per_epoch = ITERS_PER_EPOCH
            self.num_val_iterations_per_epoch = VAL_ITERS_PER_EPOCH
            self.num_epochs = 10**6  # an upper bound only: the budget ends training
            self.budget_s = 60.0
            self.split: tuple[list[str], list[str]] | None = None
            self.steps = 0
            self.epochs_completed = 0
            self.train_seconds = 0.0
            self._t_start: float | None = None

        # -------------------------------------------------------------- split
        def do_split(self):
            if self.split is None:
                return super().do_split()
            tr, va = self.split
            self.print_to_log_file(f"Given split: {len(tr)} training, {len(va)} validation cases.")
            return list(tr), list(va)

        # ---------------------------------------------------------- schedule
        def _elapsed(self) -> float:
            return 0.0 if self._t_start is None else time.time() - self._t_start

        def _spent(self) -> bool:
            return self._elapsed() >= self.budget_s

        def _set_lr(self) -> float:
            frac = min(1.0, self._elapsed() / self.budget_s)
            lr = self.initial_lr * (1.0 - frac) ** POLY_EXPONENT
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            return lr

        def on_train_epoch_start(self):
            self.network.train()
            lr = self._set_lr()
            self.print_to_log_file("")
            self.print_to_log_file(f"Epoch {self.current_epoch}")
            self.print_to_log_file(f"Current learning rate: {np.round(lr, decimals=5)}")
            self.logger.log("lrs", lr, self.current_epoch)

        def train_step(self, batch: dict) -> dict:
            self._set_lr()
            return super().train_step(batch)

        # ---------------------------------------------------------- the loop
        def _close_cut_epoch(self, train_outputs: list) -> None:
            """End an epoch the budget cut short: log its training loss, skip its validation."""
            self.on_train_epoch_end(train_outputs)
            self.logger.log("epoch_end_timestamps", time.time(), self.current_epoch)
            self.print_to_log_file(f"Budget spent after {len(train_outputs)} iterations of this epoch.")
            self.current_epoch += 1

        def run_training(self):
            self.on_train_start()
            self._t_start = time.time()
            while self.current_epoch < self.num_epochs and not self._spent():
                self.on_epoch_start()
                self.on_train_epoch_start()
                train_outputs = []
                for _ in range(self.num_iterations_per_epoch):
                    if train_outputs and self._spent():
                        break
                    train_outputs.append(self.train_step(next(self.dataloader_train)))
                    self.steps += 1
                if len(train_outputs) < self.num_iterations_per_epoch or self._spent():
                    self.epochs_completed += len(train_outputs) == self.num_iterations_per_epoch
                    self._close_cut_epoch(train_outputs)
                    break
                self.on_train_epoch_end(train_outputs)
                with torch.no_grad():
                    self.on_validation_epoch_start()
                    val_outputs = []
                    for _ in range(self.num_val_iterations_per_epoch):
                        if self._spent():
                            break
                        val_outputs.append(self.validation_step(next(self.dataloader_val)))
                    if len(val_outputs) < self.num_val_iterations_per_epoch:
                        # the budget ran out during validation: the training part is done, count it
                        self.logger.log("epoch_end_timestamps", time.time(), self.current_epoch)
                        self.current_epoch += 1
                        self.epochs_completed += 1
                        break
                    self.on_validation_epoch_end(val_outputs)
                self.on_epoch_end()
                self.epochs_completed += 1
            self.train_seconds = self._elapsed()
            self.on_train_end()

    return nnUNetTrainerBudget


def _dice(pred, ref, label: int) -> float:
    """Dice of ``label`` between two label arrays: 2|A∩B| / (|A| + |B|), 1.0 when both are empty."""
    a = pred == label
    b = ref == label
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def run_nnunet_fold(
    work: Path,
    train_ids: list[str],
    val_ids: list[str],
    minutes: float,
    threads: int = 1,
    seed: int = 0,
    da_processes: int = 0,
) -> dict:
    """Train nnU-Net 2d on ``train_ids`` for ``minutes`` of training time on CPU and score ``val_ids``.

    Parameters
    ----------
    work : Path
        The folder prepared by :func:`prepare_nnunet`. Results go to
        ``work/nnUNet_results/<split tag>/Dataset501_CHAOS/nnUNetTrainerBudget__nnUNetPlans__2d/fold_0``
        (the tag names the validation patients and the seed, so folds run in parallel do not collide).
    train_ids, val_ids : list of str
        Patient ids (``"1"``, ``"8"``, ...) to train on and to score.
    minutes : float
        Wall-clock budget of the training loop (training and nnU-Net's per-epoch validation
        iterations; not planning, data loader start-up, checkpoint saving at the end or prediction).
    threads : int
        ``torch.set_num_threads`` for training and prediction.
    seed : int
        Seed of ``random``, ``numpy`` and ``torch`` (network initialisation, sampling, augmentation;
        augmentation is reproducible only with ``da_processes=0``).
    da_processes : int
        nnU-Net's augmentation worker processes (``nnUNet_n_proc_DA``); 0 runs it in this process.

    Returns
    -------
    dict
        ``per_case`` ({pid: {class_name: Dice}}, 3D Dice on the native grid of each case),
        ``steps`` (training iterations), ``epochs`` (epochs started, the last one possibly cut
        short), ``epochs_completed``, ``train_minutes``, ``setup_seconds`` (network build, data
        loader start-up), ``predict_seconds`` (all cases), ``predict_seconds_per_case``,
        ``final_lr``, ``plan`` (summary of the 2d plan), ``mirroring_axes``, ``params_m``.

    Raises
    ------
    FileNotFoundError
        If ``work`` was not prepared or a patient id has no preprocessed case.
    ValueError
        If a patient is in both ``train_ids`` and ``val_ids``, or ``minutes`` is not positive.
    """
    work = Path(work).resolve()
    train_ids = [str(p) for p in train_ids]
    val_ids = [str(p) for p in val_ids]
    if set(train_ids) & set(val_ids):
        raise ValueError(f"patients in both training and validation: {sorted(set(train_ids) & set(val_ids))}")
    if not minutes > 0:
        raise ValueError(f"minutes must be positive, got {minutes}")
    tag = f"val-{'-'.join(val_ids)}_seed{seed}"
    _set_env(work, results=work / "nnUNet_results" / tag, da_processes=da_processes)
    pre = work / "nnUNet_preprocessed" / DATASET_NAME
    raw = work / "nnUNet_raw" / DATASET_NAME
    if not (pre / f".{PLANS}_{CONFIG}.done").is_file():
        raise FileNotFoundError(f"{pre}: not preprocessed; run prepare_nnunet first")
    missing = [p for p in train_ids + val_ids if not (raw / "labelsTr" / f"{_case(p)}.nii.gz").exists()]
    if missing:
        raise FileNotFoundError(f"{raw}: no case for patients {missing}")

    import numpy as np
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (nnU-Net samples with the legacy global generator)
    torch.manual_seed(seed)

    plans = json.loads((pre / f"{PLANS}.json").read_text())
    plans["continue_training"] = False
    dataset_json = json.loads((pre / "dataset.json").read_text())
    trainer = _trainer_class()(
        plans=plans, configuration=CONFIG, fold=0, dataset_json=dataset_json, device=torch.device("cpu")
    )
    trainer.budget_s = float(minutes) * 60.0
    trainer.split = ([_case(p) for p in train_ids], [_case(p) for p in val_ids])
    Path(trainer.output_folder).mkdir(parents=True, exist_ok=True)
    (Path(trainer.output_folder_base) / "splits_final.json").write_text(
        json.dumps([{"train": trainer.split[0], "val": trainer.split[1]}], indent=2)
    )

    t0 = time.time()
    trainer.run_training()
    setup_seconds = time.time() - t0 - trainer.train_seconds
    final_lr = float(trainer.optimizer.param_groups[0]["lr"])

    # ----------------------------------------------------------- prediction
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=True,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        allow_tqdm=False,
    )
    weights = {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}
    predictor.manual_initialization(
        trainer.network,
        trainer.plans_manager,
        trainer.configuration_manager,
        [weights],
        trainer.dataset_json,
        trainer.__class__.__name__,
        trainer.inference_allowed_mirroring_axes,
    )
    reader = trainer.plans_manager.image_reader_writer_class()
    names = [n for n, v in sorted(dataset_json["labels"].items(), key=lambda kv: kv[1]) if v != 0]
    per_case, per_case_s = {}, {}
    tp0 = time.time()
    for pid in val_ids:
        t1 = time.time()
        img, props = reader.read_images([str(raw / "imagesTr" / f"{_case(pid)}_0000.nii.gz")])
        seg = predictor.predict_single_npy_array(img, props)
        ref, _ = reader.read_seg(str(raw / "labelsTr" / f"{_case(pid)}.nii.gz"))
        ref = np.rint(ref[0]).astype(np.int16)
        if seg.shape != ref.shape:
            raise RuntimeError(f"patient {pid}: prediction {seg.shape} and label {ref.shape} differ in shape")
        per_case[pid] = {name: _dice(seg, ref, dataset_json["labels"][name]) for name in names}
        per_case_s[pid] = round(time.time() - t1, 1)
    predict_seconds = time.time() - tp0

    n_params = sum(p.numel() for p in trainer.network.parameters())
    return {
        "per_case": per_case,
        "steps": int(trainer.steps),
        "epochs": int(trainer.current_epoch),
        "epochs_completed": int(trainer.epochs_completed),
        "train_minutes": round(trainer.train_seconds / 60.0, 2),
        "setup_seconds": round(setup_seconds, 1),
        "predict_seconds": round(predict_seconds, 1),
        "predict_seconds_per_case": per_case_s,
        "final_lr": final_lr,
        "plan": _plan_summary(plans),
        "mirroring_axes": [int(a) for a in (trainer.inference_allowed_mirroring_axes or ())],
        "params_m": round(n_params / 1e6, 2),
        "results_folder": str(trainer.output_folder),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: prepare, train one fold, print the result as JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/chaos_mr_t2spir")
    p.add_argument("--classes", default="liver,right_kidney,left_kidney,spleen", help="names of labels 1, 2, ...")
    p.add_argument("--work", type=Path, required=True, help="working folder (outside the repository)")
    p.add_argument("--minutes", type=float, default=0.5, help="training budget, wall-clock minutes")
    p.add_argument("--train", required=True, help="comma-separated training patient ids")
    p.add_argument("--val", required=True, help="comma-separated validation patient ids")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--da-processes", type=int, default=0, help="nnUNet_n_proc_DA (0: augment in this process)")
    a = p.parse_args(argv)
    prep = prepare_nnunet(a.data, a.classes.split(","), a.work, threads=a.threads)
    res = run_nnunet_fold(
        a.work,
        a.train.split(","),
        a.val.split(","),
        a.minutes,
        threads=a.threads,
        seed=a.seed,
        da_processes=a.da_processes,
    )
    res["prepare"] = prep
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
