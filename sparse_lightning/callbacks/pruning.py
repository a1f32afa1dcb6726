"""Magnitude pruning callbacks. ``MagnitudePruning``: one-shot at a chosen step or epoch, then
training continues with the masks held (the simplest user of the mask engine)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from sparse_lightning.callbacks.base import MaskedPruningCallback
from sparse_lightning.criteria import check_sparsity, magnitude_masks
from sparse_lightning.errors import ConfigError


class MagnitudePruning(MaskedPruningCallback):
    """Prune the smallest-|w| fraction ``target`` once, then keep training with masks fixed.

    Args:
        target: sparsity in [0, 1) reached at the pruning step.
        at_step: optimizer step (``trainer.global_step``) at which to prune; or
        at_epoch: epoch at whose first batch to prune. Give exactly one.
        scope: ``"global"`` ranks all targeted weights together, ``"layer"`` prunes each to ``target``.
        include, exclude: fnmatch patterns on parameter names.
    """

    def __init__(
        self,
        target: float,
        at_step: int | None = None,
        at_epoch: int | None = None,
        scope: Literal["global", "layer"] = "global",
        include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
    ) -> None:
        super().__init__(include, exclude)
        self.target = check_sparsity(target, "target")
        if (at_step is None) == (at_epoch is None):
            raise ConfigError(f"MagnitudePruning needs exactly one of at_step, at_epoch (got at_step={at_step}, at_epoch={at_epoch})")
        for name, value in (("at_step", at_step), ("at_epoch", at_epoch)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if scope not in ("global", "layer"):
            raise ConfigError(f"scope must be 'global' or 'layer', got {scope!r}")
        self.at_step, self.at_epoch, self.scope = at_step, at_epoch, scope
        self.pruned_at_step: int | None = None

    def _due(self, trainer: pl.Trainer) -> bool:
        if self.pruned_at_step is not None:
            return False
        if self.at_step is not None:
            return trainer.global_step >= self.at_step
        return trainer.current_epoch >= self.at_epoch

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if not self._due(trainer):
            return
        masks = magnitude_masks(self.weights(pl_module), self.target, self.scope, self.current_masks(pl_module))
        self.prune(trainer, pl_module, masks)
        self.pruned_at_step = trainer.global_step
        rank_zero_info(f"MagnitudePruning: pruned to {self.target:.1%} ({self.scope}) at step {trainer.global_step}")

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.pruned_at_step is None:
            when = f"step {self.at_step}" if self.at_step is not None else f"epoch {self.at_epoch}"
            rank_zero_warn(f"MagnitudePruning never pruned: training ended before {when}")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"pruned_at_step": self.pruned_at_step, "target": self.target, "scope": self.scope}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if (state_dict.get("target"), state_dict.get("scope")) != (self.target, self.scope):
            rank_zero_warn(
                f"MagnitudePruning resumes from a checkpoint made with target={state_dict.get('target')}, "
                f"scope={state_dict.get('scope')}; now target={self.target}, scope={self.scope}"
            )
        self.pruned_at_step = state_dict["pruned_at_step"]
