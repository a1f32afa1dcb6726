"""Backend choice: with no GPU every op runs its reference and says so exactly once per process;
SPARSE_LIGHTNING_BACKEND forces or forbids the fallback; importing never imports CuPy."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch
from torch import nn

from sparse_lightning.errors import ConfigError
from sparse_lightning.kernels import backend
from sparse_lightning.nn import PrunedDepthwiseConv2d, SparseConv2d, SparseLinear

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU fallback")


@pytest.fixture
def fresh_warning(monkeypatch):
    monkeypatch.delenv(backend.BACKEND_ENV, raising=False)
    backend.warn_fallback_once.cache_clear()
    yield
    backend.warn_fallback_once.cache_clear()


@cpu_only
def test_modules_fall_back_with_one_warning(fresh_warning, caplog):
    modules = [SparseConv2d.from_dense(nn.Conv2d(4, 4, 3, padding=1)),
               PrunedDepthwiseConv2d.from_dense(nn.Conv2d(4, 4, 3, padding=1, groups=4)),
               SparseLinear.from_dense(nn.Linear(4, 3))]
    x = torch.randn(2, 4, 5, 5)
    with caplog.at_level(logging.WARNING, logger="sparse_lightning.kernels.backend"):
        for _ in range(3):
            modules[0](x), modules[1](x), modules[2](x.mean((2, 3)))
    records = [r for r in caplog.records if r.name == "sparse_lightning.kernels.backend"]
    assert len(records) == 1
    assert "reference" in records[0].getMessage() and "no CUDA GPU" in records[0].getMessage()


def test_forced_reference_is_silent(fresh_warning, monkeypatch, caplog):
    monkeypatch.setenv(backend.BACKEND_ENV, "reference")
    with caplog.at_level(logging.WARNING, logger="sparse_lightning.kernels.backend"):
        assert backend.use_cuda_kernel(torch.randn(2)) is False
    assert not caplog.records


@cpu_only
def test_forced_cuda_without_gpu_is_an_error(fresh_warning, monkeypatch):
    monkeypatch.setenv(backend.BACKEND_ENV, "cuda")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        backend.use_cuda_kernel(torch.randn(2))


def test_unknown_backend_value_is_a_config_error(monkeypatch):
    monkeypatch.setenv(backend.BACKEND_ENV, "gpu")
    with pytest.raises(ConfigError, match="auto, cuda, reference"):
        backend.use_cuda_kernel(torch.randn(2))


def test_import_does_not_import_cupy():
    code = ("import sys, sparse_lightning.kernels, sparse_lightning.nn, sparse_lightning.kernels.loader, "
            "sparse_lightning.cli.bench; assert 'cupy' not in sys.modules, 'cupy imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
