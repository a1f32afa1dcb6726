"""CIFAR-10 read from a local copy in its python-pickle layout; nothing is downloaded.

``data_dir`` is the ``cifar-10-batches-py`` folder (``data_batch_1..5``, ``test_batch``, as
extracted from ``cifar-10-python.tar.gz``) or its parent. Images stay uint8 in memory; each
batch is augmented (random crop with 4-pixel zero padding, horizontal flip; train only) and
normalized with the CIFAR-10 channel mean/std in the loader's collate step, in plain torch.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import default_collate
from typing_extensions import override

from sparse_lightning.data.tensor_datamodule import Arrays, TensorDataModule
from sparse_lightning.errors import ConfigError

log = logging.getLogger(__name__)

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
FOLDER = "cifar-10-batches-py"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def find_cifar10_dir(data_dir: str) -> Path:
    """Returns the folder holding the CIFAR-10 batches: ``data_dir`` or ``data_dir/cifar-10-batches-py``."""
    expected = f"(expected data_batch_1..5 and {TEST_FILE} from cifar-10-python.tar.gz)"
    if not isinstance(data_dir, (str, os.PathLike)) or not str(data_dir):
        raise ConfigError(f"data_dir must be the path of a CIFAR-10 directory {expected}, got {data_dir!r}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"CIFAR-10 directory not found: {root} {expected}")
    missing_by_dir = {}
    for candidate in (root, root / FOLDER):
        missing_by_dir[candidate] = [f for f in (*TRAIN_FILES, TEST_FILE) if not (candidate / f).is_file()]
        if not missing_by_dir[candidate]:
            return candidate
    where, missing = min(missing_by_dir.items(), key=lambda item: len(item[1]))
    raise ConfigError(f"CIFAR-10 directory incomplete: {where} lacks {', '.join(missing)} {expected}")


def read_batch(path: Path) -> tuple[Tensor, Tensor]:
    """Reads one pickled batch: images uint8 ``(N, 3, 32, 32)`` and labels int64 ``(N,)``."""
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    x = torch.as_tensor(batch[b"data"], dtype=torch.uint8).reshape(-1, 3, 32, 32)
    return x, torch.as_tensor(batch[b"labels"], dtype=torch.int64)


class CIFAR10Batch:
    """Collates uint8 samples into a normalized float32 batch, optionally augmenting it.

    A class rather than a closure so DataLoader workers can pickle it.
    """

    def __init__(self, augment: bool) -> None:
        self.augment = augment
        self.mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(STD).view(1, 3, 1, 1)

    def __call__(self, samples: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        x, y = default_collate(samples)  # x: (B, 3, 32, 32) uint8
        if self.augment:
            x = random_crop_flip(x, padding=4)
        return (x.float() / 255.0 - self.mean) / self.std, y


def random_crop_flip(x: Tensor, padding: int) -> Tensor:
    """Per-image random crop of a zero-padded batch back to its size, then a random h-flip."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)  # (B, C, H + 2p, W + 2p)
    top = torch.randint(0, 2 * padding + 1, (b, 1))
    left = torch.randint(0, 2 * padding + 1, (b, 1))
    rows = (top + torch.arange(h))[:, None, :, None]  # (B, 1, H, 1)
    cols = (left + torch.arange(w))[:, None, None, :]  # (B, 1, 1, W)
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None],
                 rows, cols]  # (B, C, H, W)
    flip = torch.rand(b) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


class CIFAR10DataModule(TensorDataModule):
    """CIFAR-10 from disk, inputs ``(3, 32, 32)``, 10 classes; val carved from the 50,000 train images.

    Args:
        data_dir: the ``cifar-10-batches-py`` folder or its parent; checked here, before training.
        augment: random crop (4-pixel padding) and horizontal flip on training batches.
        batch_size, num_workers, seed, val_fraction: see ``TensorDataModule``.
    """

    standardize = False  # normalized per channel with the CIFAR-10 constants in CIFAR10Batch

    def __init__(self, data_dir: str, augment: bool = True, batch_size: int = 128,
                 num_workers: int = 0, seed: int = 0, val_fraction: float = 0.1) -> None:
        super().__init__(batch_size, num_workers, seed, val_fraction)
        self.save_hyperparameters()
        if not isinstance(augment, bool):
            raise ConfigError(f"augment must be true or false, got {augment!r}")
        self.augment = augment
        self.data_dir = find_cifar10_dir(data_dir)
        self.input_shape = (3, 32, 32)
        self.num_classes = 10

    @override
    def _load(self) -> Arrays:
        log.info("Reading CIFAR-10 from %s", self.data_dir)
        train = [read_batch(self.data_dir / f) for f in TRAIN_FILES]
        x_test, y_test = read_batch(self.data_dir / TEST_FILE)
        x_train = torch.cat([x for x, _ in train])
        y_train = torch.cat([y for _, y in train])
        return x_train, y_train, x_test, y_test

    @override
    def _collate(self, train: bool) -> Callable[[list], Any]:
        return CIFAR10Batch(augment=self.augment and train)
