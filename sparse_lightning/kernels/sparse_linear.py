"""`sparse_linear`: y = x W^T + b with W in CSR (`cuda_kernels/sparse_linear.cu`) on CUDA tensors,
`reference.sparse_linear_ref` elsewhere. For pruned Linear layers and GRU/RNN matrices.

    y = sparse_linear(x, dense_to_csr(fc.weight), fc.bias)     # x (..., K) -> (..., N)
"""

from __future__ import annotations

import torch

from sparse_lightning.kernels import backend, loader
from sparse_lightning.kernels.formats import CSRMatrix
from sparse_lightning.kernels.reference import sparse_linear_ref

THREADS = 256
ROWS_PER_CTA = THREADS // 32  # one warp per output feature


def linear_kernel(m: int) -> tuple[str, int]:
    """(kernel, template size): CSR-vector rows for M <= 8 (GEMV-like), else a batch tile of
    32P rows with P in (1, 2, 4) so that a warp keeps P accumulators per lane."""
    if m <= 8:
        return "spmm_rowvec", next(v for v in (1, 2, 4, 8) if m <= v)
    return "spmm_tile", 1 if m <= 32 else 2 if m <= 64 else 4


def sparse_linear(x: torch.Tensor, weight: CSRMatrix, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Sparse x W^T (+ b), fp32 or fp16 (fp32 accumulation), any leading batch shape."""
    if not backend.use_cuda_kernel(x):
        return sparse_linear_ref(x, weight, bias)
    if x.dtype not in (torch.float32, torch.float16):
        raise TypeError(f"sparse_linear supports float32 and float16 inputs, got {x.dtype}")
    n, k = weight.shape
    if x.shape[-1] != k:
        raise ValueError(f"input has {x.shape[-1]} features, the sparse weight expects {k}")
    x2 = x.reshape(-1, k)  # (M, K)
    m = x2.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)  # (M, N)
    if y.numel() == 0:
        return y.reshape(*x.shape[:-1], n)
    backend.check_int32(m * k, m * n)
    dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
    name, size = linear_kernel(m)
    ctype = loader.CTYPES[str(x.dtype)[6:]]
    bias32 = None if bias is None else bias.float().contiguous()
    values = weight.values.to(x.dtype)
    row_blocks = -(-n // ROWS_PER_CTA)
    if name == "spmm_rowvec":
        args = backend.kernel_args(x2.contiguous(), weight.rowptr, weight.colidx, values, bias32, y, m, n, k)
        grid = (row_blocks,)
    else:
        xt = x2.t().contiguous()  # (K, M): lanes read consecutive batch rows
        args = backend.kernel_args(xt, weight.rowptr, weight.colidx, values, bias32, y, m, n)
        grid = (row_blocks, -(-m // (32 * size)))
    if len(grid) == 2 and grid[1] > 65535:
        raise ValueError(f"batch of {m} rows exceeds the kernel's grid limit")
    loader.launch("sparse_linear", f"{name}<{ctype}, {size}>", grid, (THREADS,), args, dev)
    return y.reshape(*x.shape[:-1], n)
