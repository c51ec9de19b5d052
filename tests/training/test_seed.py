"""``--seed`` reaches every random draw of the trainer, MONAI's transforms included:
the same seed gives the same run, another seed another one (real CHAOS patients)."""

from __future__ import annotations

from napari_gi_seg.training.trainer import TrainConfig, train

TINY = dict(size=64, batch_size=4, arch="Unet", encoder="mobilenet_v2")  # as tests/training/conftest.py


def _losses(chaos3, tmp_path, seed: int, workers: int = 0) -> list[float]:
    cfg = TrainConfig(
        dataset=str(chaos3),
        name="seeded",
        val_fraction=0.0,
        device="cpu",
        register=False,
        work_dir=str(tmp_path / f"run-{seed}-{workers}-{len(list(tmp_path.iterdir()))}"),
        seed=seed,
        num_workers=workers,
        **TINY,
        augment=True,
        max_steps_per_epoch=2,
        epochs=2,
    )
    return [r["train_loss"] for r in train(cfg).history]


def test_same_seed_same_run_with_augmentation(chaos3, tmp_path):
    a, b, c = (_losses(chaos3, tmp_path, s) for s in (7, 7, 8))
    assert a == b and a != c


def test_same_seed_same_run_with_dataloader_workers(chaos3, tmp_path):
    assert _losses(chaos3, tmp_path, 7, workers=1) == _losses(chaos3, tmp_path, 7, workers=1)
