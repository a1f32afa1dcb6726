"""Lightning callbacks: pruning methods and the sparsity monitor."""

from sparse_lightning.callbacks.base import MaskedPruningCallback
from sparse_lightning.callbacks.monitor import SparsityMonitor
from sparse_lightning.callbacks.pruning import MagnitudePruning

__all__ = ["MaskedPruningCallback", "MagnitudePruning", "SparsityMonitor"]
