"""Shared fixtures: a tiny LightningModule on random data and a CPU trainer factory.

Never imports cupy; GPU tests skip themselves when CUDA or CuPy is missing.
"""

from __future__ import annotations

import os

import pytest
import torch

# 2 cores shared by pytest and the subprocesses it starts: OpenMP threads would wait on each other.
torch.set_num_threads(1)

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Keep wandb/ray/data caches of a test inside its tmp dir."""
    for var, sub in (("WANDB_DIR", "wandb"), ("WANDB_CACHE_DIR", "wandb-cache"), ("WANDB_CONFIG_DIR", "wandb-config")):
        monkeypatch.setenv(var, str(tmp_path / sub))


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    """One MNIST-1D cache for the whole session (generation takes ~1 s per 5000 samples)."""
    path = tmp_path_factory.mktemp("data")
    os.environ["SPARSE_LIGHTNING_DATA"] = str(path)
    return path


@pytest.fixture
def make_trainer(tmp_path):
    import pytorch_lightning as pl

    def _make(**kw):
        defaults = dict(
            accelerator="cpu", devices=1, max_steps=20, logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
        )
        defaults.update(kw)
        return pl.Trainer(**defaults)

    return _make
