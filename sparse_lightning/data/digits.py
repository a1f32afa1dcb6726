"""scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), shipped with the package.

Pixels (0..16) are scaled to [0, 1], then standardized with train statistics. The test split
and the validation split are both stratified by class and seeded.
"""

from __future__ import annotations

import torch
from typing_extensions import override

from sparse_lightning.data.tensor_datamodule import (
    Arrays,
    TensorDataModule,
    check_fraction,
    stratified_split,
)


class DigitsDataModule(TensorDataModule):
    """sklearn ``load_digits``, inputs ``(1, 8, 8)``, 10 classes.

    Args:
        test_fraction: fraction of all images held out for test, in (0, 1).
        batch_size, num_workers, seed, val_fraction: see ``TensorDataModule``.
    """

    def __init__(self, test_fraction: float = 0.2, batch_size: int = 128, num_workers: int = 0,
                 seed: int = 0, val_fraction: float = 0.1) -> None:
        super().__init__(batch_size, num_workers, seed, val_fraction)
        self.save_hyperparameters()
        self.test_fraction = check_fraction("test_fraction", test_fraction)
        self.input_shape = (1, 8, 8)
        self.num_classes = 10

    @override
    def _load(self) -> Arrays:
        from sklearn.datasets import load_digits  # lazy: sklearn import takes ~1 s

        digits = load_digits()
        x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
        y = torch.as_tensor(digits.target, dtype=torch.int64)
        # a different stream from the val split's, which reuses self.seed on the train part
        train, test = stratified_split(y, self.test_fraction, self.seed + 1)
        return x[train], y[train], x[test], y[test]
