"""The train loader's shuffle order depends only on (seed, epoch), so a resumed fit ends bit-identical.

Run: pytest tests/test_data_resume.py -q
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import RunningStage
from torch.utils.data import DistributedSampler

from sparse_lightning import MLP, Classifier, CNN1d, RandomState
from sparse_lightning.callbacks.random_state import capture_random_state, restore_random_state
from sparse_lightning.data import SyntheticDataModule
from sparse_lightning.data.tensor_datamodule import EpochShuffleSampler


def _datamodule() -> SyntheticDataModule:
    data = SyntheticDataModule(num_samples=300, batch_size=32, seed=3)
    data.setup("fit")
    return data


def _epoch_order(data: SyntheticDataModule, epoch: int) -> list[int]:
    sampler = data.train_dataloader().sampler
    sampler.set_epoch(epoch)
    return list(sampler)


def test_train_order_depends_only_on_seed_and_epoch():
    data = _datamodule()
    torch.manual_seed(0)
    first = _epoch_order(data, 5)
    torch.manual_seed(1)  # the global RNG, which Lightning does not checkpoint, must not matter
    assert _epoch_order(_datamodule(), 5) == first
    assert sorted(first) == list(range(len(data.train_dataset)))
    assert _epoch_order(data, 6) != first


def _fit(tmp_path, max_epochs: int, ckpt_path: str | None = None, **kw) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    module = Classifier(CNN1d(input_shape=(1, 40), num_classes=10))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=str(tmp_path), num_sanity_val_steps=0, **kw)
    torch.manual_seed(max_epochs)  # a global RNG state that differs between the runs compared
    trainer.fit(module, datamodule=_datamodule(), ckpt_path=ckpt_path)
    return trainer


def test_resumed_fit_ends_with_the_weights_of_an_uninterrupted_fit(tmp_path):
    uninterrupted = _fit(tmp_path / "a", max_epochs=4).lightning_module.state_dict()
    first = _fit(tmp_path / "b", max_epochs=2)
    first.save_checkpoint(tmp_path / "epoch2.ckpt")
    resumed = _fit(tmp_path / "c", max_epochs=4, ckpt_path=str(tmp_path / "epoch2.ckpt")).lightning_module.state_dict()

    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def _fit_dropout(tmp_path, max_epochs: int, callbacks: list, ckpt_path: str | None = None) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    module = Classifier(MLP(input_shape=(1, 40), num_classes=10, hidden=(64,), dropout=0.5))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False, callbacks=callbacks,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    trainer.fit(module, datamodule=_datamodule(), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("with_random_state", [True, False])
def test_dropout_resumes_exactly_only_with_the_random_state_in_the_checkpoint(tmp_path, with_random_state):
    def callbacks() -> list:
        return [RandomState()] if with_random_state else []

    uninterrupted = _fit_dropout(tmp_path / "a", 4, callbacks()).lightning_module.state_dict()
    first = _fit_dropout(tmp_path / "b", 2, callbacks())
    first.save_checkpoint(tmp_path / "epoch2.ckpt")
    torch.manual_seed(123)  # a new process starts from some other global RNG state
    resumed = _fit_dropout(tmp_path / "c", 4, callbacks(), ckpt_path=str(tmp_path / "epoch2.ckpt"))
    same = all(torch.equal(resumed.lightning_module.state_dict()[k], v) for k, v in uninterrupted.items())
    assert same is with_random_state


def test_random_state_survives_a_weights_only_load(tmp_path):
    state = capture_random_state()
    torch.save(state, tmp_path / "rng.pt")
    drawn = torch.rand(3), random.random(), np.random.rand()
    restore_random_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), drawn[0])
    assert (random.random(), np.random.rand()) == drawn[1:]


def test_ddp_replaces_the_sampler_with_a_seeded_distributed_sampler(tmp_path):
    """Under DDP, Lightning swaps a RandomSampler for DistributedSampler(shuffle=True, seed=PL_GLOBAL_SEED),
    which shuffles by seed + epoch too; a custom (non-RandomSampler) sampler would be wrapped instead."""
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
                         default_root_dir=str(tmp_path))
    loader = _datamodule().train_dataloader()
    assert isinstance(loader.sampler, EpochShuffleSampler)
    prepared = trainer._data_connector._prepare_dataloader(loader, shuffle=True, mode=RunningStage.TRAINING)
    assert type(prepared.sampler) is DistributedSampler
    assert (prepared.sampler.shuffle, prepared.sampler.num_replicas) == (True, 2)
