"""SparseConv2d / SparseLinear / PrunedDepthwiseConv2d: from_dense() matches the dense module,
weight_mask is honoured, to_dense() and state_dict round-trip. CPU (reference backend); the same
modules on a GPU under the `gpu` marker."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from sparse_lightning.kernels.formats import bwt_mask
from sparse_lightning.nn import PrunedDepthwiseConv2d, SparseConv2d, SparseLinear

needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("cupy") is None,
    reason="needs a CUDA GPU and CuPy")


def pruned(module: nn.Module, sparsity: float, seed: int = 0, as_mask: bool = False) -> nn.Module:
    """Zero (or mask, via a weight_mask buffer) a random fraction of the module's weight."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(module.weight.shape, generator=g) >= sparsity
    if as_mask:
        module.register_buffer("weight_mask", keep)
    else:
        with torch.no_grad():
            module.weight.mul_(keep)
    return module


def effective(module: nn.Module) -> nn.Module:
    """The dense module the sparse one must equal (mask applied to the weight)."""
    mask = getattr(module, "weight_mask", None)
    if mask is not None:
        with torch.no_grad():
            module.weight.mul_(mask)
    return module


CASES = [
    (lambda: nn.Conv2d(8, 16, 3, padding=1), SparseConv2d, (2, 8, 10, 10)),
    (lambda: nn.Conv2d(6, 12, (3, 5), stride=(2, 1), padding="valid", dilation=(1, 2), groups=3),
     SparseConv2d, (2, 6, 13, 15)),
    (lambda: nn.Conv2d(4, 4, 4, padding="same", bias=False), SparseConv2d, (1, 4, 9, 9)),
    (lambda: nn.Linear(20, 30), SparseLinear, (4, 7, 20)),
    (lambda: nn.Linear(20, 30, bias=False), SparseLinear, (20,)),
    (lambda: nn.Conv2d(40, 40, 5, padding=2, groups=40), PrunedDepthwiseConv2d, (2, 40, 12, 12)),
    (lambda: nn.Conv2d(33, 33, 3, stride=2, padding=1, groups=33, bias=False), PrunedDepthwiseConv2d,
     (1, 33, 15, 15)),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("make,cls,shape", CASES)
@pytest.mark.parametrize("as_mask", [False, True])
def test_from_dense_matches_dense_module(make, cls, shape, as_mask):
    torch.manual_seed(0)
    dense = pruned(make(), 0.7, as_mask=as_mask)
    sparse = cls.from_dense(dense)
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), effective(dense)(x), rtol=1e-5, atol=1e-5)
    assert abs(sparse.sparsity - (dense.weight == 0).double().mean().item()) < 1e-9
    back = sparse.to_dense()
    assert type(back) is type(dense)
    torch.testing.assert_close(back.weight, dense.weight, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(back(x), dense(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make,cls,shape", CASES[:1] + CASES[3:4] + CASES[5:6])
def test_state_dict_loads_another_sparsity_pattern(make, cls, shape):
    torch.manual_seed(1)
    a, b = cls.from_dense(pruned(make(), 0.5, seed=1)), pruned(make(), 0.9, seed=2)
    a.load_state_dict(cls.from_dense(b).state_dict())
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)


def test_half_modules_run_and_keep_dtype():
    conv = pruned(nn.Conv2d(8, 8, 3, padding=1), 0.8)
    sparse = SparseConv2d.from_dense(conv).half()
    assert sparse.values.dtype == torch.float16 and sparse.rowptr.dtype == torch.int32
    x = torch.randn(2, 8, 6, 6)
    y = sparse(x.half())
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), conv(x).detach(), rtol=1e-2, atol=2e-2)


def test_depthwise_with_bwt_mask_buffer():
    conv = nn.Conv2d(64, 64, 5, padding=2, groups=64)
    conv.register_buffer("weight_mask", bwt_mask(conv.weight, 0.5))
    module = PrunedDepthwiseConv2d.from_dense(conv)
    assert module.pruned.group_counts().tolist() == [400, 400]
    x = torch.randn(1, 64, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(module(x), effective(conv)(x), rtol=1e-5, atol=1e-5)


def test_from_dense_rejects_unsupported_layers():
    with pytest.raises(ValueError, match="groups"):
        PrunedDepthwiseConv2d.from_dense(nn.Conv2d(8, 16, 3, groups=8))
    with pytest.raises(ValueError, match="padding_mode"):
        SparseConv2d.from_dense(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("make,cls,shape", CASES)
def test_modules_on_gpu(make, cls, shape, monkeypatch):
    monkeypatch.setenv("SPARSE_LIGHTNING_BACKEND", "cuda")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    dense = pruned(make(), 0.7).cuda()
    sparse = cls.from_dense(dense.cpu()).cuda()  # built on CPU, moved: caches follow the device
    x = torch.randn(shape, device="cuda")
    with torch.no_grad():
        ref = dense(x)
        torch.testing.assert_close(sparse(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
