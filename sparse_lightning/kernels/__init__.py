"""CUDA kernels (CuPy, `cuda_kernels/*.cu`) with pure-torch references and the sparse formats they
read. Importing this package never imports CuPy; the ops fall back to the references on CPU."""

from sparse_lightning.kernels.depthwise import depthwise_conv2d, pruned_depthwise_conv2d
from sparse_lightning.kernels.formats import (
    BalancedDepthwise,
    ConvCSR,
    CSRMatrix,
    balanced_depthwise_to_dense,
    bwt_mask,
    conv_csr_to_dense,
    conv_input_offsets,
    csr_to_dense,
    dense_to_balanced_depthwise,
    dense_to_conv_csr,
    dense_to_csr,
)
from sparse_lightning.kernels.sparse_conv import sparse_conv2d
from sparse_lightning.kernels.sparse_linear import sparse_linear

__all__ = [
    "BalancedDepthwise", "CSRMatrix", "ConvCSR", "balanced_depthwise_to_dense", "bwt_mask",
    "conv_csr_to_dense", "conv_input_offsets", "csr_to_dense", "dense_to_balanced_depthwise",
    "dense_to_conv_csr", "dense_to_csr", "depthwise_conv2d", "pruned_depthwise_conv2d",
    "sparse_conv2d", "sparse_linear",
]
