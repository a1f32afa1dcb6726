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
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from sparse_lightning.criteria import check_sparsity
from sparse_lightning.errors import ConfigError
from sparse_lightning.masks import apply_masks, broadcast_masks, get_masks, get_parameter, mask_gradients, set_masks
from sparse_lightning.reparam import (
    LowRankSoftThreshold,
    SoftThreshold,
    apply_str,
    calibrate_scale,
    lowrank_rank,
    prunable_targets,
    register_state_switch,
    remove_str,
    soft_threshold,
    str_targets,
    unstructured_counts,
)
from sparse_lightning.schedules import resolve_step

# Controller constants (per optimizer step): integral and proportional gains on the log-density
# error and the lead (steps) by which the density trend is extrapolated. The control variable
# u = log(lambda) spans the decay of s over S_DECAY, then (split range) the decay of W over W_DECAY.
# The reference ramps over RAMP = (start, end), fractions of the STR phase (GMP's default window
# is 10%..60% of the run), and holds the target for the rest of the phase.
KI, KP, LEAD = 0.05, 2.0, 30.0
S_DECAY = (1e-6, 0.1)
W_DECAY = (1e-3, 0.1)
RAMP = (0.1, 0.7)
_U_LOW = math.log(S_DECAY[0])
_U_SPLIT = math.log(S_DECAY[1])
_U_HIGH = _U_SPLIT + math.log(W_DECAY[1] / W_DECAY[0])


def reference_sparsity(step: int, target: float, ramp_start: int, ramp_end: int) -> float:
    """Zhu & Gupta's cubic ramp: 0 before ``ramp_start``, ``target * (1 - (1 - (t - t0) / (t1 - t0))^3)``, then ``target``."""
    if step >= ramp_end:
        return target
    if step <= ramp_start:
        return 0.0
    return target * (1.0 - (1.0 - (step - ramp_start) / (ramp_end - ramp_start)) ** 3)


def split_decay(u: float) -> tuple[float, float]:
    """``(decay of s, decay of W)`` for the control variable ``u``: s first, W once s's decay is at its maximum."""
    if u <= _U_SPLIT:
        return math.exp(u), 0.0
    return S_DECAY[1], W_DECAY[0] * math.exp(u - _U_SPLIT)


@dataclass(frozen=True)
class DecayController:
    """PI control with lead of ``u = log lambda``: ``e = log(density / density_ref) + LEAD * trend``,
    ``I <- clip(I + KI e)``, ``u = clip(I + KP e)``, decays ``split_decay(u)``.

    Working on log density weighs a 0.5-point miss at 98% like a 2.5-point miss at 90%; the lead
    (an exponential average of the per-step change of log density) stops the decay from growing
    while the sparsity is already catching up, which limits the overshoot that pruning cannot undo.
    Decaying ``s`` alone keeps the weights intact (best accuracy, measured) but stalls at high
    targets, where the loss gradient on ``s`` balances any bounded decay; the split range then also
    shrinks ``W``, as STR's own weight decay does.
    """

    integral: float = math.log(1e-4)
    trend: float = 0.0
    log_density: float | None = None
    u: float = math.log(1e-4)

    def update(self, reference: float, sparsity: float) -> DecayController:
        log_density = math.log(max(1.0 - sparsity, 1e-6))
        trend = self.trend if self.log_density is None else 0.9 * self.trend + 0.1 * (log_density - self.log_density)
        error = log_density - math.log(max(1.0 - reference, 1e-6)) + LEAD * trend
        integral = min(_U_HIGH, max(_U_LOW, self.integral + KI * error))
        u = min(_U_HIGH, max(_U_LOW, integral + KP * error))
        return DecayController(integral, trend, log_density, u)

    @property
    def decays(self) -> tuple[float, float]:
        return split_decay(self.u)


