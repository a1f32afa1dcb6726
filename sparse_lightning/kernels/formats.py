"""Sparse weight formats read by the CUDA kernels and their references, built from dense weights
whose zeros (intersected with an optional `weight_mask`) define the sparsity.

* `CSRMatrix`: plain CSR (int32 indices) for `y = x W^T` (pruned Linear/GRU matrices).
* `ConvCSR`: Park et al.'s direct sparse convolution format. One CSR row per output channel over
  the group's (c, r, s) columns (column = (c*R + r)*S + s), rows sorted by nnz (descending) for load
  balance, `perm[row]` = output channel. The per-nonzero input offsets f(c, r*dh, s*dw) =
  (c*Hp + r*dh)*Wp + s*dw depend on the padded input size, so `conv_input_offsets` derives them
  from the columns for a given input size, padding and dilation.
* `BalancedDepthwise`: DEPrune's grouping. Channels in groups of 32 (the diagonal-wise
  refactorization's sub-GEMMs); each group's kept taps packed as (c_local << 16 | r << 8 | s) with
  their values, sorted by (c_local, r, s). `bwt_mask` is Balanced Workload Tuning: the same number
  of kept taps in every group.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

CONV_ROWS_PER_CTA = (1, 2, 4, 8, 16)  # CSR rows per CTA the sparse conv kernel may be given
DW_GROUP = 32  # DEPrune channel group: one sub-GEMM of the diagonal-wise refactorization

Padding = int | tuple[int, int] | tuple[int, int, int, int] | str


def _keep(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    keep = weight != 0
    if mask is not None:
        keep &= mask.to(device=weight.device, dtype=torch.bool).reshape(weight.shape)
    return keep


def _rowptr(counts: torch.Tensor) -> torch.Tensor:
    rowptr = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
    rowptr[1:] = torch.cumsum(counts, 0)
    if int(rowptr[-1]) >= 2**31:
        raise ValueError("more than 2**31 nonzeros: the int32 CSR indices would overflow")
    return rowptr.to(torch.int32)


def row_ids(rowptr: torch.Tensor) -> torch.Tensor:
    """The row of every nonzero, (nnz,) int64."""
    counts = (rowptr[1:] - rowptr[:-1]).long()
    return torch.repeat_interleave(torch.arange(counts.numel(), device=rowptr.device), counts)


def _move(obj, device, dtype):
    changes = {f.name: getattr(obj, f.name).to(device) for f in dataclasses.fields(obj)
               if isinstance(getattr(obj, f.name), torch.Tensor)}
    changes["values"] = obj.values.to(device=device, dtype=dtype or obj.values.dtype)
    return dataclasses.replace(obj, **changes)


@dataclass(frozen=True)
class CSRMatrix:
    rowptr: torch.Tensor  # (rows + 1,) int32
    colidx: torch.Tensor  # (nnz,) int32
    values: torch.Tensor  # (nnz,)
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return self.colidx.numel()

    def to(self, device=None, dtype=None) -> CSRMatrix:
        return _move(self, device, dtype)


def dense_to_csr(matrix: torch.Tensor, mask: torch.Tensor | None = None) -> CSRMatrix:
    """(rows, cols) dense -> CSR of its kept nonzeros, columns ascending within a row."""
    if matrix.dim() != 2:
        raise ValueError(f"dense_to_csr expects a 2-D matrix, got shape {tuple(matrix.shape)}")
    matrix = matrix.detach()
    keep = _keep(matrix, mask)
    rows, cols = keep.nonzero(as_tuple=True)  # row-major order
    return CSRMatrix(_rowptr(keep.sum(1)), cols.to(torch.int32), matrix[rows, cols].clone(),
                     (matrix.shape[0], matrix.shape[1]))


def csr_to_dense(csr: CSRMatrix) -> torch.Tensor:
    dense = torch.zeros(csr.shape, dtype=csr.values.dtype, device=csr.values.device)
    dense[row_ids(csr.rowptr), csr.colidx.long()] = csr.values
    return dense


@dataclass(frozen=True)
class ConvCSR:
    rowptr: torch.Tensor  # (N + 1,) int32, rows in schedule order
    colidx: torch.Tensor  # (nnz,) int32 column (c*R + r)*S + s within the group
    values: torch.Tensor  # (nnz,)
    perm: torch.Tensor  # (N,) int32: row -> output channel
    out_channels: int
    in_channels: int
    kernel_size: tuple[int, int]
    groups: int
    max_block_nnz: tuple[int, ...]  # per CONV_ROWS_PER_CTA entry: largest nnz of a CTA's rows

    @property
    def nnz(self) -> int:
        return self.colidx.numel()

    def to(self, device=None, dtype=None) -> ConvCSR:
        return _move(self, device, dtype)


def max_block_nnz(rowptr: torch.Tensor) -> tuple[int, ...]:
    """For each block size in CONV_ROWS_PER_CTA, the most nonzeros in one aligned block of rows:
    the shared memory a CTA needs to stage its slice of the CSR."""
    n = rowptr.numel() - 1
    out = []
    for rows in CONV_ROWS_PER_CTA:
        starts = torch.arange(0, max(n, 1), rows, device=rowptr.device)
        ends = torch.clamp(starts + rows, max=n)
        out.append(int((rowptr[ends] - rowptr[starts]).max()) if n else 0)
    return tuple(out)


def dense_to_conv_csr(weight: torch.Tensor, mask: torch.Tensor | None = None,
                      groups: int = 1) -> ConvCSR:
    """Conv weight (N, C/groups, R, S) -> ConvCSR, rows sorted by nnz (descending, stable)."""
    if weight.dim() != 4:
        raise ValueError(f"conv weight must be (N, C/groups, R, S), got {tuple(weight.shape)}")
    n, cg, r, s = weight.shape
    if groups < 1 or n % groups:
        raise ValueError(f"out_channels={n} is not divisible by groups={groups}")
    w2 = weight.detach().reshape(n, cg * r * s)  # (N, Cg*R*S)
    keep = _keep(weight.detach(), mask).reshape(n, -1)
    counts = keep.sum(1)
    perm = torch.sort(counts, descending=True, stable=True).indices
    keep, w2 = keep[perm], w2[perm]
    rows, cols = keep.nonzero(as_tuple=True)
    rowptr = _rowptr(counts[perm])
    return ConvCSR(rowptr, cols.to(torch.int32), w2[rows, cols].clone(), perm.to(torch.int32),
                   n, cg * groups, (r, s), groups, max_block_nnz(rowptr))


def conv_csr_to_dense(w: ConvCSR) -> torch.Tensor:
    n, (r, s) = w.out_channels, w.kernel_size
    cg = w.in_channels // w.groups
    dense = torch.zeros(n, cg * r * s, dtype=w.values.dtype, device=w.values.device)
    dense[w.perm.long()[row_ids(w.rowptr)], w.colidx.long()] = w.values
    return dense.reshape(n, cg, r, s)


def as_pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def resolve_padding(padding: Padding, kernel_size: tuple[int, int], dilation=1,
                    stride=1) -> tuple[int, int, int, int]:
    """F.conv2d padding (int, (ph, pw), 'valid', 'same') -> (top, bottom, left, right).
    A 4-tuple is taken as already resolved. 'same' pads d*(k-1) in total, the odd one at the end,
    as PyTorch does."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ValueError(f"padding={padding!r}: allowed strings are 'valid' and 'same'")
        if as_pair(stride) != (1, 1):
            raise ValueError("padding='same' is not supported for strided convolutions")
        (dh, dw), (kh, kw) = as_pair(dilation), kernel_size
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    if isinstance(padding, int):
        return (padding,) * 4
    if len(padding) == 2:
        return (padding[0], padding[0], padding[1], padding[1])
    if len(padding) == 4:
        return tuple(int(p) for p in padding)
    raise ValueError(f"padding={padding!r} is not an int, a pair, a 4-tuple or a string")


