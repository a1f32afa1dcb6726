"""Synthetic classification data of any input shape: fixed class templates plus Gaussian noise.

Deterministic for a seed and learnable (each class is a template), so tests use it as a fast
stand-in for real data of any shape, from ``(1, 40)`` signals to ``(3, 32, 32)`` images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from typing_extensions import override

from sparse_lightning.data.tensor_datamodule import (
    Arrays,
    TensorDataModule,
    check_int,
    stratified_split,
)
from sparse_lightning.errors import ConfigError

TEST_FRACTION = 0.2


def check_shape(name: str, value: object) -> tuple[int, ...]:
    """Returns ``value`` as a tuple if it is a non-empty sequence of ints >= 1, else raises."""
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0 and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in value)
    if not ok:
        raise ConfigError(f"{name} must be a non-empty list of integers >= 1, got {value!r}")
    return tuple(int(d) for d in value)


class SyntheticDataModule(TensorDataModule):
    """``x = template[y] + noise * N(0, I)`` with templates drawn from N(0, I); 20% held out for test.

    Args:
        input_shape: per-sample shape, e.g. ``(1, 40)`` or ``(3, 32, 32)``; every entry >= 1.
        num_classes: number of classes (and templates), >= 2.
        num_samples: samples generated in all (train, val and test), >= 10 per class.
        noise: standard deviation of the per-sample noise, >= 0; larger is harder.
        batch_size, num_workers, seed, val_fraction: see ``TensorDataModule``.
    """

    def __init__(self, input_shape: Sequence[int] = (1, 40), num_classes: int = 10,
                 num_samples: int = 2048, noise: float = 1.0, batch_size: int = 128,
                 num_workers: int = 0, seed: int = 0, val_fraction: float = 0.1) -> None:
        super().__init__(batch_size, num_workers, seed, val_fraction)
        self.save_hyperparameters()
        self.input_shape = check_shape("input_shape", input_shape)
        self.hparams["input_shape"] = list(self.input_shape)  # a ListConfig or tuple logs badly
        self.num_classes = check_int("num_classes", num_classes, 2)
        self.num_samples = check_int("num_samples", num_samples, 10 * self.num_classes)
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
            raise ConfigError(f"noise must be a float >= 0, got {noise!r}")
        self.noise = float(noise)

    @override
    def _load(self) -> Arrays:
        generator = torch.Generator().manual_seed(self.seed)
        templates = torch.randn(self.num_classes, *self.input_shape, generator=generator)
        y = torch.arange(self.num_samples) % self.num_classes
        y = y[torch.randperm(self.num_samples, generator=generator)]
        x = templates[y] + self.noise * torch.randn(self.num_samples, *self.input_shape,
                                                    generator=generator)  # (N, *input_shape)
        train, test = stratified_split(y, TEST_FRACTION, self.seed + 1)
        return x[train], y[train], x[test], y[test]
