"""``TuneReport``: a Lightning callback that reports each validation epoch to Ray Tune.

Every report carries the validation metrics, the global sparsity of the prunable weights as the model
computes with them now (STR's thresholded weights included) and ``objective``, the number ASHA ranks
trials by (:func:`objective`).
"""

from __future__ import annotations

from typing import Literal

import pytorch_lightning as pl
from typing_extensions import override

from sparse_lightning.errors import ConfigError
from sparse_lightning.reparam import prunable_targets
from sparse_lightning.stats import global_sparsity, layer_sparsity

Objective = Literal["min_sparsity", "pareto"]


def objective(accuracy: float, sparsity: float, mode: Objective, min_sparsity: float) -> float:
    """The number a search maximizes.

    ``"min_sparsity"``: the accuracy when ``sparsity >= min_sparsity``, else the accuracy minus the
    shortfall (one accuracy point per sparsity point short), so a run that misses the requirement
    ranks below every run of equal accuracy that meets it. ``"pareto"``: the accuracy (the front
    is read from the trial table; no trial is stopped early).
    """
    if mode == "pareto":
        return accuracy
    return accuracy - max(0.0, min_sparsity - sparsity)


class TuneReport(pl.Callback):
    """Call ``ray.tune.report`` at the end of every validation epoch (not the sanity check).

    Args:
        metric: the accuracy metric in ``trainer.callback_metrics`` (e.g. ``"val/acc"``).
        mode: see :func:`objective`.
        min_sparsity: required global sparsity for ``mode="min_sparsity"``.
    """

    def __init__(self, metric: str = "val/acc", mode: Objective = "min_sparsity", min_sparsity: float = 0.0) -> None:
        if mode not in ("min_sparsity", "pareto"):
            raise ConfigError(f"mode must be 'min_sparsity' or 'pareto', got {mode!r}")
        self.metric, self.mode, self.min_sparsity = metric, mode, float(min_sparsity)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        from ray import tune

        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        if self.metric not in metrics:
            raise ConfigError(f"tune.metric: {self.metric!r} is not logged; logged: {', '.join(sorted(metrics))}")
        sparsity = global_sparsity(layer_sparsity(pl_module, prunable_targets(pl_module)))
        metrics.update(sparsity=sparsity, epoch=trainer.current_epoch, step=trainer.global_step,
                       objective=objective(metrics[self.metric], sparsity, self.mode, self.min_sparsity))
        tune.report(metrics)
