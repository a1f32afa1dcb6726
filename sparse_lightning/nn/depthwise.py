"""`PrunedDepthwiseConv2d`: a depthwise Conv2d pruned DEPrune-style, stored as the kept taps of
each 32-channel group (`BalancedDepthwise`) and run by `kernels.pruned_depthwise_conv2d`.

    dw = PrunedDepthwiseConv2d.from_dense(pruned_dw)    # groups == in == out channels
    y = dw(x)                                           # == pruned_dw(x)
"""

from __future__ import annotations

import torch
from torch import nn

from sparse_lightning.kernels.depthwise import pruned_depthwise_conv2d
from sparse_lightning.kernels.formats import (
    BalancedDepthwise,
    Padding,
    as_pair,
    balanced_depthwise_to_dense,
    dense_to_balanced_depthwise,
)
from sparse_lightning.nn._buffers import VariableBuffers, masked_weight


def is_depthwise(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.groups == conv.in_channels == conv.out_channels
            and conv.groups > 1)


class PrunedDepthwiseConv2d(VariableBuffers):
    """Depthwise conv (one k x k filter per channel) computing only the kept taps; the work of
    each 32-channel group is split evenly over a thread block, so BWT-balanced masks (equal kept
    count per group, `formats.bwt_mask`) give equal work per block. Inference only."""

    _variable_buffers = ("taps", "values")

    def __init__(self, weight: BalancedDepthwise, bias: torch.Tensor | None = None, stride=1,
                 padding: Padding = 0, dilation=1) -> None:
        super().__init__()
        self.channels, self.kernel_size = weight.channels, weight.kernel_size
        self.stride, self.dilation = as_pair(stride), as_pair(dilation)
        self.padding = padding if isinstance(padding, (int, str)) else tuple(padding)
        self.register_buffer("group_ptr", weight.group_ptr)  # (G + 1,) int32
        self.register_buffer("taps", weight.taps)  # (E,) int32 c_local << 16 | r << 8 | s
        self.register_buffer("values", weight.values)  # (E,)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_dense(cls, conv: nn.Conv2d) -> PrunedDepthwiseConv2d:
        if not is_depthwise(conv):
            raise ValueError("PrunedDepthwiseConv2d needs groups == in_channels == out_channels > 1")
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode={conv.padding_mode!r} is not supported (only 'zeros')")
        weight, mask = masked_weight(conv)
        bias = None if conv.bias is None else conv.bias.detach()
        return cls(dense_to_balanced_depthwise(weight, mask), bias, conv.stride, conv.padding,
                   conv.dilation)

    @property
    def pruned(self) -> BalancedDepthwise:
        return BalancedDepthwise(self.group_ptr, self.taps, self.values, self.channels, self.kernel_size)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.values.numel() / (self.channels * self.kernel_size[0] * self.kernel_size[1])

    def dense_weight(self) -> torch.Tensor:
        return balanced_depthwise_to_dense(self.pruned)  # (C, 1, kh, kw)

    def to_dense(self) -> nn.Conv2d:
        conv = nn.Conv2d(self.channels, self.channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, groups=self.channels, bias=self.bias is not None,
                         device=self.values.device, dtype=self.values.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, Hout, Wout)
        return pruned_depthwise_conv2d(x, self.pruned, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, kept={self.values.numel()}, "
                f"sparsity={self.sparsity:.3f}")
