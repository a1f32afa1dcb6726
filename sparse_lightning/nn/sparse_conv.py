"""`SparseConv2d`: an inference Conv2d whose weight is stored in Park et al.'s direct-sparse-conv
CSR format and run by `kernels.sparse_conv2d` (CUDA kernel on GPU, reference on CPU).

    sparse = SparseConv2d.from_dense(pruned_conv)      # zeros (and weight_mask) define sparsity
    y = sparse(x)                                      # == pruned_conv(x)
    conv = sparse.to_dense()
"""

from __future__ import annotations

import torch
from torch import nn

from sparse_lightning.kernels.formats import (
    ConvCSR,
    Padding,
    as_pair,
    conv_csr_to_dense,
    conv_input_offsets,
    dense_to_conv_csr,
    max_block_nnz,
    resolve_padding,
)
from sparse_lightning.kernels.sparse_conv import sparse_conv2d
from sparse_lightning.nn._buffers import VariableBuffers, masked_weight


class SparseConv2d(VariableBuffers):
    """Conv2d (any stride, padding, dilation, groups; zero padding) with a CSR weight: one row per
    output channel, each nonzero carrying its precomputed input offset. Inference only."""

    _variable_buffers = ("colidx", "values")

    def __init__(self, weight: ConvCSR, bias: torch.Tensor | None = None, stride=1,
                 padding: Padding = 0, dilation=1) -> None:
        super().__init__()
        self.in_channels, self.out_channels = weight.in_channels, weight.out_channels
        self.kernel_size, self.groups = weight.kernel_size, weight.groups
        self.stride, self.dilation = as_pair(stride), as_pair(dilation)
        self.padding = padding if isinstance(padding, (int, str)) else tuple(padding)
        self.register_buffer("rowptr", weight.rowptr)  # (N + 1,) int32
        self.register_buffer("colidx", weight.colidx)  # (nnz,) int32 (c, r, s) column
        self.register_buffer("values", weight.values)  # (nnz,)
        self.register_buffer("perm", weight.perm)  # (N,) int32 row -> output channel
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._reset_caches()

    def _reset_caches(self) -> None:
        self._offsets: dict[tuple[int, int], torch.Tensor] = {}
        self._block_nnz = max_block_nnz(self.rowptr)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d) -> SparseConv2d:
        if conv.padding_mode != "zeros":
            raise ValueError(f"SparseConv2d supports padding_mode='zeros', not {conv.padding_mode!r}")
        weight, mask = masked_weight(conv)
        bias = None if conv.bias is None else conv.bias.detach()
        return cls(dense_to_conv_csr(weight, mask, conv.groups), bias, conv.stride, conv.padding,
                   conv.dilation)

    @property
    def csr(self) -> ConvCSR:
        return ConvCSR(self.rowptr, self.colidx, self.values, self.perm, self.out_channels,
                       self.in_channels, self.kernel_size, self.groups, self._block_nnz)

    @property
    def sparsity(self) -> float:
        kh, kw = self.kernel_size
        return 1.0 - self.values.numel() / (self.out_channels * (self.in_channels // self.groups) * kh * kw)

    def dense_weight(self) -> torch.Tensor:
        return conv_csr_to_dense(self.csr)  # (N, C/groups, R, S)

    def to_dense(self) -> nn.Conv2d:
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                         self.padding, self.dilation, self.groups, bias=self.bias is not None,
                         device=self.values.device, dtype=self.values.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, N, Hout, Wout)
        hw = (x.shape[-2], x.shape[-1])
        if hw not in self._offsets:
            pads = resolve_padding(self.padding, self.kernel_size, self.dilation, self.stride)
            self._offsets[hw] = conv_input_offsets(self.csr, hw, pads, self.dilation)
        return sparse_conv2d(x, self.csr, self.bias, self.stride, self.padding, self.dilation,
                             offsets=self._offsets[hw])

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, nnz={self.values.numel()}, sparsity={self.sparsity:.3f}")
