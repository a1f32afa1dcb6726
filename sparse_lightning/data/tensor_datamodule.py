"""The shared base of every datamodule: in-memory tensors, a seeded stratified val split, loaders.

A subclass sets ``input_shape`` and ``num_classes`` in ``__init__`` and implements ``_load()``,
which returns ``(x_train, y_train, x_test, y_test)`` with ``x`` shaped ``(N, *input_shape)``.
The base carves the validation split from train, standardizes with train statistics (unless
the subclass normalizes in its batch transform, as CIFAR-10 does) and builds the loaders. The
train loader shuffles in an order that depends only on (seed, epoch), so a run resumed from an
end-of-epoch checkpoint sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterator, Sized
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, RandomSampler, TensorDataset
from typing_extensions import override

from sparse_lightning.errors import ConfigError

log = logging.getLogger(__name__)

Arrays = tuple[Tensor, Tensor, Tensor, Tensor]


def check_int(name: str, value: Any, minimum: int) -> int:
    """Returns ``value`` if it is an int >= ``minimum``, else raises a one-line ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_fraction(name: str, value: Any) -> float:
    """Returns ``value`` as a float if it lies in the open interval (0, 1), else raises."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ConfigError(f"{name} must be a float in (0, 1), got {value!r}")
    return float(value)


def stratified_split(y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Splits indices of ``y`` into (kept, held out), holding out ``round(fraction * n_c)`` per class.

    Deterministic for a given ``seed``; both index tensors are sorted.
    """
    generator = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for label in torch.unique(y):
        idx = torch.nonzero(y == label).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_held = round(fraction * len(idx))
        held.append(idx[:n_held])
        kept.append(idx[n_held:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


class EpochShuffleSampler(RandomSampler):
    """A permutation of ``range(len(data_source))`` drawn from ``torch.Generator().manual_seed(seed + epoch)``.

    Unlike ``shuffle=True``, which draws from the global RNG (not in Lightning's checkpoints), the order
    of an epoch is the same in a resumed run. Lightning calls ``set_epoch`` at each epoch start with the
    epoch from its (restored) loop state. A ``RandomSampler`` on purpose: under a distributed strategy
    Lightning replaces it with a ``DistributedSampler(shuffle=True, seed=PL_GLOBAL_SEED)``, which also
    shuffles by seed + epoch (a custom sampler would be wrapped instead, and never see ``set_epoch``).
    """

    def __init__(self, data_source: Sized, seed: int) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @override
    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class TensorDataModule(pl.LightningDataModule):
    """In-memory classification data; batches are ``(x, y)``, x float32 ``(B, *input_shape)``, y int64.

    Args:
        batch_size: samples per batch, >= 1.
        num_workers: DataLoader worker processes, >= 0.
        seed: seeds generation (where there is any) and the train/val split, >= 0.
        val_fraction: fraction of the training data held out for validation, in (0, 1).
    """

    input_shape: tuple[int, ...]
    num_classes: int
    standardize: bool = True  # scalar mean/std of the train split; False if the subclass normalizes

    def __init__(self, batch_size: int = 128, num_workers: int = 0, seed: int = 0,
                 val_fraction: float = 0.1) -> None:
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.seed = check_int("seed", seed, 0)
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None
        self.test_dataset: TensorDataset | None = None

    @abc.abstractmethod
    def _load(self) -> Arrays:
        """Returns ``(x_train, y_train, x_test, y_test)``; x is ``(N, *input_shape)``, y int64."""

    def _collate(self, train: bool) -> Callable[[list], Any] | None:
        """The loader's collate_fn (a picklable object, for worker processes); None for default."""
        return None

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:  # Lightning calls setup once per stage
            return
        x_train, y_train, x_test, y_test = self._load()
        kept, held = stratified_split(y_train, self.val_fraction, self.seed)
        if len(held) == 0 or len(kept) == 0:
            raise ConfigError(f"val_fraction={self.val_fraction} leaves an empty train or val split "
                              f"of {len(y_train)} training samples")
        x_val, y_val = x_train[held], y_train[held]
        x_train, y_train = x_train[kept], y_train[kept]
        if self.standardize:
            mean, std = x_train.mean(), x_train.std().clamp_min(1e-8)
            x_train, x_val, x_test = ((x - mean) / std for x in (x_train, x_val, x_test))
        self.train_dataset = TensorDataset(x_train, y_train.long())
        self.val_dataset = TensorDataset(x_val, y_val.long())
        self.test_dataset = TensorDataset(x_test, y_test.long())
        log.info("%s: %d train, %d val, %d test samples of shape %s", type(self).__name__,
                 len(y_train), len(y_val), len(y_test), self.input_shape)

    def _loader(self, dataset: TensorDataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its dataloaders")
        sampler = EpochShuffleSampler(dataset, self.seed) if train else None
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.num_workers, collate_fn=self._collate(train),
                          persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, train=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, train=False)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, train=False)
