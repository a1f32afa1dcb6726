"""sparse_lightning: sparse training for PyTorch Lightning.

Add one callback to a Trainer, e.g. ``Trainer(callbacks=[MagnitudePruning(0.9, at_epoch=5)])``,
or run ``sparse-train`` with Hydra configs. Every config ``_target_`` points into this namespace.
"""

from sparse_lightning.callbacks import (
    STR,
    GradualPruning,
    IterativePruning,
    MagnitudePruning,
    MaskedPruningCallback,
    RandomState,
    SparsityMonitor,
)
from sparse_lightning.callbacks.deprune import DEPrune
from sparse_lightning.callbacks.gsl import GuidedSparsity
from sparse_lightning.criteria import magnitude_masks
from sparse_lightning.data import CIFAR10DataModule, DigitsDataModule, MNIST1DDataModule, SyntheticDataModule
from sparse_lightning.errors import ConfigError
from sparse_lightning.masks import (
    apply_masks,
    attach_masks,
    attach_masks_from_state_dict,
    get_masks,
    mask_digest,
    select_parameters,
    set_masks,
)
from sparse_lightning.perf import HardwareProfile, get_profile, layer_costs, useful_range
from sparse_lightning.nn import PrunedDepthwiseConv2d, SparseConv2d, SparseLinear, convert
from sparse_lightning.models import (
    CNN1d,
    Classifier,
    EfficientNetB0,
    GRUClassifier,
    LeNet5,
    MLP,
    MobileNetV2,
    MobileNetV3Small,
    ResNet20,
)
from sparse_lightning.reparam import apply_str, export_lowrank_factors, export_str_state_dict, fix_ranks, remove_str
from sparse_lightning.stats import global_sparsity, layer_sparsity

__version__ = "0.1.0"

__all__ = [
    "CIFAR10DataModule",
    "CNN1d",
    "Classifier",
    "ConfigError",
    "DEPrune",
    "DigitsDataModule",
    "EfficientNetB0",
    "GRUClassifier",
    "GradualPruning",
    "GuidedSparsity",
    "HardwareProfile",
    "IterativePruning",
    "LeNet5",
    "MLP",
    "MNIST1DDataModule",
    "MobileNetV2",
    "MobileNetV3Small",
    "MagnitudePruning",
    "MaskedPruningCallback",
    "PrunedDepthwiseConv2d",
    "ResNet20",
    "STR",
    "SparseConv2d",
    "SparseLinear",
    "RandomState",
    "SparsityMonitor",
    "SyntheticDataModule",
    "apply_masks",
    "apply_str",
    "attach_masks",
    "attach_masks_from_state_dict",
    "convert",
    "export_lowrank_factors",
    "export_str_state_dict",
    "fix_ranks",
    "get_masks",
    "get_profile",
    "global_sparsity",
    "layer_costs",
    "layer_sparsity",
    "magnitude_masks",
    "mask_digest",
    "remove_str",
    "select_parameters",
    "set_masks",
    "useful_range",
]