class STR(pl.Callback):
    """Learned per-layer sparsity by soft-threshold reparameterization (Kusupati et al. 2020).

    ``W_eff = sign(W) * relu(|W| - sigmoid(s))``; the objective is ``L(W_eff) + lambda (||W||^2 + s^2)``,
    so the optimizer's weight decay must reach ``s`` (it does: ``s`` is a model parameter, created in
    ``setup`` before ``configure_optimizers``). Use SGD with momentum as the paper does: Adam-type
    optimizers normalize the gradient of ``s`` and the decay stops driving the threshold.

    Args:
        s_init: initial threshold logit; ``sigmoid(s_init) ~ 0`` starts dense. More negative: less sparsity.
        scope: ``"layer"`` (one ``s`` per weight tensor, the paper's default) or ``"global"`` (one ``s``).
        target: global sparsity in [0, 1) to reach (controller, then exact at the mask fix), or None
            for the official behaviour (sparsity set by weight decay and ``s_init``).
        finetune_steps: the last optimizer steps (int) or fraction of the run (float in [0, 1]) trained
            with the masks fixed; 0 keeps STR to the end.
        lowrank: fnmatch patterns of 2-D weights (RNN/GRU matrices) that get structured low-rank STR.
        rank: singular directions kept by the low-rank factorization (None: full rank).
        include, exclude: fnmatch patterns on parameter names.
    """

    def __init__(
        self,
        s_init: float = -5.0,
        scope: Literal["layer", "global"] = "layer",
        target: float | None = None,
        finetune_steps: int | float = 0,
        lowrank: Sequence[str] = (),
        rank: int | None = None,
        include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
    ) -> None:
        if isinstance(s_init, bool) or not isinstance(s_init, (int, float)) or not math.isfinite(s_init):
            raise ConfigError(f"s_init must be a finite number, got {s_init!r}")
        if scope not in ("layer", "global"):
            raise ConfigError(f"scope must be 'layer' or 'global', got {scope!r}")
        if target is not None:
            check_sparsity(target, "target")
        resolve_step(finetune_steps, 1, "finetune_steps")  # type and range only; the run length comes later
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ConfigError(f"rank must be an integer >= 1 or null, got {rank!r}")
        for name, value in (("lowrank", lowrank), ("include", include), ("exclude", exclude)):
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name} must be a list of fnmatch patterns, got {value!r}")
        self.s_init, self.scope, self.target = float(s_init), scope, None if target is None else float(target)
        self.finetune_steps, self.lowrank, self.rank = finetune_steps, tuple(lowrank), rank
        self.include, self.exclude = tuple(include), tuple(exclude)
        self._targets: list[str] = []
        self._fix_step: int | None = None
        self._ramp = (0, 0)
        self._hook = None
        self._last_logged = -1
        self.phase: Literal["str", "finetune", "done"] = "str"
        self.fixed_at_step: int | None = None
        self.controller = DecayController()
        self.sparsity_before_fix: float | None = None

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
        self._check_strategy(trainer)
        if self.phase == "str":
            apply_str(pl_module, self._targets, self.s_init, self.scope, self.lowrank, self.rank)
        if self._hook is None:
            self._hook = register_state_switch(pl_module)

    def _check_strategy(self, trainer: pl.Trainer | None) -> None:
        from pytorch_lightning.strategies import DDPStrategy

        if trainer is None:
            return
        kwargs = getattr(trainer.strategy, "_ddp_kwargs", {}) if isinstance(trainer.strategy, DDPStrategy) else {}
        if isinstance(trainer.strategy, DDPStrategy) and self.finetune_steps and not kwargs.get("find_unused_parameters"):
            raise ConfigError(
                "STR with finetune_steps > 0 under DDP removes the thresholds s mid-run: use "
                "strategy=ddp_find_unused_parameters_true (or finetune_steps=0)"
            )

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
        if self.phase == "finetune":  # resumed after the switch: the low-rank thresholds stay frozen
            self._freeze_lowrank(pl_module)

    def _freeze_lowrank(self, pl_module: pl.LightningModule) -> None:
        for fqn, p in str_targets(pl_module).items():
            if isinstance(p, LowRankSoftThreshold):
                module_name, _, local = fqn.rpartition(".")
                sigma = pl_module.get_submodule(module_name).parametrizations[local].original1
                p.keep &= soft_threshold(sigma.detach(), p.s.detach()) != 0
                p.s.requires_grad_(False)

    def _fix_masks(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remove unstructured STR (threshold calibrated to ``target``), install masks, freeze the ranks."""
        self.sparsity_before_fix = self._str_sparsity(pl_module)
        scale = calibrate_scale(pl_module, self.target) if self.target is not None else 1.0
        masks = remove_str(pl_module, trainer.optimizers, scale=scale, structured=False)
        if masks:  # rank 0's masks on every rank (computed from identical weights; removes any doubt)
            set_masks(pl_module, broadcast_masks(masks, src=0), trainer.optimizers)
        self._freeze_lowrank(pl_module)

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
            mask_gradients(pl_module)
        elif self.target is not None:
            reference = reference_sparsity(trainer.global_step, self.target, *self._ramp)
            self.controller = self.controller.update(reference, self._str_sparsity(pl_module))
            decay_s, decay_w = self.controller.decays
            with torch.no_grad():  # decoupled decay (as AdamW's): the same for any optimizer
                for s in self._thresholds(pl_module):
                    s.mul_(1.0 - decay_s)
                if decay_w:
                    for w in self._weights(pl_module):
                        w.mul_(1.0 - decay_w)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.phase == "finetune":
            apply_masks(pl_module)
        step = trainer.global_step
        if step != self._last_logged and step % max(1, trainer.log_every_n_steps) == 0:
            self._log(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        learned = self.metrics(pl_module) if trainer.loggers else {}  # thresholds and ranks before removal
        if self.phase == "str":
            self.sparsity_before_fix = self._str_sparsity(pl_module)
            scale = calibrate_scale(pl_module, self.target) if self.target is not None else 1.0
            remove_str(pl_module, trainer.optimizers, scale=scale)
        else:
            remove_str(pl_module, trainer.optimizers)
        self.phase = "done"
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
                out[f"str/threshold/{fqn}"] = float(torch.sigmoid(p.s))
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
        self.sparsity_before_fix = state_dict["sparsity_before_fix"]
