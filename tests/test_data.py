"""Tests of the datamodules in sparse_lightning.data: batches, caching, splits, errors.

Run: pytest tests/test_data.py -q
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from sparse_lightning.data import (
    CIFAR10DataModule,
    DigitsDataModule,
    MNIST1DDataModule,
    SyntheticDataModule,
)
from sparse_lightning.data.cifar10 import MEAN, STD, random_crop_flip
from sparse_lightning.errors import ConfigError

from helpers import N_PER_BATCH, write_fake_cifar10


FACTORIES: dict[str, Callable[[Path], pl.LightningDataModule]] = {
    "mnist1d": lambda tmp: MNIST1DDataModule(num_samples=500, data_dir=str(tmp), batch_size=32),
    "digits": lambda tmp: DigitsDataModule(batch_size=32),
    "synthetic-1d": lambda tmp: SyntheticDataModule(num_samples=200, batch_size=32),
    "synthetic-image": lambda tmp: SyntheticDataModule(input_shape=[3, 32, 32], num_classes=4,
                                                       num_samples=200, batch_size=32),
    "cifar10": lambda tmp: CIFAR10DataModule(data_dir=str(write_fake_cifar10(tmp)), batch_size=32),
}
EXPECTED_SHAPES = {"mnist1d": (1, 40), "digits": (1, 8, 8), "synthetic-1d": (1, 40),
                   "synthetic-image": (3, 32, 32), "cifar10": (3, 32, 32)}


@pytest.mark.parametrize("name", FACTORIES)
def test_batches_have_declared_shape_dtype_and_classes(name: str, tmp_path: Path) -> None:
    dm = FACTORIES[name](tmp_path)
    assert dm.input_shape == EXPECTED_SHAPES[name]  # known before setup
    dm.prepare_data()
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(y), *dm.input_shape) and 0 < len(y) <= 32
        assert torch.isfinite(x).all()
        assert 0 <= int(y.min()) and int(y.max()) < dm.num_classes


def test_mnist1d_cache_is_written_once_and_reused(tmp_path: Path, monkeypatch) -> None:
    first = MNIST1DDataModule(num_samples=500, data_dir=str(tmp_path), seed=3)
    first.prepare_data()
    assert [p.name for p in tmp_path.iterdir()] == ["mnist1d_n500_seed3.npz"]  # no temp files left

    def fail(*args, **kwargs):
        raise AssertionError("MNIST-1D regenerated although its cache exists")

    monkeypatch.setattr("mnist1d.data.make_dataset", fail)
    second = MNIST1DDataModule(num_samples=500, data_dir=str(tmp_path), seed=3)
    second.prepare_data()
    second.setup("fit")
    first.setup("fit")
    assert torch.equal(first.train_dataset.tensors[0], second.train_dataset.tensors[0])
    assert len(first.train_dataset) + len(first.val_dataset) + len(first.test_dataset) == 500


def test_mnist1d_setup_without_prepare_data_generates(tmp_path: Path) -> None:
    dm = MNIST1DDataModule(num_samples=200, data_dir=str(tmp_path / "new"))
    dm.setup("fit")
    assert (tmp_path / "new" / "mnist1d_n200_seed0.npz").is_file()
    x = dm.train_dataset.tensors[0]
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3  # standardized on train


def test_mnist1d_generation_leaves_global_rng_alone(tmp_path: Path) -> None:
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    MNIST1DDataModule(num_samples=100, data_dir=str(tmp_path)).prepare_data()
    assert np.random.rand() == expected


def test_mnist1d_default_data_dir_follows_env(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SPARSE_LIGHTNING_DATA", str(tmp_path))
    dm = MNIST1DDataModule(num_samples=100, seed=7)
    assert dm.cache_path == tmp_path / "mnist1d_n100_seed7.npz"


def test_cifar10_accepts_batches_folder_or_its_parent(tmp_path: Path) -> None:
    folder = write_fake_cifar10(tmp_path)
    by_folder = CIFAR10DataModule(data_dir=str(folder), augment=False)
    by_parent = CIFAR10DataModule(data_dir=str(tmp_path), augment=False)
    for dm in (by_folder, by_parent):
        dm.setup("fit")
    assert by_parent.data_dir == folder
    assert len(by_parent.train_dataset) + len(by_parent.val_dataset) == 5 * N_PER_BATCH
    assert len(by_parent.test_dataset) == N_PER_BATCH
    assert torch.equal(by_folder.test_dataset.tensors[0], by_parent.test_dataset.tensors[0])


def test_cifar10_test_batches_are_normalized_pickle_images(tmp_path: Path) -> None:
    folder = write_fake_cifar10(tmp_path)
    dm = CIFAR10DataModule(data_dir=str(folder), batch_size=N_PER_BATCH)
    dm.setup("test")
    x, y = next(iter(dm.test_dataloader()))
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    images = torch.as_tensor(raw[b"data"]).reshape(-1, 3, 32, 32).float() / 255
    expected = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected)  # no augmentation outside training
    assert y.tolist() == raw[b"labels"]


def test_random_crop_flip_returns_shifted_or_mirrored_windows() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = random_crop_flip(x, padding=4)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    changed = 0
    for i in range(len(x)):
        windows = [padded[i, :, top:top + 32, left:left + 32] for top in range(9) for left in range(9)]
        candidates = windows + [w.flip(-1) for w in windows]
        assert any(torch.equal(out[i], c) for c in candidates)
        changed += not torch.equal(out[i], x[i])
    assert changed > 8  # 1 in 162 of the crops/flips is the identity


def test_cifar10_collate_pickles_for_worker_processes(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(data_dir=str(write_fake_cifar10(tmp_path)))
    dm.setup("fit")
    collate = pickle.loads(pickle.dumps(dm.train_dataloader().collate_fn))
    x, _ = collate([dm.train_dataset[i] for i in range(4)])
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32


def test_cifar10_missing_directory_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="CIFAR-10 directory not found") as err:
        CIFAR10DataModule(data_dir=str(missing))
    assert str(missing) in str(err.value) and "\n" not in str(err.value)


def test_cifar10_incomplete_directory_names_the_missing_file(tmp_path: Path) -> None:
    folder = write_fake_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(ConfigError, match="data_batch_3") as err:
        CIFAR10DataModule(data_dir=str(tmp_path))
    assert str(folder) in str(err.value) and "test_batch," not in str(err.value)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"batch_size": 2.5}, "batch_size must be an integer >= 1"),
    ({"num_workers": -1}, "num_workers must be an integer >= 0"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"val_fraction": 1.0}, r"val_fraction must be a float in \(0, 1\), got 1.0"),
    ({"num_classes": 1}, "num_classes must be an integer >= 2"),
    ({"num_samples": 5}, "num_samples must be an integer >= 100"),
    ({"input_shape": [3, 0, 32]}, "input_shape must be a non-empty list of integers >= 1"),
    ({"noise": -0.1}, "noise must be a float >= 0"),
])
def test_bad_arguments_raise_config_error_in_init(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SyntheticDataModule(**kwargs)


@pytest.mark.parametrize("cls", [DigitsDataModule, SyntheticDataModule])
def test_splits_are_deterministic_for_a_seed(cls) -> None:
    def val_inputs(seed: int) -> torch.Tensor:
        dm = cls(seed=seed)
        dm.setup("fit")
        return dm.val_dataset.tensors[0]

    assert torch.equal(val_inputs(1), val_inputs(1))
    assert not torch.equal(val_inputs(1), val_inputs(2))


def test_digits_splits_are_stratified_and_disjoint() -> None:
    dm = DigitsDataModule(val_fraction=0.2, test_fraction=0.2)
    dm.setup("fit")
    sizes = [len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)]
    assert sum(sizes) == 1797
    for dataset in (dm.val_dataset, dm.test_dataset):
        counts = torch.bincount(dataset.tensors[1], minlength=10)
        assert int(counts.max() - counts.min()) <= 2  # each class ~equally represented


def test_trainer_runs_a_datamodule_end_to_end(tmp_path: Path) -> None:
    class Linear(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 10))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = MNIST1DDataModule(num_samples=200, data_dir=str(tmp_path), batch_size=16)
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, accelerator="cpu", limit_val_batches=0)
    trainer.fit(Linear(), datamodule=dm)
    assert trainer.global_step == 3
    assert (tmp_path / "mnist1d_n200_seed0.npz").is_file()
