"""``IterativePruning``: Han et al. (2015), "Learning both Weights and Connections", as a callback.

Train dense for ``dense_steps``; then ``rounds`` times: prune every weight with
``|w| < q * std(W_l)`` (std over the layer's surviving weights), and retrain the surviving weights
(never re-initialized) for ``retrain_steps`` with:

* the learning rate scaled by ``lr_scale`` (the paper: /10 on MNIST, /100 on ImageNet);
* the same L1 or L2 regularization throughout, added to the gradients of the pruned layers;
* each ``nn.Dropout`` after a pruned layer at ``D_r = D_o * sqrt(C_ir / C_io)`` (Sec. 3.2), with
  ``C_io``/``C_ir`` that layer's connections before/after pruning;
* with ``freeze``, conv and FC layers are pruned and retrained in turn, the other kind held fixed
  (Sec. 3.3 and the authors' rebuttal: "the conv layers are fixed while retraining the fc layers
  and vice-versa").
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from sparse_lightning.callbacks.base import MaskedPruningCallback
from sparse_lightning.callbacks.gradual import log_metrics, mask_sparsity
from sparse_lightning.criteria import LAYER_TYPES, layer_types, std_threshold_masks, std_thresholds
from sparse_lightning.errors import ConfigError
from sparse_lightning.masks import attach_masks, get_parameter, require_targets
from sparse_lightning.schedules import check_han, han_position, han_prune_steps, resolve_step

_PHASES = ("conv", "fc")  # with freeze: conv layers pruned and retrained first, then the FC (and recurrent) ones


def dropout_layers(model: nn.Module, layer_names: Sequence[str]) -> dict[str, str]:
    """Dropout module name -> name of the nearest preceding layer in ``layer_names``.

    Follows module registration order, aliases included (``named_modules(remove_duplicate=False)``),
    so a dropout that also sits in an ``nn.Sequential`` after its layer is matched to that layer.
    A dropout with no preceding layer is left out (its rate is never changed).
    """
    canonical = {id(m): name for name, m in model.named_modules()}
    layers = set(layer_names)
    out: dict[str, str] = {}
    last = None
    for _, module in model.named_modules(remove_duplicate=False):
        name = canonical[id(module)]
        if name in layers:
            last = name
        elif isinstance(module, nn.modules.dropout._DropoutNd) and last is not None:
            out.setdefault(name, last)
    return out


class IterativePruning(MaskedPruningCallback):
    """Han et al. (2015): dense training, then rounds of std-threshold pruning and retraining.

    Args:
        quality: the quality parameter ``q`` of ``tau = q * std(W)``: one number for every layer,
            or a mapping of layer type (``conv``, ``linear``, ``recurrent``, ``embedding``) or
            parameter-name pattern (``net.classifier.*``; wins over the type) -> ``q``; layers
            without one stay dense. Han pick q per layer by a sensitivity scan and give the
            sensitive ones (conv, the first conv layer) a smaller q.
        dense_steps: optimizer steps of dense training before the first prune.
        retrain_steps: optimizer steps of retraining after each prune. Both steps: an int, or a
            float in [0, 1] as a fraction of the run's optimizer steps.
        rounds: prune -> retrain iterations (per phase with ``freeze``).
        lr_scale: learning-rate multiplier while retraining, in [0, 1]; 0 prunes without retraining.
        regularization: ``{"l1": lambda}`` and/or ``{"l2": lambda}``, added to the pruned layers'
            gradients at every step (``lambda * sign(w)``, ``lambda * w``); None: only the optimizer's own.
        freeze: prune/retrain conv layers with the FC layers fixed, then FC with conv fixed.
        include, exclude: fnmatch patterns on parameter names.
    """

    def __init__(
        self,
        quality: float | Mapping[str, float] = 1.0,
        dense_steps: int | float = 0.5,
        retrain_steps: int | float = 0.1,
        rounds: int = 3,
        lr_scale: float = 0.1,
        regularization: Mapping[str, float] | None = None,
        freeze: bool = False,
        include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
    ) -> None:
        super().__init__(include, exclude)
        self.quality = _check_quality(quality)
        for name, value in (("dense_steps", dense_steps), ("retrain_steps", retrain_steps)):
            resolve_step(value, 1, name)
        if retrain_steps == 0:
            raise ConfigError("retrain_steps must be >= 1 (use lr_scale=0 to prune without retraining)")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ConfigError(f"rounds must be an integer >= 1, got {rounds!r}")
        if isinstance(lr_scale, bool) or not isinstance(lr_scale, (int, float)) or not 0.0 <= lr_scale <= 1.0:
            raise ConfigError(f"lr_scale must be a number in [0, 1], got {lr_scale!r}")
        self.regularization = _check_regularization(regularization)
        if not isinstance(freeze, bool):
            raise ConfigError(f"freeze must be true or false, got {freeze!r}")
        self.dense_steps, self.retrain_steps, self.rounds = dense_steps, retrain_steps, rounds
        self.lr_scale, self.freeze = float(lr_scale), freeze
        self._groups: list[list[str]] = []  # the targets pruned in each phase
        self._q: dict[str, float] = {}
        self._prune_steps: list[int] = []
        self._dense = self._retrain = 0
        self._events_done = 0
        self._dropout: dict[str, str] = {}  # dropout module -> layer module
        self._dropout_p0: dict[str, float] = {}  # D_o
        self._frozen: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self._weights: list[torch.nn.Parameter] = []
        self._saved_lr: list[tuple[dict, float]] = []
        self._last_logged = -1
        self._loaded: dict[str, Any] | None = None

    # ------------------------------------------------------------------ setup

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        candidates = require_targets(pl_module, self.include, self.exclude)
        kinds = layer_types(pl_module, candidates)
        patterns = {k: q for k, q in self.quality.items() if k not in LAYER_TYPES}
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in candidates):
                raise ConfigError(f"IterativePruning: quality pattern {pattern!r} matches no prunable weight "
                                  f"of {type(pl_module).__name__}")
        self._q = {}
        for n in candidates:  # a name pattern wins over the layer type
            q = next((q for k, q in patterns.items() if fnmatch.fnmatchcase(n, k)), self.quality.get(kinds[n]))
            if q is not None:
                self._q[n] = q
        self._targets = [n for n in candidates if n in self._q]
        if not self._targets:
            raise ConfigError(f"IterativePruning: no weights of the layer types {sorted(self.quality)} "
                              f"in {type(pl_module).__name__} (found: {sorted(set(kinds.values()))})")
        attach_masks(pl_module, self._targets)
        self._step = None  # the base's prepared masking belongs to the model set up last
        groups = [[n for n in self._targets if (kinds[n] == "conv") == (phase == "conv")] for phase in _PHASES]
        self._groups = [g for g in groups if g] if self.freeze else [list(self._targets)]
        layers = sorted({n.rpartition(".")[0] for n in self._targets})
        self._dropout = dropout_layers(pl_module, layers)
        for name in self._dropout:
            self._dropout_p0.setdefault(name, float(pl_module.get_submodule(name).p))

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        dense = resolve_step(self.dense_steps, total, "dense_steps")
        retrain = resolve_step(self.retrain_steps, total, "retrain_steps")
        try:
            check_han(dense, retrain, self.rounds, len(self._groups))
        except ConfigError as exc:
            raise ConfigError(f"IterativePruning: {exc} (resolved from {self.retrain_steps} of {total} steps)") from None
        self._dense, self._retrain = dense, retrain
        self._prune_steps = han_prune_steps(dense, retrain, self.rounds, len(self._groups))
        if self._loaded is not None and self._loaded.get("prune_steps") != self._prune_steps:
            rank_zero_warn(f"IterativePruning resumes from a checkpoint with prune steps {self._loaded.get('prune_steps')}; "
                           f"now {self._prune_steps}")
        end = self._prune_steps[-1] + retrain
        if math.isfinite(total) and end > total:
            rank_zero_warn(f"IterativePruning: the schedule needs {end} optimizer steps, the run has {int(total)}")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Parameter objects survive .to(device) and DDP wrapping: look them up once, not every step
        self._weights = [get_parameter(pl_module, n) for n in self._targets]
        if self._events_done:  # resumed inside a retraining phase: restore its frozen set and dropout rates
            self._enter_phase(pl_module, self._events_done - 1)

    # ------------------------------------------------------------------ per step

    @property
    def retraining(self) -> bool:
        return self._events_done > 0

    def position(self, step: int) -> tuple[int, int]:
        """``(round, phase)`` of ``step`` (``(-1, -1)`` while dense); valid once fit has started."""
        return han_position(step, self._dense, self._retrain, self.rounds, len(self._groups))

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        pruned = False
        if self._events_done < len(self._prune_steps) and step >= self._prune_steps[self._events_done]:
            self._prune_event(trainer, pl_module, self._events_done)
            self._events_done += 1
            pruned = True
        if pruned or (step != self._last_logged and step % max(trainer.log_every_n_steps, 1) == 0):
            log_metrics(trainer, {"sparsity/global": mask_sparsity(self.current_masks(pl_module).values())})
            self._last_logged = step

    def _prune_event(self, trainer: pl.Trainer, pl_module: pl.LightningModule, k: int) -> None:
        names = self._groups[k % len(self._groups)]
        weights, current = self.weights(pl_module), self.current_masks(pl_module)
        quality = {n: self._q[n] for n in names}
        thresholds = std_thresholds(weights, quality, current)
        self.prune(trainer, pl_module, std_threshold_masks(weights, quality, current))
        self._enter_phase(pl_module, k)
        masks = self.current_masks(pl_module)
        round_, phase = divmod(k, len(self._groups))
        metrics = {f"iterative/threshold/{n}": t for n, t in thresholds.items()}
        metrics.update({"iterative/round": float(round_), "iterative/phase": float(phase)})
        log_metrics(trainer, metrics)
        rank_zero_info(f"IterativePruning: round {round_ + 1}/{self.rounds}, phase {phase + 1}/{len(self._groups)} "
                       f"at step {trainer.global_step}: sparsity {mask_sparsity(masks.values()):.2%}")

    def _enter_phase(self, pl_module: pl.LightningModule, k: int) -> None:
        """Dropout rates for the current masks; the other phase's layers fixed (with ``freeze``)."""
        masks = self.current_masks(pl_module)
        for drop, layer in self._dropout.items():
            kept = sum(int(m.sum()) for n, m in masks.items() if n.rpartition(".")[0] == layer)
            total = sum(m.numel() for n, m in masks.items() if n.rpartition(".")[0] == layer)
            pl_module.get_submodule(drop).p = self._dropout_p0[drop] * math.sqrt(kept / total)
        self._frozen = []
        if len(self._groups) > 1:
            training = {n.rpartition(".")[0] for n in self._groups[k % len(self._groups)]}
            fixed = {n.rpartition(".")[0] for n in self._targets} - training
            self._frozen = [(p, p.detach().clone()) for layer in sorted(fixed)
                            for p in pl_module.get_submodule(layer).parameters(recurse=False)]

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        self._regularize(pl_module)
        for param, _ in self._frozen:
            if param.grad is not None:
                param.grad.zero_()
        super().on_before_optimizer_step(trainer, pl_module, optimizer)  # mask the gradients
        if self.retraining and self.lr_scale != 1.0:
            for group in optimizer.param_groups:
                self._saved_lr.append((group, group["lr"]))
                group["lr"] = group["lr"] * self.lr_scale

    @torch.no_grad()
    def _regularize(self, pl_module: pl.LightningModule) -> None:
        l1, l2 = self.regularization.get("l1", 0.0), self.regularization.get("l2", 0.0)
        if not (l1 or l2):
            return
        weights = [w for w in self._weights or [get_parameter(pl_module, n) for n in self._targets] if w.grad is not None]
        grads = [w.grad for w in weights]
        if l2 and grads:
            torch._foreach_add_(grads, weights, alpha=l2)
        if l1 and grads:
            torch._foreach_add_(grads, torch._foreach_sign(weights), alpha=l1)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        for group, lr in self._saved_lr:  # the scheduler keeps owning the unscaled rate
            group["lr"] = lr
        self._saved_lr = []
        with torch.no_grad():
            for param, value in self._frozen:
                param.copy_(value)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._events_done < len(self._prune_steps):
            rank_zero_warn(f"IterativePruning: training ended at step {trainer.global_step} after "
                           f"{self._events_done} of {len(self._prune_steps)} prunes")

    # ------------------------------------------------------------------ state

    @property
    @override
    def state_key(self) -> str:
        # which weights, not the quality values: a resumed run may retune those
        return self._generate_state_key(selects=sorted(self.quality), include=self.include, exclude=self.exclude)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"events_done": self._events_done, "prune_steps": list(self._prune_steps),
                "dropout_p0": dict(self._dropout_p0), "quality": dict(self.quality),
                "regularization": dict(self.regularization), "lr_scale": self.lr_scale}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = dict(state_dict)
        self._events_done = int(state_dict["events_done"])
        self._dropout_p0.update({k: float(v) for k, v in state_dict.get("dropout_p0", {}).items()})
        echo = {k: state_dict.get(k) for k in ("quality", "regularization", "lr_scale")}
        now = {"quality": dict(self.quality), "regularization": dict(self.regularization), "lr_scale": self.lr_scale}
        if echo != now:
            rank_zero_warn(f"IterativePruning resumes from a checkpoint made with {echo}; now {now}")


