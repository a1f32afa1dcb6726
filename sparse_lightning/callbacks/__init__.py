"""Lightning callbacks: pruning methods, the sparsity monitor and the RNG state for exact resume."""

from sparse_lightning.callbacks.base import MaskedPruningCallback
from sparse_lightning.callbacks.gradual import GradualPruning
from sparse_lightning.callbacks.iterative import IterativePruning
from sparse_lightning.callbacks.monitor import SparsityMonitor
from sparse_lightning.callbacks.pruning import MagnitudePruning
from sparse_lightning.callbacks.random_state import RandomState
from sparse_lightning.callbacks.str import STR

__all__ = ["GradualPruning", "IterativePruning", "MaskedPruningCallback", "MagnitudePruning", "RandomState", "STR", "SparsityMonitor"]
