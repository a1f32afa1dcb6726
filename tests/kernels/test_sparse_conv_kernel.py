"""Direct sparse convolution: format, offsets and reference vs F.conv2d on CPU; the CUDA kernel vs
F.conv2d under the `gpu` marker (run by scripts/gpu_check.sh)."""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch
import torch.nn.functional as F

from sparse_lightning.kernels.formats import (
    CONV_ROWS_PER_CTA,
    conv_csr_to_dense,
    conv_input_offsets,
    dense_to_conv_csr,
    resolve_padding,
)
from sparse_lightning.kernels.reference import sparse_conv2d_ref
from sparse_lightning.kernels.sparse_conv import SMEM_BYTES, conv_schedule, sparse_conv2d

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")
needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("cupy") is None,
    reason="needs a CUDA GPU and CuPy")


def random_conv(rng: random.Random, max_c: int = 8, max_hw: int = 12, max_batch: int = 3):
    """A random conv config: (x, weight, bias, stride, padding, dilation, groups), ~sparsity."""
    groups = rng.choice([1, 1, 2, 3])
    cin, cout = groups * rng.randint(1, max_c), groups * rng.randint(1, max_c)
    kh, kw = rng.randint(1, 5), rng.randint(1, 5)
    dil = (rng.randint(1, 3), rng.randint(1, 3))
    stride = (rng.randint(1, 3), rng.randint(1, 3))
    padding = rng.choice([0, 1, (rng.randint(0, 3), rng.randint(0, 3)), "valid", "same"])
    if padding == "same":
        stride = (1, 1)
    h = rng.randint(dil[0] * (kh - 1) + 1, max(max_hw, dil[0] * (kh - 1) + 1))
    w = rng.randint(dil[1] * (kw - 1) + 1, max(max_hw, dil[1] * (kw - 1) + 1))
    sparsity = rng.choice([0.0, 0.3, 0.5, 0.8, 0.9, 0.95, 0.99, rng.random()])
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    weight = torch.randn(cout, cin // groups, kh, kw, generator=g)
    weight[torch.rand(weight.shape, generator=g) < sparsity] = 0
    bias = torch.randn(cout, generator=g) if rng.random() < 0.5 else None
    x = torch.randn(rng.randint(1, max_batch), cin, h, w, generator=g)
    return x, weight, bias, stride, padding, dil, groups


@pytest.mark.parametrize("seed", range(60))
def test_reference_matches_conv2d(seed):
    x, weight, bias, stride, padding, dil, groups = random_conv(random.Random(seed))
    csr = dense_to_conv_csr(weight, groups=groups)
    y = sparse_conv2d_ref(x, csr, bias, stride, padding, dil)
    torch.testing.assert_close(y, F.conv2d(x, weight, bias, stride, padding, dil, groups),
                               rtol=1e-5, atol=1e-5)


def test_asymmetric_padding_matches_padded_conv():
    x, w = torch.randn(2, 3, 9, 8), torch.randn(4, 3, 3, 2)
    y = sparse_conv2d_ref(x, dense_to_conv_csr(w), None, 2, (1, 0, 2, 1))  # top, bottom, left, right
    torch.testing.assert_close(y, F.conv2d(F.pad(x, (2, 1, 1, 0)), w, stride=2), rtol=1e-5, atol=1e-5)


def test_all_pruned_gives_bias():
    w, b = torch.zeros(5, 3, 3, 3), torch.randn(5)
    csr = dense_to_conv_csr(w)
    assert csr.nnz == 0 and csr.max_block_nnz == (0,) * len(CONV_ROWS_PER_CTA)
    y = sparse_conv2d_ref(torch.randn(2, 3, 6, 6), csr, b, padding=1)
    torch.testing.assert_close(y, b[None, :, None, None].expand(2, 5, 6, 6))


def test_fp16_input_accumulates_in_fp32():
    x, w = torch.randn(2, 16, 10, 10).half(), torch.randn(8, 16, 3, 3)
    w[torch.rand_like(w) < 0.7] = 0
    y = sparse_conv2d_ref(x, dense_to_conv_csr(w.half()), None, 1, 1)
    assert y.dtype == torch.float16
    ref = F.conv2d(x.float(), w.half().float(), None, 1, 1)
    torch.testing.assert_close(y.float(), ref, rtol=1e-3, atol=1e-2)


def test_format_round_trip_sorted_rows_and_mask():
    w = torch.randn(20, 6, 3, 3)
    w[torch.rand_like(w) < 0.6] = 0
    mask = torch.rand_like(w) < 0.8
    csr = dense_to_conv_csr(w, mask)
    torch.testing.assert_close(conv_csr_to_dense(csr), w * mask, rtol=0, atol=0)
    counts = (csr.rowptr[1:] - csr.rowptr[:-1]).tolist()
    assert counts == sorted(counts, reverse=True)
    assert sorted(csr.perm.tolist()) == list(range(20))
    assert counts == [int(((w * mask)[n] != 0).sum()) for n in csr.perm.tolist()]
    for rows, largest in zip(CONV_ROWS_PER_CTA, csr.max_block_nnz):
        blocks = [sum(counts[i:i + rows]) for i in range(0, 20, rows)]
        assert largest == max(blocks)
    assert csr.rowptr.dtype == csr.colidx.dtype == csr.perm.dtype == torch.int32


@pytest.mark.parametrize("padding,dilation", [(0, 1), (2, 1), ((1, 3), (2, 3)), ("same", (2, 1))])
def test_offsets_address_the_weight_taps(padding, dilation):
    """colidx offset f(c, r*dh, s*dw) into the padded group input lands on exactly the input
    element tap (c, r, s) reads for output (0, 0)."""
    w = torch.randn(6, 4, 3, 5)
    w[torch.rand_like(w) < 0.5] = 0
    csr = dense_to_conv_csr(w, groups=2)
    h, wd = 11, 13
    offsets = conv_input_offsets(csr, (h, wd), padding, dilation)
    pt, pb, pl, pr = resolve_padding(padding, (3, 5), dilation)
    hp, wp = h + pt + pb, wd + pl + pr
    grid = torch.arange(4 * hp * wp).reshape(4, hp, wp)  # element ids of one group's padded input
    col = csr.colidx.long()
    c, r, s = col // 15, (col // 5) % 3, col % 5
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    assert torch.equal(grid.reshape(-1)[offsets.long()], grid[c, r * dh, s * dw])


def test_schedule_fits_shared_memory_and_covers_work():
    """Launch plans for the benchmark layer set on an H100-sized GPU (132 SMs): shared memory
    within the default 48 KiB, every (row, item) covered, grid within limits."""
    layers = [(256, 27 * 27, 96 * 25), (384, 13 * 13, 256 * 9), (512, 7 * 7, 512 * 9),
              (512, 28 * 28, 512 * 9)]
    for n, hw, row_len in layers:
        for batch in (1, 8, 32):
            for density in (1.0, 0.5, 0.1, 0.02):
                nnz = max(1, round(row_len * density))
                block = tuple(min(r, n) * nnz for r in CONV_ROWS_PER_CTA)
                plan = conv_schedule(batch, n, hw, block, sms=132)
                assert plan.shared_mem <= SMEM_BYTES
                assert plan.grid[0] * plan.rows_per_cta >= n
                assert plan.grid[1] * plan.items_per_cta >= plan.items
                assert plan.items * 32 * plan.pixels_per_thread >= batch * hw
                assert plan.grid[1] <= 65535


# ---------------------------------------------------------------- GPU (scripts/gpu_check.sh)


@pytest.fixture
def cuda_backend(monkeypatch):
    """Make a silent fallback to the reference an error: these tests must run the kernel."""
    monkeypatch.setenv("SPARSE_LIGHTNING_BACKEND", "cuda")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # exact fp32 reference
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("seed", range(240))
def test_kernel_matches_conv2d_fp32(seed, cuda_backend):
    rng = random.Random(1000 + seed)
    x, weight, bias, stride, padding, dil, groups = random_conv(rng, max_c=48, max_hw=40, max_batch=4)
    x, weight = x.cuda(), weight.cuda()
    bias = bias.cuda() if bias is not None else None
    y = sparse_conv2d(x, dense_to_conv_csr(weight, groups=groups), bias, stride, padding, dil)
    ref = F.conv2d(x, weight, bias, stride, padding, dil, groups)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4 * max(1.0, ref.abs().max().item()))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("cin,cout,k,hw,batch,sparsity", [
    (512, 512, 3, 7, 1, 0.9),     # batch 1: warps split rows (rows_per_cta < 8)
    (512, 512, 3, 28, 8, 0.9),    # P = 8, weights staged in shared memory
    (512, 64, 5, 14, 2, 0.0),     # dense rows: slices too big to stage, read from global
    (96, 256, 5, 27, 32, 0.98),
    (3, 16, 7, 33, 2, 0.5),
])
def test_kernel_schedules_on_layer_shapes(cin, cout, k, hw, batch, sparsity, cuda_backend):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, cin, hw, hw, device="cuda", generator=g)
    w = torch.randn(cout, cin, k, k, device="cuda", generator=g)
    w[torch.rand(w.shape, device="cuda", generator=g) < sparsity] = 0
    b = torch.randn(cout, device="cuda", generator=g)
    ref = F.conv2d(x, w, b, 1, k // 2)
    y = sparse_conv2d(x, dense_to_conv_csr(w), b, 1, k // 2)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("seed", range(40))
def test_kernel_matches_conv2d_fp16(seed, cuda_backend):
    x, weight, bias, stride, padding, dil, groups = random_conv(random.Random(5000 + seed), 32, 32, 3)
    x, weight = x.cuda().half(), weight.cuda().half()
    y = sparse_conv2d(x, dense_to_conv_csr(weight, groups=groups), None, stride, padding, dil)
    ref = F.conv2d(x.float(), weight.float(), None, stride, padding, dil, groups)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), ref, rtol=1e-2, atol=1e-2 * max(1.0, ref.abs().max().item()))


@pytest.mark.gpu
@needs_gpu
def test_kernel_is_capturable_in_a_cuda_graph(cuda_backend):
    x = torch.randn(2, 64, 14, 14, device="cuda")
    w = torch.randn(64, 64, 3, 3, device="cuda")
    w[torch.rand_like(w) < 0.9] = 0
    csr = dense_to_conv_csr(w)
    offsets = conv_input_offsets(csr, (14, 14), 1)
    out = sparse_conv2d(x, csr, None, 1, 1, offsets=offsets)  # compile + warm up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = sparse_conv2d(x, csr, None, 1, 1, offsets=offsets)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    ref = F.conv2d(x, w, None, 1, 1)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