def _check_quality(quality: float | Mapping[str, float]) -> dict[str, float]:
    if isinstance(quality, Mapping):
        items = dict(quality)
    else:
        items = {kind: quality for kind in LAYER_TYPES}
    if not items:
        raise ConfigError("quality must be a number or a non-empty mapping of layer type -> q")
    out = {}
    for kind, q in items.items():
        if kind not in LAYER_TYPES and not any(c in str(kind) for c in ".*?["):
            raise ConfigError(f"quality: unknown layer type {kind!r}; allowed: {', '.join(LAYER_TYPES)}, "
                              "or a parameter name pattern such as 'net.classifier.*'")
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not math.isfinite(q) or q < 0:
            raise ConfigError(f"quality.{kind} must be a number >= 0, got {q!r}")
        out[kind] = float(q)
    return out


def _check_regularization(regularization: Mapping[str, float] | None) -> dict[str, float]:
    if regularization is None:
        return {}
    if not isinstance(regularization, Mapping):
        raise ConfigError(f"regularization must be a mapping like {{l2: 1e-4}}, got {regularization!r}")
    out = {}
    for key, value in dict(regularization).items():
        if key not in ("l1", "l2"):
            raise ConfigError(f"regularization: unknown key {key!r}; allowed: l1, l2")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"regularization.{key} must be a number >= 0, got {value!r}")
        out[key] = float(value)
    return out
