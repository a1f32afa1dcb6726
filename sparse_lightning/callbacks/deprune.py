"""``DEPrune``: C. Park et al., NeurIPS 2024. One-shot DCP(-B)(-H) of depthwise convs and l2 filter
pruning of PW-conv2 at a chosen step, then fine-tuning with the masks fixed (the mask engine)."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from sparse_lightning.callbacks.base import MaskedPruningCallback
from sparse_lightning.criteria import check_sparsity
from sparse_lightning.deprune import KERNEL_K_TILE, deprune_masks, find_depthwise_separable
from sparse_lightning.errors import ConfigError
from sparse_lightning.masks import attach_masks


class DEPrune(MaskedPruningCallback):
    """DEPrune / DEPrune-B (``bwt``) / DEPrune-BH (``bwt`` + ``hsr``), one-shot at ``at_step``.

    Depthwise convs (groups == in == out channels) are point-pruned by magnitude (DCP), with BWT
    giving every 32-channel group the same kept count round((1 - PR) * 32*kh*kw), and HSR aligning
    it to the kernel's K tile (β_l = α_l / ε_l ranking, METHODS.md 5). Each block's PW-conv2 loses
    its smallest-l2 output filters. Other callbacks' masks on the same model stay pruned, so it
    composes with gradual pruning of the other pointwise convs.

    Args:
        dw_sparsity: depthwise prune ratio in [0, 1).
        pw2_sparsity: fraction of PW-conv2 filters pruned in [0, 1); 0 leaves them dense.
        bwt: balanced workload tuning.
        hsr: hardware-aware sparsity recalibration (``tile``: the kernel's K tile).
        at_step: optimizer step of the one-shot pruning (0: start of fit).
        alpha_table: measured α_l (speedup of aligning layer l) by parameter name; None: predicted
            from the tile count.
        exclude: fnmatch patterns of parameter names to leave alone.
    """

    def __init__(self, dw_sparsity: float, pw2_sparsity: float = 0.0, bwt: bool = True, hsr: bool = True,
                 at_step: int = 0, tile: int = KERNEL_K_TILE, alpha_table: dict[str, float] | None = None,
                 exclude: Sequence[str] = ()) -> None:
        super().__init__(("*",), exclude)
        self.dw_sparsity = check_sparsity(dw_sparsity, "dw_sparsity")
        self.pw2_sparsity = check_sparsity(pw2_sparsity, "pw2_sparsity")
        if isinstance(at_step, bool) or not isinstance(at_step, int) or at_step < 0:
            raise ConfigError(f"at_step must be an integer >= 0, got {at_step!r}")
        if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
            raise ConfigError(f"tile must be an integer >= 1, got {tile!r}")
        self.bwt, self.hsr, self.at_step, self.tile = bool(bwt), bool(hsr), at_step, tile
        self.alpha_table = None if alpha_table is None else {str(k): float(v) for k, v in dict(alpha_table).items()}
        self.pruned_at_step: int | None = None
        self.hsr_actions: dict[str, str] = {}
        self._layers: list[tuple[str, str | None]] = []

    def _excluded(self, module_name: str) -> bool:
        return any(fnmatch.fnmatchcase(f"{module_name}.weight", p) for p in self.exclude)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        layers = [(d, None if p is None or self._excluded(p) else p)
                  for d, p in find_depthwise_separable(pl_module) if not self._excluded(d)]
        if not layers:
            raise ConfigError(f"DEPrune found no depthwise convs (groups == in == out channels) in {type(pl_module).__name__}")
        self._layers = layers
        self._targets = [f"{d}.weight" for d, _ in layers]
        if self.pw2_sparsity > 0:
            self._targets += [f"{p}.weight" for _, p in layers if p is not None]
        attach_masks(pl_module, self._targets)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.pruned_at_step is not None or trainer.global_step < self.at_step:
            return
        masks, decisions = deprune_masks(pl_module, self.dw_sparsity, self.pw2_sparsity, self.bwt, self.hsr,
                                         self.tile, self.alpha_table, self.current_masks(pl_module), self._layers)
        self.prune(trainer, pl_module, masks)
        self.pruned_at_step = trainer.global_step
        self.hsr_actions = {d.name: d.action for d in decisions}
        counts = {a: sum(v == a for v in self.hsr_actions.values()) for a in ("prune", "restore", "aligned")}
        rank_zero_info(f"DEPrune: {len(self._layers)} depthwise convs to {self.dw_sparsity:.0%} (bwt={self.bwt}, "
                       f"hsr={self.hsr}: {counts}), PW-conv2 filters {self.pw2_sparsity:.0%}, at step {trainer.global_step}")

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.pruned_at_step is None:
            rank_zero_warn(f"DEPrune never pruned: training ended before step {self.at_step}")

    def _config(self) -> dict[str, Any]:
        return {"dw_sparsity": self.dw_sparsity, "pw2_sparsity": self.pw2_sparsity, "bwt": self.bwt,
                "hsr": self.hsr, "tile": self.tile}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"pruned_at_step": self.pruned_at_step, "hsr_actions": dict(self.hsr_actions), **self._config()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = {k: state_dict.get(k) for k in self._config()}
        if saved != self._config():
            rank_zero_warn(f"DEPrune resumes from a checkpoint made with {saved}; now {self._config()}")
        self.pruned_at_step = state_dict["pruned_at_step"]
        self.hsr_actions = dict(state_dict.get("hsr_actions", {}))
