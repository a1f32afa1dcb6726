"""Hydra composition: every config option composes; every sensible model x data x sparsity trains."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from helpers import write_fake_cifar10
from sparse_lightning import ConfigError, get_masks
from sparse_lightning.config import validate
from sparse_lightning.resources import config_dir
from sparse_lightning.train import build, train

GROUPS = ("model", "data", "sparsity", "trainer", "logger")
# Which data each model makes sense on (1-D CNN needs signals; LeNet/ResNet need images).
SENSIBLE = {
    "mlp": ("mnist1d", "digits", "synthetic", "cifar10"),
    "cnn1d": ("mnist1d", "synthetic"),
    "gru": ("mnist1d", "digits", "synthetic"),
    "lenet5": ("digits", "cifar10", "synthetic2d"),
    "resnet20": ("digits", "cifar10", "synthetic2d"),
    "mobilenet_v2": ("digits", "synthetic2d"),
    "mobilenet_v3_small": ("digits",),
    "efficientnet_b0": ("digits",),
}
FAST = ["trainer.max_steps=3", "trainer.max_epochs=1", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
        "callbacks.progress=null", "+trainer.enable_model_summary=false", "logger=csv"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def compose_cfg(tmp_path, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=[f"output_dir={tmp_path}", *overrides])


def data_overrides(name: str, tmp_path) -> list[str]:
    if name == "synthetic2d":
        return ["data=synthetic", "data.input_shape=[3,16,16]", "data.num_samples=256"]
    if name == "cifar10":
        return ["data=cifar10", f"data.data_dir={write_fake_cifar10(tmp_path)}", "data.batch_size=16"]
    if name == "mnist1d":
        return ["data=mnist1d", "data.num_samples=1000"]
    if name == "synthetic":
        return ["data=synthetic", "data.num_samples=256"]
    return [f"data={name}"]


def test_every_group_has_its_options():
    assert {"cnn1d", "mlp", "gru", "lenet5", "resnet20"} <= set(options("model"))
    assert {"mnist1d", "digits", "synthetic", "cifar10"} <= set(options("data"))
    assert {"dense", "magnitude"} <= set(options("sparsity"))
    assert {"cpu", "gpu", "ddp"} <= set(options("trainer"))
    assert {"wandb", "csv", "none"} <= set(options("logger"))


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(group, option, tmp_path, data_cache):
    overrides = [f"{group}={option}"]
    if group == "data":
        overrides = data_overrides(option, tmp_path) + ["model=mlp"]
    elif group == "model" and option in ("lenet5", "resnet20", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"):
        overrides += ["data=digits"]
    cfg = compose_cfg(tmp_path, overrides)
    validate(cfg)
    if group != "trainer":  # gpu/ddp trainers need devices this machine may not have
        run = build(cfg)
        assert run.datamodule.num_classes == 10


@pytest.mark.parametrize("model, data", [(m, d) for m, ds in SENSIBLE.items() for d in ds])
def test_sensible_combinations_train_a_few_steps(model, data, tmp_path, data_cache):
    cfg = compose_cfg(tmp_path, [f"model={model}", *data_overrides(data, tmp_path), *FAST,
                                 "sparsity.at_epoch=null", "+sparsity.at_step=0", "sparsity.target=0.6"])
    metrics = train(cfg)
    assert metrics["sparsity/global"] == pytest.approx(0.6, abs=1e-3)
    assert 0.0 <= metrics["test/acc"] <= 1.0


def test_dense_run_has_no_masks(tmp_path, data_cache):
    cfg = compose_cfg(tmp_path, ["sparsity=dense", *data_overrides("synthetic", tmp_path), *FAST])
    run = build(cfg)
    run.trainer.fit(run.module, datamodule=run.datamodule)
    assert get_masks(run.module) == {}


def test_gru_magnitude_from_the_issue(tmp_path, data_cache):
    """`sparse-train model=gru sparsity=magnitude sparsity.target=0.9 trainer.max_epochs=1` (data shrunk)."""
    cfg = compose_cfg(tmp_path, ["model=gru", "sparsity=magnitude", "sparsity.target=0.9", "trainer.max_epochs=1",
                                 "sparsity.at_epoch=0", "data.num_samples=1000", "logger=csv",
                                 "callbacks.progress=null"])
    metrics = train(cfg)
    assert metrics["sparsity/global"] == pytest.approx(0.9, abs=1e-3)
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    masks = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert {"net.rnn.weight_ih_l0_mask", "net.rnn.weight_hh_l0_mask"} <= set(masks)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["+sparsity.tagret=0.9"], "sparsity.tagret: unknown key for sparse_lightning.MagnitudePruning; allowed: target"),
        (["sparsity.scope=row"], "sparsity.scope: must be one of 'global', 'layer'"),
        (["trainer.log_every_n_steps=abc"], "trainer.log_every_n_steps: expected an integer"),
        (["sparsity.include=conv"], "sparsity.include: expected a list"),
        (["+model.net.input_shape=[1,40]"], "model.net.input_shape: set by sparse-train"),
        (["model.net._target_=sparse_lightning.Nope"], "cannot import 'sparse_lightning.Nope'"),
    ],
)
def test_validation_names_the_key(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        validate(compose_cfg(tmp_path, overrides))
