"""Guided Sparsity Learning (Park et al., ICLR 2017, sec. 2.3; METHODS.md 4c), with element-wise L1
as the pruning regularizer (GESL) and Park's performance model (``sparse_lightning.perf``).

    Trainer(callbacks=[GuidedSparsity(profile="h100", l1=5e-5)])

At the first optimizer step the model's layer shapes are read (forward hooks on the real batch),
and every target without a useful sparsity range on the profile leaves the set S (the stem conv,
1x1 convs, layers that are bandwidth-bound at every density, layer types the model does not cover).
For layers in S, every optimizer step adds ``l1 * sign(w)`` to the gradient (``fc_l1_scale``
times that for Linear) and, after the step, prunes |w_i| <= th_i = 1 / (|g_i| / th0 + 1 / th_max),
th_max = 10 th0 (SkimCaffe's dynamic threshold), by shrinking the layer's mask. Every
``every_n_epochs`` epochs, per layer in S: sparsity >= 1 - x_up -> freeze the mask; sparsity
stable (< 0.5 points over 5 checks) and <= 1 - x_low -> stop and restore the dense weights saved
at setup. Logs ``gsl/decision/<fqn>`` (0 pruning, 1 frozen, 2 restored dense, 3 dropped) and
``gsl/predicted_speedup``.

The dense weights to restore are buffers ``<param>_gsl_dense`` on the owning modules, so they are in
checkpoints and resume exactly; :func:`drop_dense_copies` removes them for export.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from sparse_lightning.callbacks.base import MaskedPruningCallback
from sparse_lightning.errors import ConfigError
from sparse_lightning.masks import DENSE_COPY_SUFFIX, get_masks, get_parameter
from sparse_lightning.perf.model import MODELED, LayerCost, UsefulRange, costs_from_shapes, model_speedup, useful_range
from sparse_lightning.perf.profiles import HardwareProfile, get_profile

PRUNING, FROZEN, RESTORED, DROPPED = "pruning", "frozen", "restored", "dropped"
DECISION_CODE = {PRUNING: 0, FROZEN: 1, RESTORED: 2, DROPPED: 3}
STABLE_CHECKS = 5  # METHODS 4c [I]: "stabilized" = a change of < 0.5 points over 5 checks
STABLE_DELTA = 0.005
TH_MAX_SCALE = 10.0  # th_max = 10 th0 (SkimCaffe sgd_solver.cpp)


def decide(status: str, sparsity: float, history: Sequence[float], rng: UsefulRange) -> str:
    """One periodic GSL decision for a layer in S (pure). ``history`` ends with ``sparsity``."""
    if status != PRUNING:
        return status
    if sparsity >= rng.max_sparsity:
        return FROZEN
    recent = list(history)[-STABLE_CHECKS:]
    stable = len(recent) == STABLE_CHECKS and max(recent) - min(recent) < STABLE_DELTA
    if stable and sparsity <= rng.min_sparsity:
        return RESTORED
    return PRUNING


def dynamic_threshold(grad: torch.Tensor, th0: float) -> torch.Tensor:
    """th_i = 1 / (|g_i| / th0 + 1 / th_max): large gradients get a small threshold."""
    return 1.0 / (grad.abs() / th0 + 1.0 / (TH_MAX_SCALE * th0))


def drop_dense_copies(model: torch.nn.Module) -> list[str]:
    """Remove the ``<param>_gsl_dense`` buffers GSL keeps for restoring layers (before export, or
    to load the weights into a model trained without GSL). Returns the removed buffer names."""
    removed = []
    for module_name, module in model.named_modules():
        for name in [b for b, _ in module.named_buffers(recurse=False) if b.endswith(DENSE_COPY_SUFFIX)]:
            delattr(module, name)
            removed.append(f"{module_name}.{name}" if module_name else name)
    return removed


class GuidedSparsity(MaskedPruningCallback):
    """GSL with element-wise L1 (GESL), guided by Park's useful sparsity range per layer.

    Args:
        profile: hardware profile name (``h100``, ``a100``, ``cpu``, ``bdw``, ``atom``) or JSON path.
        l1: L1 coefficient on conv weights in S (Park: 5e-5 from a pretrained net).
        fc_l1_scale: multiplier of ``l1`` for Linear layers (Park explored 1e-2..1).
        th0: dynamic-threshold scale; th_max = 10 th0 (SkimCaffe: 1e-4).
        every_n_epochs: period of the freeze/restore checks.
        batch: inputs per inference call the speed model assumes (weights read once per call).
        include, exclude: fnmatch patterns on parameter names.
    """

    def __init__(self, profile: str = "h100", l1: float = 5e-5, fc_l1_scale: float = 0.1, th0: float = 1e-4,
                 every_n_epochs: int = 1, batch: int = 1, include: Sequence[str] = ("*",),
                 exclude: Sequence[str] = ()) -> None:
        super().__init__(include, exclude)
        for key, value in (("l1", l1), ("fc_l1_scale", fc_l1_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{key} must be a number >= 0, got {value!r}")
        if isinstance(th0, bool) or not isinstance(th0, (int, float)) or not th0 > 0:
            raise ConfigError(f"th0 must be a number > 0, got {th0!r}")
        for key, value in (("every_n_epochs", every_n_epochs), ("batch", batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")
        self.profile: HardwareProfile = get_profile(profile)
        self.l1, self.fc_l1_scale, self.th0 = float(l1), float(fc_l1_scale), float(th0)
        self.every_n_epochs, self.batch = every_n_epochs, batch
        self.status: dict[str, str] = {}
        self.history: dict[str, list[float]] = {}
        self.reasons: dict[str, str] = {}
        self.checks = 0
        self.predicted_speedup = 1.0
        self.costs: dict[str, LayerCost] | None = None
        self.ranges: dict[str, UsefulRange] = {}
        self._shapes: dict[str, tuple] = {}
        self._hooks: list = []
        self._thresholds: dict[str, torch.Tensor] = {}
        self._step_seen = -1

    # ------------------------------------------------------------------ setup and layer shapes
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        for fqn in self._targets:  # the dense weights to restore; in the model's state_dict
            module_name, _, local = fqn.rpartition(".")
            module = pl_module.get_submodule(module_name) if module_name else pl_module
            if not hasattr(module, local + DENSE_COPY_SUFFIX):
                module.register_buffer(local + DENSE_COPY_SUFFIX, getattr(module, local).detach().clone())

    def _capture_shapes(self, pl_module: pl.LightningModule) -> None:
        wanted = {fqn.rpartition(".")[0] for fqn in self._targets if fqn.endswith(".weight")}
        for module_name, module in pl_module.named_modules():
            if module_name in wanted and isinstance(module, MODELED):
                def hook(mod, args, out, key=module_name):
                    self._shapes.setdefault(key, (tuple(args[0].shape), tuple(out.shape)))
                self._hooks.append(module.register_forward_hook(hook))

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.costs is None and not self._hooks:
            self._capture_shapes(pl_module)

    def _initialize(self, pl_module: pl.LightningModule) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.costs = costs_from_shapes(pl_module, self._shapes, self.batch)
        self.ranges = {n: useful_range(c, self.profile) for n, c in self.costs.items()}
        if self.status:  # resumed: decisions come from the checkpoint
            return
        for fqn in self._targets:
            rng = self.ranges.get(fqn)
            if rng is None:
                self.status[fqn], self.reasons[fqn] = DROPPED, "no performance model for this layer type"
            elif not rng.useful:
                why = "bandwidth-bound at every density" if rng.bandwidth_bound else "x_up >= x_low"
                self.status[fqn], self.reasons[fqn] = DROPPED, f"no useful range ({why})"
            else:
                self.status[fqn] = PRUNING
                self.reasons[fqn] = f"useful sparsity {rng.min_sparsity:.3f}..{rng.max_sparsity:.3f}"
            self.history[fqn] = []
            rank_zero_info(f"GuidedSparsity: {fqn} -> {self.status[fqn]} ({self.reasons[fqn]})")
        if not self.active():
            rank_zero_warn(f"GuidedSparsity: no layer has a useful sparsity range on profile {self.profile.name!r} "
                           f"at batch {self.batch}; nothing will be pruned")

    def active(self) -> list[str]:
        """Layers still in S (being pruned)."""
        return [n for n, s in self.status.items() if s == PRUNING]

    # ------------------------------------------------------------------ every optimizer step
    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self.costs is None:
            self._initialize(pl_module)
        super().on_before_optimizer_step(trainer, pl_module, optimizer)
        masks = get_masks(pl_module)
        with torch.no_grad():
            for fqn in self.active():
                param = get_parameter(pl_module, fqn)
                if param.grad is None:
                    continue
                scale = self.l1 * (self.fc_l1_scale if self.costs[fqn].kind == "linear" else 1.0)
                param.grad.add_(torch.sign(param) * scale).mul_(masks[fqn])
                self._thresholds[fqn] = dynamic_threshold(param.grad, self.th0)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self._thresholds or trainer.global_step == self._step_seen:
            return
        self._step_seen = trainer.global_step
        masks = get_masks(pl_module)
        new = {fqn: masks[fqn] & (get_parameter(pl_module, fqn).detach().abs() > th)
               for fqn, th in self._thresholds.items()}
        self._thresholds = {}
        self.prune(trainer, pl_module, new)

    # ------------------------------------------------------------------ periodic decisions
    def layer_sparsity(self, pl_module: pl.LightningModule) -> dict[str, float]:
        masks = get_masks(pl_module)
        return {fqn: 1.0 - masks[fqn].float().mean().item() for fqn in self._targets}

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.costs is None or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self.check(trainer, pl_module)

    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Freeze or restore the layers in S, then log decisions and the predicted speedup."""
        self.checks += 1
        sparsity = self.layer_sparsity(pl_module)
        for fqn in self.active():
            self.history[fqn] = (self.history[fqn] + [sparsity[fqn]])[-STABLE_CHECKS:]
            decision = decide(PRUNING, sparsity[fqn], self.history[fqn], self.ranges[fqn])
            if decision == RESTORED:
                self._restore(trainer, pl_module, fqn)
                sparsity[fqn] = self.layer_sparsity(pl_module)[fqn]
            if decision != PRUNING:
                self.status[fqn] = decision
                rank_zero_info(f"GuidedSparsity: {fqn} -> {decision} at sparsity {sparsity[fqn]:.3f} "
                               f"(useful {self.ranges[fqn].min_sparsity:.3f}..{self.ranges[fqn].max_sparsity:.3f})")
        densities = {fqn: 1.0 - s for fqn, s in sparsity.items() if fqn in self.costs}
        self.predicted_speedup = model_speedup(self.costs, self.profile, densities)
        for fqn, status in self.status.items():
            pl_module.log(f"gsl/decision/{fqn}", float(DECISION_CODE[status]), on_step=False, on_epoch=True)
        pl_module.log("gsl/predicted_speedup", self.predicted_speedup, on_step=False, on_epoch=True)

    @torch.no_grad()
    def _restore(self, trainer: pl.Trainer, pl_module: pl.LightningModule, fqn: str) -> None:
        """Bring back the dense weights saved at setup; entries pruned before setup stay pruned."""
        module_name, _, local = fqn.rpartition(".")
        module = pl_module.get_submodule(module_name) if module_name else pl_module
        dense = getattr(module, local + DENSE_COPY_SUFFIX)
        mask = get_masks(pl_module)[fqn] | (dense != 0)
        self.prune(trainer, pl_module, {fqn: mask})
        getattr(module, local).copy_(dense * mask)

    # ------------------------------------------------------------------ checkpoint state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"status": dict(self.status), "history": {k: list(v) for k, v in self.history.items()},
                "reasons": dict(self.reasons), "checks": self.checks, "profile": self.profile.name,
                "l1": self.l1, "batch": self.batch}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = (state_dict.get("profile"), state_dict.get("l1"), state_dict.get("batch"))
        if saved != (self.profile.name, self.l1, self.batch):
            rank_zero_warn(f"GuidedSparsity resumes from a checkpoint made with (profile, l1, batch)={saved}; "
                           f"now {(self.profile.name, self.l1, self.batch)}")
        self.status = dict(state_dict["status"])
        self.history = {k: list(v) for k, v in state_dict["history"].items()}
        self.reasons = dict(state_dict.get("reasons", {}))
        self.checks = state_dict["checks"]
