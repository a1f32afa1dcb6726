"""Depthwise convolution, dense and DEPrune-pruned: formats, BWT and references vs F.conv2d on CPU;
the CUDA kernels (NCHW and channels_last) vs F.conv2d under the `gpu` marker."""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch
import torch.nn.functional as F

from sparse_lightning.kernels.depthwise import depthwise_conv2d, pruned_depthwise_conv2d, pruned_tile
from sparse_lightning.kernels.formats import (
    DW_GROUP,
    balanced_depthwise_to_dense,
    bwt_mask,
    dense_to_balanced_depthwise,
)
from sparse_lightning.kernels.reference import depthwise_conv2d_ref, pruned_depthwise_conv2d_ref

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")
needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("cupy") is None,
    reason="needs a CUDA GPU and CuPy")


def random_dw(rng: random.Random, device="cpu", max_c: int = 80, max_hw: int = 20, max_batch: int = 3):
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    c = rng.choice([1, 5, 32, 33, rng.randint(2, max_c)])
    k = rng.choice([(3, 3), (5, 5), (7, 7), (3, 5), (1, 1), (2, 2)])
    stride = rng.choice([1, 2, (1, 2), 3])
    dil = rng.choice([1, 1, 2, (1, 2)])
    padding = rng.choice([0, 1, k[0] // 2, (k[0] // 2, k[1] // 2), "valid", "same"])
    if padding == "same":
        stride = 1
    d = (dil, dil) if isinstance(dil, int) else dil
    h = rng.randint(d[0] * (k[0] - 1) + 1, max(max_hw, d[0] * (k[0] - 1) + 1))
    w = rng.randint(d[1] * (k[1] - 1) + 1, max(max_hw, d[1] * (k[1] - 1) + 1))
    weight = torch.randn(c, 1, *k, generator=g)
    bias = torch.randn(c, generator=g) if rng.random() < 0.5 else None
    x = torch.randn(rng.randint(1, max_batch), c, h, w, generator=g)
    sparsity = rng.choice([0.0, 0.25, 0.5, 0.75, 0.9, 0.99])
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return to(x), to(weight), to(bias), stride, padding, dil, sparsity


@pytest.mark.parametrize("seed", range(30))
def test_pruned_reference_matches_conv2d(seed):
    x, w, b, stride, padding, dil, sparsity = random_dw(random.Random(seed))
    keep = bwt_mask(w, sparsity)
    y = pruned_depthwise_conv2d_ref(x, dense_to_balanced_depthwise(w, keep), b, stride, padding, dil)
    ref = F.conv2d(x, w * keep, b, stride, padding, dil, groups=w.shape[0])
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("channels_last", [False, True])
def test_dense_reference_matches_conv2d_and_keeps_layout(seed, channels_last):
    x, w, b, stride, padding, dil, _ = random_dw(random.Random(seed))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = depthwise_conv2d_ref(x, w, b, stride, padding, dil)
    torch.testing.assert_close(y, F.conv2d(x, w, b, stride, padding, dil, groups=w.shape[0]),
                               rtol=1e-5, atol=1e-5)
    if channels_last and x.shape[1] > 1 and y.shape[-1] * y.shape[-2] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels,sparsity", [(32, 0.5), (96, 0.78), (70, 0.85), (5, 0.3)])
def test_bwt_balances_groups(channels, sparsity):
    w = torch.randn(channels, 1, 5, 5)
    keep = bwt_mask(w, sparsity)
    per_group = [keep[g:g + DW_GROUP].sum().item() for g in range(0, channels, DW_GROUP)]
    sizes = [keep[g:g + DW_GROUP].numel() for g in range(0, channels, DW_GROUP)]
    assert per_group == [n - round(sparsity * n) for n in sizes]
    full = [k for k, n in zip(per_group, sizes) if n == DW_GROUP * 25]
    assert len(set(full)) <= 1  # every full group keeps the same work
    pruned_magnitudes = w.abs()[~keep]
    for g0 in range(0, channels, DW_GROUP):  # pruned = smallest |w| of their group
        gk, gw = keep[g0:g0 + DW_GROUP], w[g0:g0 + DW_GROUP].abs()
        if (~gk).any() and gk.any():
            assert gw[~gk].max() <= gw[gk].min()
    assert pruned_magnitudes.numel() == (~keep).sum()


def test_balanced_format_layout_and_round_trip():
    w = torch.randn(70, 1, 3, 3)
    keep = bwt_mask(w, 0.5)
    f = dense_to_balanced_depthwise(w, keep)
    assert f.group_ptr.tolist()[0] == 0 and len(f.group_ptr) == 4
    assert f.group_counts().tolist() == [144, 144, 27]
    taps = f.taps.long()
    for g in range(3):  # sorted by (c_local, r, s) inside each group, c_local < 32
        t = taps[f.group_ptr[g]:f.group_ptr[g + 1]]
        assert torch.equal(t, torch.sort(t).values) and int((t >> 16).max()) < DW_GROUP
    torch.testing.assert_close(balanced_depthwise_to_dense(f), w * keep, rtol=0, atol=0)


def test_pruned_tile_choice():
    assert pruned_tile(49, 1000, 132) == 2       # 7x7 plane: 64-pixel tiles
    assert pruned_tile(784, 240, 132) == 8       # many CTAs: largest tile
    assert pruned_tile(784, 8, 132) == 1         # few CTAs: smaller tiles for parallelism


# ---------------------------------------------------------------- GPU (scripts/gpu_check.sh)


@pytest.fixture
def cuda_backend(monkeypatch):
    monkeypatch.setenv("SPARSE_LIGHTNING_BACKEND", "cuda")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def _close(y, ref, tol):
    torch.testing.assert_close(y.float(), ref.float(), rtol=tol, atol=tol * max(1.0, ref.abs().max().item()))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("seed", range(100))
@pytest.mark.parametrize("channels_last", [False, True])
def test_dense_kernel_matches_conv2d(seed, channels_last, cuda_backend):
    x, w, b, stride, padding, dil, _ = random_dw(random.Random(300 + seed), "cuda", 200, 40, 4)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = depthwise_conv2d(x, w, b, stride, padding, dil)
    _close(y, F.conv2d(x, w, b, stride, padding, dil, groups=w.shape[0]), 1e-4)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("seed", range(100))
@pytest.mark.parametrize("channels_last", [False, True])
def test_pruned_kernel_matches_conv2d(seed, channels_last, cuda_backend):
    x, w, b, stride, padding, dil, sparsity = random_dw(random.Random(700 + seed), "cuda", 200, 40, 4)
    keep = bwt_mask(w, sparsity)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = pruned_depthwise_conv2d(x, dense_to_balanced_depthwise(w, keep), b, stride, padding, dil)
    _close(y, F.conv2d(x, w * keep, b, stride, padding, dil, groups=w.shape[0]), 1e-4)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("c,k,hw,stride,batch", [(32, 3, 112, 1, 2), (240, 5, 28, 1, 4),
                                                 (1152, 5, 7, 1, 3), (96, 3, 112, 2, 2), (64, 7, 19, 2, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_kernels_fp16_on_layer_shapes(c, k, hw, stride, batch, channels_last, cuda_backend):
    x = torch.randn(batch, c, hw, hw, device="cuda").half()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, 1, k, k, device="cuda").half()
    keep = bwt_mask(w, 0.5)
    ref = F.conv2d(x.float(), w.float(), None, stride, k // 2, groups=c)
    _close(depthwise_conv2d(x, w, None, stride, k // 2), ref, 1e-2)
    ref_pruned = F.conv2d(x.float(), (w * keep).float(), None, stride, k // 2, groups=c)
    y = pruned_depthwise_conv2d(x, dense_to_balanced_depthwise(w, keep), None, stride, k // 2)
    _close(y, ref_pruned, 1e-2)
