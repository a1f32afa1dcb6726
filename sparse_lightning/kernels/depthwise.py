"""Depthwise convolution on CUDA tensors (`cuda_kernels/depthwise.cu`), references elsewhere.

* `depthwise_conv2d(x, weight (C, 1, kh, kw), ...)`: dense, NCHW or channels_last (the output keeps
  the input's layout). Square 3/5/7 kernels with stride 1/2 and no dilation take the register
  sliding-window kernels; anything else the generic one.
* `pruned_depthwise_conv2d(x, BalancedDepthwise, ...)`: DEPrune-pruned taps, direct per-channel
  kernel with work split evenly inside each 32-channel group. NCHW; a channels_last input is
  converted to NCHW and back (two extra copies).
"""

from __future__ import annotations

import numpy as np
import torch

from sparse_lightning.kernels import backend, loader
from sparse_lightning.kernels.formats import (
    DW_GROUP,
    BalancedDepthwise,
    Padding,
    as_pair,
    conv_output_size,
    resolve_padding,
)
from sparse_lightning.kernels.reference import depthwise_conv2d_ref, pruned_depthwise_conv2d_ref

THREADS = 256
FAST_KERNELS, FAST_STRIDES = (3, 5, 7), (1, 2)


def is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _device(x: torch.Tensor) -> int:
    return x.device.index if x.device.index is not None else torch.cuda.current_device()


def _check(x: torch.Tensor, channels: int) -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"expected input (B, {channels}, H, W), got {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16):
        raise TypeError(f"depthwise kernels support float32 and float16 inputs, got {x.dtype}")


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride=1, padding: Padding = 0, dilation=1) -> torch.Tensor:
    """Dense depthwise conv (groups = C, one filter per channel). x: (B, C, H, W) -> (B, C, Ho, Wo)."""
    if not backend.use_cuda_kernel(x):
        return depthwise_conv2d_ref(x, weight, bias, stride, padding, dilation)
    _check(x, weight.shape[0])
    b, c, h, w = x.shape
    kh, kw = weight.shape[-2:]
    pads = resolve_padding(padding, (kh, kw), dilation, stride)
    hout, wout = conv_output_size((h, w), (kh, kw), stride, pads, dilation)
    (sh, sw), (dh, dw) = as_pair(stride), as_pair(dilation)
    nhwc = is_channels_last(x)
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    y = torch.empty(b, c, hout, wout, dtype=x.dtype, device=x.device, memory_format=fmt)
    if y.numel() == 0:
        return y
    backend.check_int32(c * h * w, c * hout * wout)
    wt = weight.reshape(c, kh * kw).to(x.dtype).contiguous()  # (C, kh*kw)
    bias32 = None if bias is None else bias.float().contiguous()
    dev, ctype = _device(x), loader.CTYPES[str(x.dtype)[6:]]
    fast = kh == kw and kh in FAST_KERNELS and sh == sw and sh in FAST_STRIDES and (dh, dw) == (1, 1)
    if not fast:
        total = b * c * hout * wout
        args = backend.kernel_args(x, wt, bias32, y, c, h, w, hout, wout, kh, kw, sh, sw,
                                   pads[0], pads[2], dh, dw, int(nhwc), np.int64(total))
        loader.launch("depthwise", f"dw_generic<{ctype}>", (-(-total // THREADS),), (THREADS,), args, dev)
        return y
    rows = 8 if kh >= 5 else 4  # output rows per thread (RowsPerThread in the .cu)
    columns = b * (-(-hout // rows)) * wout
    expr = f"<{ctype}, {kh}, {sh}>"
    if nhwc:
        gx = -(-c // 32)
        gy = max(1, min(-(-columns // 8), 65535, -(-8 * backend.sm_count(dev) // gx)))
        args = backend.kernel_args(x, wt, bias32, y, b, c, h, w, hout, wout, pads[0], pads[2])
        loader.launch("depthwise", "dw_dense_nhwc" + expr, (gx, gy), (32, 8), args, dev)
    else:
        total = columns * c
        args = backend.kernel_args(x, wt, bias32, y, c, h, w, hout, wout, pads[0], pads[2],
                                   np.int64(total))
        loader.launch("depthwise", "dw_dense_nchw" + expr, (-(-total // THREADS),), (THREADS,), args, dev)
    return y


def pruned_tile(hw: int, groups_times_batch: int, sms: int) -> int:
    """P (pixels per lane, tile = 32P): no bigger than the plane needs, then smaller while there
    are fewer than 4 CTAs per SM."""
    p = next((v for v in (1, 2, 4, 8) if 32 * v >= hw), 8)
    while p > 1 and groups_times_batch * (-(-hw // (32 * p))) < 4 * sms:
        p //= 2
    return p


def pruned_depthwise_conv2d(x: torch.Tensor, weight: BalancedDepthwise,
                            bias: torch.Tensor | None = None, stride=1, padding: Padding = 0,
                            dilation=1) -> torch.Tensor:
    """Depthwise conv with DEPrune-pruned taps. x: (B, C, H, W) -> (B, C, Hout, Wout)."""
    if not backend.use_cuda_kernel(x):
        return pruned_depthwise_conv2d_ref(x, weight, bias, stride, padding, dilation)
    _check(x, weight.channels)
    b, c, h, w = x.shape
    pads = resolve_padding(padding, weight.kernel_size, dilation, stride)
    hout, wout = conv_output_size((h, w), weight.kernel_size, stride, pads, dilation)
    (sh, sw), (dh, dw) = as_pair(stride), as_pair(dilation)
    channels_last = is_channels_last(x)
    xc = x.contiguous()
    y = torch.empty(b, c, hout, wout, dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    backend.check_int32(c * h * w, hout * wout)
    dev, ctype = _device(x), loader.CTYPES[str(x.dtype)[6:]]
    groups = -(-c // DW_GROUP)
    p = pruned_tile(hout * wout, groups * b, backend.sm_count(dev))
    grid = (b * -(-(hout * wout) // (32 * p)), groups)
    args = backend.kernel_args(xc, weight.group_ptr, weight.taps, weight.values.to(x.dtype),
                               None if bias is None else bias.float().contiguous(), y,
                               c, h, w, hout, wout, sh, sw, pads[0], pads[2], dh, dw)
    loader.launch("depthwise", f"dw_pruned_nchw<{ctype}, {p}>", grid, (THREADS,), args, dev)
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y
