"""The masked-training step shared by every mask-based pruning callback.

Subclasses decide *when* and *which* weights to prune and call :meth:`MaskedPruningCallback.prune`;
this base attaches the mask buffers in ``setup`` and keeps the invariants of ``masks.py`` on every
optimizer step: gradients of pruned weights zeroed before the step, weights re-masked after it.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from sparse_lightning.masks import (
    MaskedStep,
    attach_masks,
    broadcast_masks,
    get_masks,
    get_parameter,
    require_targets,
    set_masks,
)


class MaskedPruningCallback(Callback):
    """Base class: targets selected by name pattern, masks as buffers, masked optimizer steps.

    Args:
        include: fnmatch patterns of parameter names to prune (``"*"``: every prunable weight).
        exclude: patterns to leave dense, e.g. ``("classifier.*",)``.
    """

    def __init__(self, include: Sequence[str] = ("*",), exclude: Sequence[str] = ()) -> None:
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self._targets: list[str] = []
        self._step: MaskedStep | None = None  # the per-step masking, prepared once

    @property
    def targets(self) -> list[str]:
        """Fully-qualified names of the parameters this callback prunes (set in ``setup``)."""
        return list(self._targets)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Idempotent, and before checkpoint restore: the restored state_dict finds the buffers.
        self._targets = require_targets(pl_module, self.include, self.exclude)
        attach_masks(pl_module, self._targets)
        self._step = None

    def _masked(self, pl_module: pl.LightningModule) -> MaskedStep:
        # Built lazily at the first step: after the move to the device, after configure_model (FSDP2
        # replaces parameters there) and after a checkpoint restore; rebuilt when a mask changed.
        if self._step is None or self._step.stale():
            self._step = MaskedStep(pl_module)
        return self._step

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self._masked(pl_module).mask_gradients()

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        self._masked(pl_module).apply()

    def weights(self, pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        # FSDP2: gather sharded weights, so the (global) threshold sees every entry on every rank.
        return {name: _full(get_parameter(pl_module, name)) for name in self._targets}

    def current_masks(self, pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        masks = get_masks(pl_module)
        return {name: masks[name] for name in self._targets}

    def prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, masks: dict[str, torch.Tensor]) -> None:
        """Install ``masks`` (rank 0's copy on every rank) and clean the optimizer state."""
        set_masks(pl_module, broadcast_masks(masks, src=0), trainer.optimizers)
        self._step = None  # set_masks may have attached new mask buffers


def _full(tensor):
    from torch.distributed.tensor import DTensor
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
