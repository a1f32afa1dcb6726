"""Sparse inference modules and `convert()` (swap pruned layers for them)."""

from sparse_lightning.nn.convert import LayerDecision, convert
from sparse_lightning.nn.depthwise import PrunedDepthwiseConv2d
from sparse_lightning.nn.sparse_conv import SparseConv2d
from sparse_lightning.nn.sparse_linear import SparseLinear

__all__ = ["LayerDecision", "PrunedDepthwiseConv2d", "SparseConv2d", "SparseLinear", "convert"]
