"""`sparse_conv2d`: Park et al.'s direct sparse convolution (`cuda_kernels/sparse_conv.cu`) on CUDA
tensors, `reference.sparse_conv2d_ref` elsewhere.

    y = sparse_conv2d(x, dense_to_conv_csr(conv.weight, groups=conv.groups), conv.bias,
                      stride=1, padding=1)          # x (B, C, H, W) fp32/fp16 -> (B, N, Hout, Wout)
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from sparse_lightning.kernels import backend, loader
from sparse_lightning.kernels.formats import (
    CONV_ROWS_PER_CTA,
    ConvCSR,
    Padding,
    as_pair,
    conv_input_offsets,
    conv_output_size,
    resolve_padding,
)
from sparse_lightning.kernels.reference import sparse_conv2d_ref

THREADS = 256
SMEM_BYTES = 48 * 1024  # default per-CTA dynamic shared memory limit (no opt-in needed)
_PIXELS_PER_THREAD = (8, 4, 2, 1)


@dataclasses.dataclass(frozen=True)
class ConvSchedule:
    """Launch shape: P output pixels per lane, CSR rows per CTA, work items (image, 32P-pixel
    tile) and how many of them each CTA runs with its staged weights."""

    pixels_per_thread: int
    rows_per_cta: int
    items: int
    items_per_cta: int
    grid: tuple[int, int]
    smem_pairs: int

    @property
    def shared_mem(self) -> int:
        return self.smem_pairs * 8 + _partials_bytes(self.rows_per_cta, self.pixels_per_thread)


def _partials_bytes(rows_per_cta: int, p: int) -> int:
    """Split-K partial sums (8 warps x P x 32 lanes fp32) when a CTA has fewer rows than warps."""
    return 8 * p * 32 * 4 if rows_per_cta < 8 else 0


def _pair_capacity(rows_per_cta: int, p: int) -> int:
    return (SMEM_BYTES - _partials_bytes(rows_per_cta, p)) // 8


def conv_schedule(batch: int, out_channels: int, hw: int, max_block_nnz: tuple[int, ...],
                  sms: int) -> ConvSchedule:
    """Heuristic. P (register blocking): the largest that leaves >= 16 (row, tile) warp tasks per
    SM. Rows per CTA: among the sizes giving >= 2 CTAs per SM, the largest whose CSR slice fits
    the shared buffer (fewer rows per CTA means warps split rows: batch-1 layers). Items per CTA:
    as many as keep >= 4 CTAs per SM, so staged weights are reused across tiles and images."""
    for p in _PIXELS_PER_THREAD:
        tiles = -(-hw // (32 * p))
        if out_channels * batch * tiles >= 16 * sms or p == 1:
            break
    items = batch * tiles
    sizes = sorted(zip(CONV_ROWS_PER_CTA, max_block_nnz), reverse=True)
    wide = [(r, nnz) for r, nnz in sizes if -(-out_channels // r) * items >= 2 * sms] or sizes[-1:]
    rows, nnz = next(((r, k) for r, k in wide if k <= _pair_capacity(r, p)), wide[0])
    row_blocks = -(-out_channels // rows)
    per_cta = max(1, min(16, (row_blocks * items) // (4 * sms)), -(-items // 65535))
    return ConvSchedule(p, rows, items, per_cta, (row_blocks, -(-items // per_cta)),
                        min(nnz, _pair_capacity(rows, p)))


def sparse_conv2d(x: torch.Tensor, weight: ConvCSR, bias: torch.Tensor | None = None, stride=1,
                  padding: Padding = 0, dilation=1,
                  offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Direct sparse 2-D convolution, fp32 or fp16 (fp32 accumulation), any stride, padding
    (int, pair, 4-tuple (top, bottom, left, right), 'valid', 'same'), dilation and groups (carried
    by `weight`). `offsets` (from `conv_input_offsets`) may be passed in to skip recomputing them;
    they depend on the input size. x: (B, C, H, W) -> (B, N, Hout, Wout), NCHW."""
    if x.dim() != 4:
        raise ValueError(f"sparse_conv2d expects (B, C, H, W) input, got shape {tuple(x.shape)}")
    if not backend.use_cuda_kernel(x):
        return sparse_conv2d_ref(x, weight, bias, stride, padding, dilation, offsets)
    if x.dtype not in (torch.float32, torch.float16):
        raise TypeError(f"sparse_conv2d supports float32 and float16 inputs, got {x.dtype}")
    b, c, h, w = x.shape
    if c != weight.in_channels:
        raise ValueError(f"input has {c} channels, the sparse weight expects {weight.in_channels}")
    pads = resolve_padding(padding, weight.kernel_size, dilation, stride)
    hout, wout = conv_output_size((h, w), weight.kernel_size, stride, pads, dilation)
    xp = F.pad(x.contiguous(), (pads[2], pads[3], pads[0], pads[1])) if any(pads) else x.contiguous()
    hp, wp = xp.shape[-2:]
    backend.check_int32(c * hp * wp, hout * wout * weight.out_channels)
    if offsets is None:
        offsets = conv_input_offsets(weight, (h, w), pads, dilation)
    elif offsets.numel() != weight.nnz or offsets.dtype != torch.int32:
        raise ValueError("offsets must be conv_input_offsets(weight, ...): (nnz,) int32")
    n, (sh, sw) = weight.out_channels, as_pair(stride)
    out = torch.empty(b, n, hout, wout, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
    plan = conv_schedule(b, n, hout * wout, weight.max_block_nnz, backend.sm_count(dev))
    values = weight.values.to(x.dtype)
    args = backend.kernel_args(
        xp, weight.rowptr, offsets, values, weight.perm,
        None if bias is None else bias.float().contiguous(), out,
        c, hp, wp, n, hout, wout, sh, sw, n // weight.groups, c // weight.groups,
        plan.rows_per_cta, plan.items, plan.items_per_cta, plan.smem_pairs)
    expr = f"sparse_conv2d<{loader.CTYPES[str(x.dtype)[6:]]}, {plan.pixels_per_thread}>"
    loader.launch("sparse_conv", expr, plan.grid, (THREADS,), args, dev, shared_mem=plan.shared_mem)
    return out
