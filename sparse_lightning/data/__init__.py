"""LightningDataModules: MNIST-1D (the default, generated offline), digits, synthetic, CIFAR-10 from disk."""

from sparse_lightning.data.cifar10 import CIFAR10DataModule
from sparse_lightning.data.digits import DigitsDataModule
from sparse_lightning.data.mnist1d import MNIST1DDataModule
from sparse_lightning.data.synthetic import SyntheticDataModule
from sparse_lightning.data.tensor_datamodule import TensorDataModule

__all__ = [
    "CIFAR10DataModule",
    "DigitsDataModule",
    "MNIST1DDataModule",
    "SyntheticDataModule",
    "TensorDataModule",
]
