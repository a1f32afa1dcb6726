"""Pure-torch references of the CUDA kernels, with the wrappers' signatures. They are the spec: each
computes exactly what its kernel computes (same format, same offsets, fp32 accumulation, output in
the input's dtype) and is what CPU users run. Tests check them against F.conv2d / F.linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparse_lightning.kernels.formats import (
    DW_GROUP,
    BalancedDepthwise,
    ConvCSR,
    CSRMatrix,
    Padding,
    as_pair,
    conv_input_offsets,
    conv_output_size,
    resolve_padding,
    row_ids,
)

_CHUNK_ELEMENTS = 1 << 22  # gathered elements per step: bounds the reference's memory


def _bias(bias: torch.Tensor | None, n: int, device) -> torch.Tensor:
    return bias.float() if bias is not None else torch.zeros(n, device=device)


def sparse_conv2d_ref(x: torch.Tensor, weight: ConvCSR, bias: torch.Tensor | None = None,
                      stride=1, padding: Padding = 0, dilation=1,
                      offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Direct sparse convolution (Park et al.) on the virtual dense matrix of the padded input:
    O[b, n, q] = bias[n] + sum_j value[j] * Xp[b, g(n)*Cg*Hp*Wp + offset[j] + pix(q)],
    pix(y, x) = y*sh*Wp + x*sw. x: (B, C, H, W) -> (B, N, Hout, Wout)."""
    b, c, h, w = x.shape
    if c != weight.in_channels:
        raise ValueError(f"input has {c} channels, the sparse weight expects {weight.in_channels}")
    pads = resolve_padding(padding, weight.kernel_size, dilation, stride)
    hout, wout = conv_output_size((h, w), weight.kernel_size, stride, pads, dilation)
    (sh, sw), n = as_pair(stride), weight.out_channels
    xp = F.pad(x.float(), (pads[2], pads[3], pads[0], pads[1]))  # (B, C, Hp, Wp)
    hp, wp = xp.shape[-2:]
    if offsets is None:
        offsets = conv_input_offsets(weight, (h, w), pads, dilation)
    channel = weight.perm.long()[row_ids(weight.rowptr)]  # (nnz,) output channel of each nonzero
    group = channel // (n // weight.groups)
    base = group * (c // weight.groups) * hp * wp + offsets.long()  # (nnz,)
    pix = (torch.arange(hout, device=x.device) * sh * wp)[:, None] \
        + (torch.arange(wout, device=x.device) * sw)[None, :]
    pix = pix.reshape(-1)  # (HW,)
    xflat = xp.reshape(b, -1)  # (B, C*Hp*Wp)
    out = torch.zeros(b, n, hout * wout, device=x.device)  # (B, N, HW) fp32
    step = max(1, _CHUNK_ELEMENTS // (b * pix.numel()))
    values = weight.values.float()
    for j in range(0, weight.nnz, step):
        idx = base[j:j + step, None] + pix[None, :]  # (nc, HW)
        contrib = xflat[:, idx] * values[j:j + step, None]  # (B, nc, HW)
        out.index_add_(1, channel[j:j + step], contrib)
    out += _bias(bias, n, x.device)[None, :, None]
    return out.reshape(b, n, hout, wout).to(x.dtype)


def sparse_linear_ref(x: torch.Tensor, weight: CSRMatrix,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x W^T + b with W in CSR: y[m, n] = b[n] + sum_j value[j] * x[m, colidx[j]].
    x: (..., K) -> (..., N)."""
    n, k = weight.shape
    if x.shape[-1] != k:
        raise ValueError(f"input has {x.shape[-1]} features, the sparse weight expects {k}")
    x2 = x.reshape(-1, k).float()  # (M, K)
    y = torch.zeros(x2.shape[0], n, device=x.device)  # (M, N)
    rows, cols, values = row_ids(weight.rowptr), weight.colidx.long(), weight.values.float()
    step = max(1, _CHUNK_ELEMENTS // max(1, x2.shape[0]))
    for j in range(0, weight.nnz, step):
        y.index_add_(1, rows[j:j + step], x2[:, cols[j:j + step]] * values[j:j + step])
    y += _bias(bias, n, x.device)
    return y.reshape(*x.shape[:-1], n).to(x.dtype)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


def depthwise_conv2d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                         stride=1, padding: Padding = 0, dilation=1) -> torch.Tensor:
    """Dense depthwise convolution, weight (C, 1, kh, kw), fp32 accumulation; the output keeps the
    input's memory format (NCHW or channels_last)."""
    c = x.shape[1]
    if weight.shape[0] != c or weight.shape[1] != 1:
        raise ValueError(f"depthwise weight must be ({c}, 1, kh, kw), got {tuple(weight.shape)}")
    pt, pb, pl, pr = resolve_padding(padding, tuple(weight.shape[-2:]), dilation, stride)
    xp = F.pad(x.float(), (pl, pr, pt, pb))
    out = F.conv2d(xp, weight.float(), None if bias is None else bias.float(), stride, 0,
                   dilation, groups=c)
    return out.to(x.dtype).contiguous(memory_format=_memory_format(x))


def pruned_depthwise_conv2d_ref(x: torch.Tensor, weight: BalancedDepthwise,
                                bias: torch.Tensor | None = None, stride=1,
                                padding: Padding = 0, dilation=1) -> torch.Tensor:
    """Pruned depthwise convolution from the kept taps alone:
    O[b, c] = bias[c] + sum_{kept (c, r, s)} w * Xp[b, c, r*dh + y*sh, s*dw + x*sw],
    computed per tap position (r, s) with a per-channel weight vector (zero where pruned)."""
    b, c, h, w = x.shape
    if c != weight.channels:
        raise ValueError(f"input has {c} channels, the pruned weight expects {weight.channels}")
    pads = resolve_padding(padding, weight.kernel_size, dilation, stride)
    hout, wout = conv_output_size((h, w), weight.kernel_size, stride, pads, dilation)
    (sh, sw), (dh, dw) = as_pair(stride), as_pair(dilation)
    xp = F.pad(x.float(), (pads[2], pads[3], pads[0], pads[1]))  # (B, C, Hp, Wp)
    taps = weight.taps.long()
    channel = row_ids(weight.group_ptr) * DW_GROUP + (taps >> 16)  # (E,)
    r, s = (taps >> 8) & 255, taps & 255
    kh, kw = weight.kernel_size
    per_tap = torch.zeros(kh * kw, c, device=x.device)  # (kh*kw, C): weight of tap (r, s), channel c
    per_tap[r * kw + s, channel] = weight.values.float()
    out = _bias(bias, c, x.device)[None, :, None, None].expand(b, c, hout, wout).clone()
    for t in torch.unique(r * kw + s).tolist():
        ry, sx = divmod(t, kw)
        window = xp[:, :, ry * dh: ry * dh + (hout - 1) * sh + 1: sh,
                    sx * dw: sx * dw + (wout - 1) * sw + 1: sw]  # (B, C, Hout, Wout)
        out += per_tap[t][None, :, None, None] * window
    return out.to(x.dtype).contiguous(memory_format=_memory_format(x))
