"""`SparseLinear`: an inference Linear whose weight is CSR, run by `kernels.sparse_linear` (CUDA
kernel on GPU, reference on CPU). For pruned FC layers; GRU/RNN gate matrices use the same op.

    sparse = SparseLinear.from_dense(pruned_fc)        # zeros (and weight_mask) define sparsity
    y = sparse(x)                                      # == pruned_fc(x), any leading batch shape
"""

from __future__ import annotations

import torch
from torch import nn

from sparse_lightning.kernels.formats import CSRMatrix, csr_to_dense, dense_to_csr
from sparse_lightning.kernels.sparse_linear import sparse_linear
from sparse_lightning.nn._buffers import VariableBuffers, masked_weight


class SparseLinear(VariableBuffers):
    """y = x W^T + b with W (out_features x in_features) in CSR. Inference only."""

    _variable_buffers = ("colidx", "values")

    def __init__(self, weight: CSRMatrix, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("rowptr", weight.rowptr)  # (N + 1,) int32
        self.register_buffer("colidx", weight.colidx)  # (nnz,) int32
        self.register_buffer("values", weight.values)  # (nnz,)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> SparseLinear:
        weight, mask = masked_weight(linear)
        return cls(dense_to_csr(weight, mask), None if linear.bias is None else linear.bias.detach())

    @property
    def csr(self) -> CSRMatrix:
        return CSRMatrix(self.rowptr, self.colidx, self.values, (self.out_features, self.in_features))

    @property
    def sparsity(self) -> float:
        return 1.0 - self.values.numel() / (self.out_features * self.in_features)

    def dense_weight(self) -> torch.Tensor:
        return csr_to_dense(self.csr)  # (out_features, in_features)

    def to_dense(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.values.device, dtype=self.values.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.dense_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in_features) -> (..., out_features)
        return sparse_linear(x, self.csr, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, nnz={self.values.numel()}, sparsity={self.sparsity:.3f}")