def conv_output_size(input_hw: tuple[int, int], kernel_size: tuple[int, int], stride,
                     pads: tuple[int, int, int, int], dilation) -> tuple[int, int]:
    (sh, sw), (dh, dw), (kh, kw) = as_pair(stride), as_pair(dilation), kernel_size
    hout = (input_hw[0] + pads[0] + pads[1] - dh * (kh - 1) - 1) // sh + 1
    wout = (input_hw[1] + pads[2] + pads[3] - dw * (kw - 1) - 1) // sw + 1
    if hout <= 0 or wout <= 0:
        raise ValueError(f"input {input_hw} is too small for kernel {kernel_size}, dilation "
                         f"{dilation}, padding {pads}: output would be {hout}x{wout}")
    return hout, wout


def conv_input_offsets(w: ConvCSR, input_hw: tuple[int, int], padding: Padding = 0,
                       dilation=1) -> torch.Tensor:
    """Park's precomputed input offsets f(c, r*dh, s*dw) = (c*Hp + r*dh)*Wp + s*dw, (nnz,) int32,
    relative to the start of the nonzero's group in the zero-padded input (Hp, Wp)."""
    pt, pb, pl, pr = resolve_padding(padding, w.kernel_size, dilation)
    hp, wp = input_hw[0] + pt + pb, input_hw[1] + pl + pr
    (dh, dw), (_, s) = as_pair(dilation), w.kernel_size
    r = w.kernel_size[0]
    col = w.colidx.long()
    c, rr, ss = col // (r * s), (col // s) % r, col % s
    if (w.in_channels // w.groups) * hp * wp >= 2**31:
        raise ValueError("padded input of one group exceeds 2**31 elements (int32 offsets)")
    return ((c * hp + rr * dh) * wp + ss * dw).to(torch.int32)


@dataclass(frozen=True)
class BalancedDepthwise:
    group_ptr: torch.Tensor  # (G + 1,) int32, G = ceil(C / 32)
    taps: torch.Tensor  # (E,) int32: c_local << 16 | r << 8 | s, sorted by (c_local, r, s)
    values: torch.Tensor  # (E,)
    channels: int
    kernel_size: tuple[int, int]

    @property
    def nnz(self) -> int:
        return self.taps.numel()

    def group_counts(self) -> torch.Tensor:
        """Kept taps per group: all equal after BWT."""
        return (self.group_ptr[1:] - self.group_ptr[:-1]).long()

    def to(self, device=None, dtype=None) -> BalancedDepthwise:
        return _move(self, device, dtype)


def dense_to_balanced_depthwise(weight: torch.Tensor,
                                mask: torch.Tensor | None = None) -> BalancedDepthwise:
    """Depthwise weight (C, 1, kh, kw) -> the grouped kept-tap format."""
    if weight.dim() != 4 or weight.shape[1] != 1:
        raise ValueError(f"depthwise weight must be (C, 1, kh, kw), got {tuple(weight.shape)}")
    c, _, kh, kw = weight.shape
    if kh > 255 or kw > 255:
        raise ValueError("depthwise kernels larger than 255 taps per side are not supported")
    weight = weight.detach()
    keep = _keep(weight, mask)[:, 0]  # (C, kh, kw)
    ch, r, s = keep.nonzero(as_tuple=True)  # sorted by (c, r, s)
    taps = ((ch % DW_GROUP) << 16) | (r << 8) | s
    n_groups = math.ceil(c / DW_GROUP)
    per_group = torch.zeros(n_groups, dtype=torch.int64, device=weight.device)
    per_group.index_add_(0, ch // DW_GROUP, torch.ones_like(ch))
    return BalancedDepthwise(_rowptr(per_group), taps.to(torch.int32),
                             weight[ch, 0, r, s].clone(), c, (kh, kw))


def balanced_depthwise_to_dense(f: BalancedDepthwise) -> torch.Tensor:
    kh, kw = f.kernel_size
    dense = torch.zeros(f.channels, 1, kh, kw, dtype=f.values.dtype, device=f.values.device)
    taps = f.taps.long()
    ch = row_ids(f.group_ptr) * DW_GROUP + (taps >> 16)
    dense[ch, 0, (taps >> 8) & 255, taps & 255] = f.values
    return dense


def bwt_mask(weight: torch.Tensor, sparsity: float, group: int = DW_GROUP) -> torch.Tensor:
    """DEPrune's Balanced Workload Tuning: in every group of `group` channels prune exactly
    round(sparsity * group_size) taps of smallest |w| (ties: lower index pruned first), so every
    group (sub-GEMM, thread block) keeps the same work. Returns the keep mask, weight's shape."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity} must be in [0, 1)")
    c = weight.shape[0]
    flat = weight.detach().abs().reshape(c, -1)  # (C, taps per channel)
    keep = torch.ones_like(flat, dtype=torch.bool)
    for g0 in range(0, c, group):
        block = flat[g0:g0 + group].reshape(-1)
        n_prune = round(sparsity * block.numel())
        order = torch.sort(block, stable=True).indices[:n_prune]
        keep[g0:g0 + group].view(-1)[order] = False
    return keep.reshape(weight.shape)
