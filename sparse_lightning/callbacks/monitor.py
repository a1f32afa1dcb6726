"""``SparsityMonitor``: logs per-layer and global sparsity and prints a per-layer table at the end."""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_only
from rich.console import Console
from rich.table import Table
from typing_extensions import override

from sparse_lightning.errors import ConfigError
from sparse_lightning.masks import select_parameters
from sparse_lightning.stats import LayerSparsity, global_sparsity, layer_sparsity


def sparsity_metrics(rows: list[LayerSparsity]) -> dict[str, float]:
    """``sparsity/global`` and ``sparsity/layer/<fqn>`` for a logger."""
    metrics = {"sparsity/global": global_sparsity(rows)}
    metrics.update({f"sparsity/layer/{r.name}": r.sparsity for r in rows})
    return metrics


def sparsity_table(rows: list[LayerSparsity], title: str = "Sparsity per layer") -> Table:
    table = Table(title=title)
    for column in ("layer", "shape", "nonzero", "total", "sparsity"):
        table.add_column(column, justify="left" if column in ("layer", "shape") else "right")
    for r in rows:
        table.add_row(r.name, "x".join(map(str, r.shape)), f"{r.nnz:,}", f"{r.numel:,}", f"{r.sparsity:.2%}")
    nnz, numel = sum(r.nnz for r in rows), sum(r.numel for r in rows)
    table.add_row("[b]global[/b]", "", f"{nnz:,}", f"{numel:,}", f"[b]{global_sparsity(rows):.2%}[/b]")
    return table


class SparsityMonitor(Callback):
    """Log sparsity every ``every_n_steps`` optimizer steps; print the per-layer table after fit.

    Reads the weights themselves (not masks), so it reports any method: masks, STR, a loaded model.

    Args:
        every_n_steps: logging period in optimizer steps.
        include, exclude: fnmatch patterns on parameter names (default: every prunable weight).
        print_table: print the per-layer table with rich at the end of fit (rank 0).
    """

    def __init__(
        self, every_n_steps: int = 50, include: Sequence[str] = ("*",), exclude: Sequence[str] = (), print_table: bool = True
    ) -> None:
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ConfigError(f"every_n_steps must be an integer >= 1, got {every_n_steps!r}")
        self.every_n_steps = every_n_steps
        self.include, self.exclude = tuple(include), tuple(exclude)
        self.print_table = print_table
        self._names: list[str] = []
        self._last_logged = -1
        self.last_rows: list[LayerSparsity] = []

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._names = select_parameters(pl_module, self.include, self.exclude)

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.last_rows = layer_sparsity(pl_module, self._names)
        metrics = sparsity_metrics(self.last_rows)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self._last_logged = trainer.global_step

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self._names and step != self._last_logged and step % self.every_n_steps == 0:
            self._log(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._names:
            return
        self._log(trainer, pl_module)
        self._report(trainer)

    @rank_zero_only
    def _report(self, trainer: pl.Trainer) -> None:
        rows = self.last_rows
        for logger in trainer.loggers:
            if hasattr(logger, "log_table"):  # wandb: a per-layer table in the run
                data = [[r.name, str(r.shape), r.nnz, r.numel, r.sparsity] for r in rows]
                logger.log_table(key="sparsity/table", columns=["layer", "shape", "nnz", "numel", "sparsity"], data=data)
        if self.print_table:
            Console().print(sparsity_table(rows))
