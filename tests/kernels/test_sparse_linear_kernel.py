"""Sparse linear (CSR x dense): format and reference vs F.linear on CPU; the CUDA kernels vs
F.linear under the `gpu` marker."""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch
import torch.nn.functional as F

from sparse_lightning.kernels.formats import csr_to_dense, dense_to_csr
from sparse_lightning.kernels.reference import sparse_linear_ref
from sparse_lightning.kernels.sparse_linear import linear_kernel, sparse_linear

needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("cupy") is None,
    reason="needs a CUDA GPU and CuPy")


def random_linear(rng: random.Random, device="cpu", max_features: int = 96):
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    n, k = rng.randint(1, max_features), rng.randint(1, max_features)
    lead = rng.choice([(), (1,), (3,), (2, 5), (7,), (9,), (33,), (130,), (4, 70)])
    sparsity = rng.choice([0.0, 0.5, 0.9, 0.99, rng.random()])
    w = torch.randn(n, k, generator=g)
    w[torch.rand(w.shape, generator=g) < sparsity] = 0
    b = torch.randn(n, generator=g) if rng.random() < 0.5 else None
    x = torch.randn(*lead, k, generator=g)
    return x.to(device), w.to(device), None if b is None else b.to(device)


@pytest.mark.parametrize("seed", range(40))
def test_reference_matches_linear(seed):
    x, w, b = random_linear(random.Random(seed))
    torch.testing.assert_close(sparse_linear_ref(x, dense_to_csr(w), b), F.linear(x, w, b),
                               rtol=1e-5, atol=1e-5)


def test_round_trip_and_mask():
    w = torch.randn(30, 40)
    w[torch.rand_like(w) < 0.5] = 0
    mask = torch.rand_like(w) < 0.7
    csr = dense_to_csr(w, mask)
    assert csr.nnz == int(((w * mask) != 0).sum())
    torch.testing.assert_close(csr_to_dense(csr), w * mask, rtol=0, atol=0)
    for row in range(30):  # columns ascending within each row
        cols = csr.colidx[csr.rowptr[row]:csr.rowptr[row + 1]].tolist()
        assert cols == sorted(cols)


def test_empty_rows_give_bias_and_fp16_output():
    w, b = torch.zeros(4, 10), torch.randn(4)
    w[2, 3] = 1.5
    x = torch.randn(6, 10).half()
    y = sparse_linear_ref(x, dense_to_csr(w.half()), b)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), F.linear(x.float(), w, b), rtol=1e-3, atol=1e-3)


def test_kernel_choice_by_batch():
    assert linear_kernel(1) == ("spmm_rowvec", 1)
    assert linear_kernel(3) == ("spmm_rowvec", 4)
    assert linear_kernel(8) == ("spmm_rowvec", 8)
    assert linear_kernel(9) == ("spmm_tile", 1)
    assert linear_kernel(64) == ("spmm_tile", 2)
    assert linear_kernel(10_000) == ("spmm_tile", 4)


# ---------------------------------------------------------------- GPU (scripts/gpu_check.sh)


@pytest.fixture
def cuda_backend(monkeypatch):
    monkeypatch.setenv("SPARSE_LIGHTNING_BACKEND", "cuda")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("seed", range(120))
def test_kernel_matches_linear(seed, cuda_backend):
    x, w, b = random_linear(random.Random(100 + seed), "cuda", max_features=600)
    y = sparse_linear(x, dense_to_csr(w), b)
    ref = F.linear(x, w, b)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4 * max(1.0, ref.abs().max().item()))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("m", [1, 2, 5, 8, 9, 32, 33, 64, 65, 1000])
def test_kernel_fp16_batches(m, cuda_backend):
    w = torch.randn(300, 257, device="cuda")
    w[torch.rand_like(w) < 0.9] = 0
    x = torch.randn(m, 257, device="cuda").half()
    y = sparse_linear(x, dense_to_csr(w.half()), None)
    ref = F.linear(x.float(), w.half().float())
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())
