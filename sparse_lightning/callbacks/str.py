"""``STR``: Soft Threshold Reparameterization (Kusupati et al. 2020) as a Lightning callback.

Every targeted weight is trained through ``W_eff = sign(W) * relu(|W| - sigmoid(s))`` with a learnable
threshold logit ``s`` per layer (:mod:`sparse_lightning.reparam`). The user's optimizer trains ``s``
and weight decay on ``W`` and ``s`` drives the sparsity; nothing else changes in the LightningModule.

Phases, keyed on optimizer steps (``trainer.global_step``):

1. STR: from the first step, until ``finetune_steps`` before the end (or the end).
2. Fine-tuning (optional): STR is removed, the sparse weights written back, the mask engine's masks
   installed, and training continues with the masks fixed (the masked step of ``MaskedPruningCallback``).
   Low-rank tensors keep their factorization with the rank frozen.

At fit end any remaining STR is removed, so the trained model is an ordinary pruned model.

``target``: the official STR cannot ask for a sparsity. With ``target`` set, a controller adapts the
weight decay of the thresholds online (:class:`DecayController`): before every optimizer step it
shrinks every unstructured ``s`` by ``(1 - lambda_s)`` (decoupled decay, the same for SGD and AdamW,
on top of the optimizer's), moving ``log lambda`` by the error between a reference (Zhu & Gupta's
cubic ramp to ``target``) and the measured sparsity. Decaying ``s`` alone stalls at high targets (the
loss gradient on ``s`` balances any bounded decay: the MNIST-1D CNN stopped near 95% when asked for
98%), so once ``lambda_s`` is at its maximum the excess decays the STR weights ``W`` too (split
range). When the masks are fixed, all thresholds are scaled by one common factor so the global
sparsity is exactly ``target`` (learned per-layer budgets kept in proportion). See docs/str.md.

``target_rank``: the same controller, a second instance, for the low-rank tensors: it decays their
``s`` and then their singular values ``sigma`` until the fraction of singular directions kept
follows the ramp to ``target_rank``; the rank fix keeps exactly that fraction of each tensor.

Under DDP the model is wrapped anew when the masks are fixed (the thresholds leave the graph there),
so plain ``ddp``/``ddp_spawn`` works; no ``find_unused_parameters`` is needed.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from sparse_lightning.callbacks.str_control import (
    RAMP,
    SIGMA_DECAY,
    DecayController,
    decay,
    reference_sparsity,
    split_decay,
)
from sparse_lightning.criteria import check_sparsity
from sparse_lightning.errors import ConfigError
from sparse_lightning.masks import MaskedStep, broadcast_masks, get_masks, get_parameter, set_masks
from sparse_lightning.reparam import (
    SCOPES,
    LowRankSoftThreshold,
    SoftThreshold,
    apply_str,
    calibrate_scale,
    fix_ranks,
    lowrank_counts,
    lowrank_rank,
    prunable_targets,
    register_state_switch,
    remove_str,
    str_targets,
    unstructured_counts,
)
from sparse_lightning.schedules import resolve_step

def rewrap_ddp(trainer: pl.Trainer) -> None:
    """Wrap the model in a fresh ``DistributedDataParallel`` after parameters left the graph (Lightning's own wrapping).

    DDP's reducer expects a gradient for every parameter that required one when it was built; the
    thresholds removed (or frozen) at the mask fix would otherwise need ``find_unused_parameters``.
    """
    from pytorch_lightning.strategies import DDPStrategy
    from torch.nn.parallel import DistributedDataParallel

    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and isinstance(strategy.model, DistributedDataParallel):
        strategy.model = strategy._setup_model(strategy.lightning_module)


class STR(pl.Callback):
    """Learned per-layer sparsity by soft-threshold reparameterization (Kusupati et al. 2020).

    ``W_eff = sign(W) * relu(|W| - sigmoid(s))``; the objective is ``L(W_eff) + lambda (||W||^2 + s^2)``,
    so the optimizer's weight decay must reach ``s`` (it does: ``s`` is a model parameter, created in
    ``setup`` before ``configure_optimizers``). Use SGD with momentum as the paper does: Adam-type
    optimizers normalize the gradient of ``s`` and the decay stops driving the threshold.

    Args:
        s_init: initial threshold logit; ``sigmoid(s_init) ~ 0`` starts dense. More negative: less sparsity.
        scope: ``"layer"`` (one ``s`` per weight tensor, the paper's default), ``"global"`` (one ``s``),
            ``"filter"`` (one per output filter/row) or ``"weight"`` (one per weight); low-rank tensors
            always have one scalar ``s``.
        target: global sparsity in [0, 1) to reach (controller, then exact at the mask fix), or None
            for the official behaviour (sparsity set by weight decay and ``s_init``).
        finetune_steps: the last optimizer steps (int) or fraction of the run (float in [0, 1]) trained
            with the masks fixed; 0 keeps STR to the end.
        lowrank: fnmatch patterns of 2-D weights (RNN/GRU matrices) that get structured low-rank STR.
        rank: singular directions kept by the low-rank factorization (None: full rank).
        target_rank: fraction in (0, 1] of each low-rank tensor's ``rank`` to keep (controller, then
            exact at the rank fix), or None (rank set by weight decay and ``s_init``).
        include, exclude: fnmatch patterns on parameter names.
    """

    def __init__(
        self,
        s_init: float = -5.0,
        scope: Literal["layer", "global", "filter", "weight"] = "layer",
        target: float | None = None,
        finetune_steps: int | float = 0,
        lowrank: Sequence[str] = (),
        rank: int | None = None,
        target_rank: float | None = None,
        include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
    ) -> None:
        if isinstance(s_init, bool) or not isinstance(s_init, (int, float)) or not math.isfinite(s_init):
            raise ConfigError(f"s_init must be a finite number, got {s_init!r}")
        if scope not in SCOPES:
            raise ConfigError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        if target is not None:
            check_sparsity(target, "target")
        resolve_step(finetune_steps, 1, "finetune_steps")  # type and range only; the run length comes later
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ConfigError(f"rank must be an integer >= 1 or null, got {rank!r}")
        if target_rank is not None and (isinstance(target_rank, bool) or not isinstance(target_rank, (int, float))
                                        or not 0 < target_rank <= 1):
            raise ConfigError(f"target_rank must be a fraction in (0, 1] or null, got {target_rank!r}")
        if target_rank is not None and not lowrank:
            raise ConfigError("target_rank needs low-rank tensors: set lowrank (fnmatch patterns of 2-D weights)")
        for name, value in (("lowrank", lowrank), ("include", include), ("exclude", exclude)):
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name} must be a list of fnmatch patterns, got {value!r}")
        self.s_init, self.scope, self.target = float(s_init), scope, None if target is None else float(target)
        self.finetune_steps, self.lowrank, self.rank = finetune_steps, tuple(lowrank), rank
        self.target_rank = None if target_rank is None else float(target_rank)
        self.include, self.exclude = tuple(include), tuple(exclude)
        self._targets: list[str] = []
        self._fix_step: int | None = None
        self._ramp = (0, 0)
        self._hook = None
        self._step: MaskedStep | None = None  # the fine-tune phase's per-step masking, prepared once
        self._last_logged = -1
        self.phase: Literal["str", "finetune", "done"] = "str"
        self.fixed_at_step: int | None = None
        self.controller = DecayController()
        self.rank_controller = DecayController()
        self.sparsity_before_fix: float | None = None
        self.ranks: dict[str, int] = {}

    @property
    def targets(self) -> list[str]:
        """Fully-qualified names of the weights under STR (set in ``setup``)."""
        return list(self._targets)

    # ------------------------------------------------------------------ model surgery

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Idempotent and before checkpoint restore and configure_optimizers: s reaches the optimizer
        # and its weight decay, and a checkpoint with STR state finds the parametrizations.
        if stage != "fit":
            return
        self._targets = prunable_targets(pl_module, self.include, self.exclude)
        if not self._targets:
            raise ConfigError(
                f"no prunable weights in {type(pl_module).__name__} (include={list(self.include)}, "
                f"exclude={list(self.exclude)}); prunable layers are Linear, Conv, RNN/LSTM/GRU and Embedding"
            )
        if self.phase == "str":
            apply_str(pl_module, self._targets, self.s_init, self.scope, self.lowrank, self.rank)
        if self._hook is None:
            self._hook = register_state_switch(pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        finetune = resolve_step(self.finetune_steps, total, "finetune_steps")
        if finetune and math.isfinite(total) and finetune >= total:
            raise ConfigError(f"finetune_steps={self.finetune_steps} leaves no STR steps in a run of {int(total)} steps")
        self._fix_step = int(total) - finetune if finetune else None
        str_end = self._fix_step if self._fix_step is not None else total
        self._ramp = (int(RAMP[0] * str_end), int(RAMP[1] * str_end)) if math.isfinite(str_end) else (0, 0)
        if self.target is not None and not math.isfinite(str_end):
            raise ConfigError("STR(target=...) needs a run of finite length (trainer.max_steps or max_epochs)")
        if self.phase == "finetune":  # resumed after the switch: the ranks (``keep``, ``s``) stay fixed
            for s in self._lowrank_tensors(pl_module)[0]:
                s.requires_grad_(False)
        if self.target_rank is not None and not lowrank_counts(pl_module):
            raise ConfigError(f"target_rank is set but no weight matches lowrank={list(self.lowrank)}")

    def _masked(self, pl_module: pl.LightningModule) -> MaskedStep:
        if self._step is None or self._step.stale():
            self._step = MaskedStep(pl_module)
        return self._step

    def _fix_masks(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remove unstructured STR (threshold calibrated to ``target``), install masks, freeze the ranks."""
        self.sparsity_before_fix = self._str_sparsity(pl_module)
        scale = calibrate_scale(pl_module, self.target) if self.target is not None else 1.0
        masks = remove_str(pl_module, trainer.optimizers, scale=scale, structured=False)
        if masks:  # rank 0's masks on every rank (computed from identical weights; removes any doubt)
            set_masks(pl_module, broadcast_masks(masks, src=0), trainer.optimizers)
        self.ranks = fix_ranks(pl_module, self.target_rank)
        self._step = None  # new mask buffers
        rewrap_ddp(trainer)

    # ------------------------------------------------------------------ training hooks

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.phase == "str" and self._fix_step is not None and trainer.global_step >= self._fix_step:
            self._fix_masks(trainer, pl_module)
            self.phase, self.fixed_at_step = "finetune", trainer.global_step
            self._log(trainer, pl_module)
            rank_zero_info(
                f"STR: masks fixed at step {trainer.global_step}, sparsity {self._mask_sparsity(pl_module):.2%}"
                + (f" (controller reached {self.sparsity_before_fix:.2%})" if self.target is not None else "")
            )

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        if self.phase == "finetune":
            self._masked(pl_module).mask_gradients()
            return
        if self.target is not None:
            reference = reference_sparsity(trainer.global_step, self.target, *self._ramp)
            self.controller = self.controller.update(reference, self._str_sparsity(pl_module))
            decay(self._thresholds(pl_module), self._weights(pl_module), *self.controller.decays)
        if self.target_rank is not None:
            reference = reference_sparsity(trainer.global_step, 1.0 - self.target_rank, *self._ramp)
            self.rank_controller = self.rank_controller.update(reference, self._rank_sparsity(pl_module))
            decay(*self._lowrank_tensors(pl_module), *split_decay(self.rank_controller.u, SIGMA_DECAY))

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.phase == "finetune":
            self._masked(pl_module).apply()
        step = trainer.global_step
        if step != self._last_logged and step % max(1, trainer.log_every_n_steps) == 0:
            self._log(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        learned = self.metrics(pl_module) if trainer.loggers else {}  # thresholds and ranks before removal
        if self.phase == "str":
            self.sparsity_before_fix = self._str_sparsity(pl_module)
            scale = calibrate_scale(pl_module, self.target) if self.target is not None else 1.0
            self.ranks = fix_ranks(pl_module, self.target_rank)
            remove_str(pl_module, trainer.optimizers, scale=scale)
        else:
            remove_str(pl_module, trainer.optimizers)
        self.phase = "done"
        if self.ranks:  # the dense rank-r products are written back; their rank is what the factors had
            rank_zero_info("STR: low-rank tensors written back at rank " + ", ".join(f"{k}: {v}" for k, v in self.ranks.items()))
        self._log(trainer, pl_module, {k: v for k, v in learned.items() if k.startswith(("str/threshold/", "str/rank/"))})

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._hook is not None:
            self._hook.remove()
            self._hook = None

    # ------------------------------------------------------------------ measurements and logs

    def _thresholds(self, pl_module: pl.LightningModule) -> list[torch.Tensor]:
        """Every unstructured STR threshold ``s`` (once when shared)."""
        return list({id(p.s): p.s for p in str_targets(pl_module).values() if isinstance(p, SoftThreshold)}.values())

    def _weights(self, pl_module: pl.LightningModule) -> list[torch.Tensor]:
        """Every unstructured STR weight ``W`` (the stored dense tensor)."""
        out = []
        for fqn, p in str_targets(pl_module).items():
            if isinstance(p, SoftThreshold):
                module_name, _, local = fqn.rpartition(".")
                out.append(pl_module.get_submodule(module_name).parametrizations[local].original)
        return out

    def _lowrank_tensors(self, pl_module: pl.LightningModule) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The thresholds ``s`` and singular values ``sigma`` of the low-rank STR tensors."""
        pairs = [(p.s, pl_module.get_submodule(fqn.rpartition(".")[0]).parametrizations[fqn.rpartition(".")[2]].original1)
                 for fqn, p in str_targets(pl_module).items() if isinstance(p, LowRankSoftThreshold)]
        return [s for s, _ in pairs], [sigma for _, sigma in pairs]

    def _rank_sparsity(self, pl_module: pl.LightningModule) -> float:
        """The fraction of singular directions pruned over all low-rank tensors."""
        counts = lowrank_counts(pl_module).values()
        return 1.0 - sum(k for k, _ in counts) / max(1, sum(r for _, r in counts))

    def _str_sparsity(self, pl_module: pl.LightningModule) -> float:
        counts = unstructured_counts(pl_module).values()
        numel = sum(n for _, n in counts)
        return 1.0 - sum(k for k, _ in counts) / numel if numel else 0.0

    @torch.no_grad()
    def _mask_sparsity(self, pl_module: pl.LightningModule) -> float:
        masks = [m for fqn, m in get_masks(pl_module).items() if fqn in self._targets]
        numel = sum(m.numel() for m in masks)
        return 1.0 - sum(int(m.sum()) for m in masks) / numel if numel else 0.0

    @torch.no_grad()
    def metrics(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """``str/threshold/<fqn>``, ``str/sparsity/<fqn>``, ``str/sparsity`` (global), ``str/rank/<fqn>``, ``str/decay``."""
        out: dict[str, float] = {}
        under = str_targets(pl_module)
        nnz = numel = 0
        for fqn in self._targets:
            p = under.get(fqn)
            if p is not None:
                out[f"str/threshold/{fqn}"] = float(torch.sigmoid(p.s).mean())  # mean over filters/weights
            if any(fnmatch.fnmatchcase(fqn, pattern) for pattern in self.lowrank):
                if isinstance(p, LowRankSoftThreshold):
                    out[f"str/rank/{fqn}"] = float(lowrank_rank(pl_module, fqn))
                continue
            w = get_parameter(pl_module, fqn)  # W_eff while parametrized
            k = int(torch.count_nonzero(w))
            out[f"str/sparsity/{fqn}"] = 1.0 - k / w.numel()
            nnz, numel = nnz + k, numel + w.numel()
        if numel:
            out["str/sparsity"] = 1.0 - nnz / numel
        if self.target is not None and self.phase == "str":
            out["str/decay_s"], out["str/decay_w"] = self.controller.decays
        if self.target_rank is not None and self.phase == "str":
            out["str/rank_decay_s"], out["str/rank_decay_sigma"] = split_decay(self.rank_controller.u, SIGMA_DECAY)
        return out

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, extra: dict[str, float] | None = None) -> None:
        self._last_logged = trainer.global_step
        if not trainer.loggers:
            return
        metrics = {**self.metrics(pl_module), **(extra or {})}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    # ------------------------------------------------------------------ checkpointing

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "fixed_at_step": self.fixed_at_step, "controller": asdict(self.controller),
                "rank_controller": asdict(self.rank_controller), "ranks": dict(self.ranks),
                "sparsity_before_fix": self.sparsity_before_fix, "target": self.target, "s_init": self.s_init,
                "scope": self.scope}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = (state_dict.get("target"), state_dict.get("s_init"), state_dict.get("scope"))
        if saved != (self.target, self.s_init, self.scope):
            rank_zero_warn(f"STR resumes from a checkpoint made with (target, s_init, scope)={saved}; "
                           f"now {(self.target, self.s_init, self.scope)}")
        self.phase = state_dict["phase"]
        self.fixed_at_step = state_dict["fixed_at_step"]
        self.controller = DecayController(**state_dict["controller"])
        self.rank_controller = DecayController(**state_dict.get("rank_controller", {}))
        self.ranks = dict(state_dict.get("ranks", {}))
        self.sparsity_before_fix = state_dict["sparsity_before_fix"]
