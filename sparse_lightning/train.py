"""``train(cfg)``: build everything a composed config describes, check it, fit, test.

A plain function, so the CLI (``sparse-train``), tests, sweeps and Ray trials all call the same
code. Every object is built and checked before ``trainer.fit``: a bad value fails with one
:class:`ConfigError` line naming its key, and no training starts.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sparse_lightning.callbacks.base import MaskedPruningCallback
from sparse_lightning.callbacks.str import STR
from sparse_lightning.config import first_line, validate
from sparse_lightning.errors import ConfigError
from sparse_lightning.masks import require_targets, select_parameters
from sparse_lightning.stats import global_sparsity, layer_sparsity

log = logging.getLogger(__name__)


@dataclass
class Run:
    """The objects of one training run, built from a config."""

    datamodule: pl.LightningDataModule
    module: pl.LightningModule
    trainer: pl.Trainer
    callbacks: list[pl.Callback]
    config: dict[str, Any]  # the resolved config, logged as the run's hyperparameters


def _build(key: str, node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with errors turned into one line naming the config key."""
    try:
        return instantiate(node, **kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    except Exception as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, ConfigError):
            raise ConfigError(f"{key}: {cause}") from None
        raise ConfigError(f"{key}: {type(cause).__name__}: {first_line(cause)}") from None


def _check_optimization(module: pl.LightningModule) -> None:
    """Build optimizer and scheduler once on a dummy parameter, so bad values fail now."""
    dummy = [torch.nn.Parameter(torch.zeros(1))]
    try:
        optimizer = module.optimizer_factory(dummy) if getattr(module, "optimizer_factory", None) else None
    except Exception as exc:
        raise ConfigError(f"model.optimizer: {first_line(exc)}") from None
    if optimizer is not None and getattr(module, "scheduler_factory", None):
        try:
            module.scheduler_factory(optimizer)
        except Exception as exc:
            raise ConfigError(f"model.scheduler: {first_line(exc)}") from None


def build(cfg: DictConfig) -> Run:
    """Validate ``cfg`` and build data, model, callbacks, logger and trainer (nothing runs)."""
    resolved = OmegaConf.create(validate(cfg))
    pl.seed_everything(resolved.seed, workers=True, verbose=False)
    datamodule = _build("data", resolved.data)
    net = _build("model.net", resolved.model.net, input_shape=list(datamodule.input_shape), num_classes=datamodule.num_classes)
    module = _build("model", resolved.model, net=net)
    _check_optimization(module)

    callbacks = [_build(f"callbacks.{k}", v) for k, v in resolved.callbacks.items() if v]
    if resolved.sparsity:
        callbacks.append(_build("sparsity", resolved.sparsity))
    for cb in callbacks:
        if isinstance(cb, (MaskedPruningCallback, STR)):
            try:
                require_targets(module, cb.include, cb.exclude)
            except ConfigError as exc:
                raise ConfigError(f"sparsity: {exc}") from None
    logger = _build("logger", resolved.logger) if resolved.logger else False
    trainer = _build("trainer", resolved.trainer, callbacks=callbacks, logger=logger)
    return Run(datamodule, module, trainer, callbacks, OmegaConf.to_container(resolved))


def _finish_wandb() -> None:
    """Close the wandb run, so its files are complete and a next job in this process gets its own run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and by default test) the run ``cfg`` describes; return the final metrics."""
    run = build(cfg)
    try:
        return _fit_and_test(run, cfg)
    finally:
        _finish_wandb()


def resume_path(cfg: DictConfig, trainer: pl.Trainer) -> str | None:
    """``cfg.ckpt_path``; in a requeued SLURM job without one, the newest of Lightning's
    ``hpc_ckpt_N.ckpt`` (saved on SIGUSR1) and the checkpoint callbacks' ``last.ckpt`` (a requeue
    without that signal: ``scontrol requeue``, preemption, a submitit resubmission)."""
    if cfg.get("ckpt_path") is not None or int(os.environ.get("SLURM_RESTART_COUNT", "0")) == 0:
        return cfg.get("ckpt_path")
    candidates = [*Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt")]
    candidates += [Path(cb.dirpath) / "last.ckpt" for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
    existing = [p for p in candidates if p.is_file()]
    return str(max(existing, key=lambda p: p.stat().st_mtime)) if existing else None


def _drop_hpc_checkpoints(trainer: pl.Trainer) -> None:
    """Delete Lightning's SLURM ``hpc_ckpt_N.ckpt`` once fit is done: left in place, ``trainer.test``
    (and any later run in this dir) would load those older weights instead of the final ones."""
    if trainer.is_global_zero:
        for path in Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"):
            path.unlink()
    trainer.strategy.barrier()


def _fit_and_test(run: Run, cfg: DictConfig) -> dict[str, float]:
    for logger in run.trainer.loggers:  # the full resolved config: wandb run config, hparams.yaml
        logger.log_hyperparams(run.config)
    run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=resume_path(cfg, run.trainer))
    _drop_hpc_checkpoints(run.trainer)
    metrics = {k: float(v) for k, v in run.trainer.callback_metrics.items()}
    if cfg.get("test", True):
        # Test the final weights: a "best" checkpoint could predate pruning.
        for result in run.trainer.test(run.module, datamodule=run.datamodule, verbose=True):
            metrics.update(result)
    rows = layer_sparsity(run.module, select_parameters(run.module))
    metrics["sparsity/global"] = global_sparsity(rows)
    if run.trainer.is_global_zero:
        acc = metrics.get("test/acc", metrics.get("val/acc", float("nan")))
        log.info("final: test/acc=%.4f sparsity/global=%.4f", acc, metrics["sparsity/global"])
    return metrics
