"""``GradualPruning``: prune during training, per optimizer step, with one setting per layer type.

Two schedules (METHODS.md Sec. 2):

* ``"cubic"`` (Zhu & Gupta 2017, GMP): every ``every`` steps from ``start_step`` to ``end_step``
  each layer is pruned to ``s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3`` of its weights,
  smallest |w| first.
* ``"narang"`` (Narang et al. 2017): every ``every`` steps strictly between ``start_step`` and
  ``end_step`` the weights with ``|w| <= epsilon(itr)`` are pruned, the threshold rising with slope
  ``theta`` until ``ramp_step`` and ``phi = 1.5 theta`` after, to reach ``q`` at ``end_step``.

Both start from the dense model during the initial training: no retraining, no extra steps.
Masks only shrink. The trajectory (``sparsity/global``, ``sparsity/target`` or
``sparsity/threshold/<type>``, ``sparsity/type/<type>``) goes to the trainer's loggers at every
pruning step and every ``trainer.log_every_n_steps`` steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from sparse_lightning.callbacks.base import MaskedPruningCallback
from sparse_lightning.criteria import LAYER_TYPES, check_sparsity, layer_types, magnitude_masks, magnitude_quantile, threshold_masks
from sparse_lightning.errors import ConfigError
from sparse_lightning.masks import attach_masks, get_parameter, require_targets, select_parameters
from sparse_lightning.schedules import (
    check_steps,
    cubic_sparsity,
    cubic_update_due,
    narang_threshold,
    narang_update_due,
    resolve_step,
)

Schedule = Literal["cubic", "narang"]
_STEP_KEYS = ("start_step", "ramp_step", "end_step", "every")
_KEYS = {"cubic": ("target", "initial", "start_step", "end_step", "every"),
         "narang": ("target", "q", "start_step", "ramp_step", "end_step", "every")}


def log_metrics(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Send ``metrics`` to every logger of the trainer at the current optimizer step (loggers log on rank 0)."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)


def mask_sparsity(masks: Iterable[torch.Tensor]) -> float:
    """1 - kept / total over the given boolean masks."""
    kept = total = 0
    for m in masks:
        kept += int(m.sum())
        total += m.numel()
    return 1.0 - kept / total if total else 0.0


def dense_quantiles(model: torch.nn.Module, fraction: float = 0.9, include: Sequence[str] = ("*",),
                    exclude: Sequence[str] = ()) -> dict[str, float]:
    """Narang's ``q`` per layer type: the ``fraction`` quantile of |w| in a trained dense ``model``."""
    names = select_parameters(model, include, exclude)
    kinds = layer_types(model, names)
    return {kind: magnitude_quantile([get_parameter(model, n) for n in names if kinds[n] == kind], fraction)
            for kind in sorted(set(kinds.values()))}


@dataclass
class _Plan:
    """One layer type's settings, with steps resolved to integers in ``on_fit_start``."""

    kind: str
    names: list[str]
    target: float | None
    initial: float
    q: float | None
    steps: dict[str, int | float | None]  # start_step, ramp_step, end_step, every (int, or fraction)
    start: int = 0
    ramp: int = 0
    end: int = 0
    every: int = 1


class GradualPruning(MaskedPruningCallback):
    """Gradual pruning during training: Zhu & Gupta's cubic schedule or Narang's threshold ramp.

    Args:
        schedule: ``"cubic"`` (GMP) or ``"narang"``.
        layers: layer type (``conv``, ``linear``, ``recurrent``, ``embedding``) -> settings; types
            left out stay dense. Settings: ``target`` (cubic: final sparsity ``s_f``; narang: the
            quantile of the type's |w| taken as ``q`` at its first update, when ``q`` is not
            given), ``initial`` (cubic ``s_i``, default 0), ``q`` (narang: final threshold; the
            paper's choice is the 90th percentile of |w| in a trained dense model, see
            :func:`dense_quantiles`), and per-type ``start_step``/``ramp_step``/``end_step``/``every``
            overriding the arguments below. Default: every type at ``target: 0.9``.
        start_step, end_step: pruning window in optimizer steps; a float in [0, 1] is a fraction
            of the run's optimizer steps (``trainer.estimated_stepping_batches``).
        ramp_step: narang only: where the slope changes from ``theta`` to ``1.5 theta``
            (default: midway). Narang's heuristic: start at epoch 2, ramp at 25%, end at 50% of training.
        every: update period in optimizer steps (``dt`` / ``freq``).
        include, exclude: fnmatch patterns on parameter names.
    """

    def __init__(
        self,
        schedule: Schedule = "cubic",
        layers: Mapping[str, Mapping[str, float]] | None = None,
        start_step: int | float = 0,
        end_step: int | float = 0.5,
        ramp_step: int | float | None = None,
        every: int = 100,
        include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
    ) -> None:
        super().__init__(include, exclude)
        if schedule not in _KEYS:
            raise ConfigError(f"schedule must be 'cubic' or 'narang', got {schedule!r}")
        self.schedule = schedule
        defaults = {"start_step": start_step, "ramp_step": ramp_step, "end_step": end_step, "every": every}
        if ramp_step is not None and schedule != "narang":
            raise ConfigError("ramp_step is a setting of the 'narang' schedule only")
        self.layers = self._check_layers(layers, defaults)
        self._plans: list[_Plan] = []
        self._last_update = -1
        self._last_logged = -1
        self._resolved = False
        self._loaded_steps: dict[str, list[int]] | None = None
        self._numel: dict[str, int] = {}
        self._q: dict[str, float] = {}  # narang: q per type (given, or measured at the first update)
        self._threshold: dict[str, float] = {}  # narang: epsilon in effect per type

    # ------------------------------------------------------------------ config

    def _check_layers(self, layers: Mapping[str, Mapping[str, float]] | None,
                      defaults: dict[str, Any]) -> dict[str, dict[str, Any]]:
        if layers is None:
            layers = {kind: {"target": 0.9} for kind in LAYER_TYPES}
        if not isinstance(layers, Mapping) or not layers:
            raise ConfigError(f"layers must be a non-empty mapping of layer type -> settings, got {layers!r}")
        allowed = _KEYS[self.schedule]
        out = {}
        for kind, settings in layers.items():
            if kind not in LAYER_TYPES:
                raise ConfigError(f"layers: unknown layer type {kind!r}; allowed: {', '.join(LAYER_TYPES)}")
            if not isinstance(settings, Mapping):
                raise ConfigError(f"layers.{kind} must be a mapping of settings, got {settings!r}")
            unknown = sorted(set(settings) - set(allowed))
            if unknown:
                raise ConfigError(f"layers.{kind}.{unknown[0]}: unknown setting for schedule {self.schedule!r}; "
                                  f"allowed: {', '.join(allowed)}")
            s = {**defaults, **dict(settings)}
            if self.schedule == "cubic":
                if "target" not in s:
                    raise ConfigError(f"layers.{kind} needs a target sparsity for the cubic schedule")
                s["target"] = check_sparsity(s["target"], f"layers.{kind}.target")
                s["initial"] = check_sparsity(s.get("initial", 0.0), f"layers.{kind}.initial")
                if s["initial"] > s["target"]:
                    raise ConfigError(f"layers.{kind}: initial sparsity {s['initial']} exceeds target {s['target']}")
            else:
                if ("q" in s) == ("target" in s):
                    raise ConfigError(f"layers.{kind} needs exactly one of q (final threshold) or target (quantile)")
                if "q" in s:
                    q = s["q"]
                    if isinstance(q, bool) or not isinstance(q, (int, float)) or not math.isfinite(q) or q <= 0:
                        raise ConfigError(f"layers.{kind}.q must be a number > 0, got {q!r}")
                    s["q"] = float(q)
                else:
                    s["target"] = check_sparsity(s["target"], f"layers.{kind}.target")
            for key in _STEP_KEYS:
                value = s.get(key)
                if key == "ramp_step" and value is None:
                    continue
                if key == "every" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                    raise ConfigError(f"layers.{kind}.every must be an integer >= 1, got {value!r}")
                resolve_step(value, 1, f"layers.{kind}.{key}")  # type and range; ordering once resolved
            if all(isinstance(s[k], int) for k in ("start_step", "end_step")):
                ramp = s.get("ramp_step")
                _check_window(kind, s["start_step"], ramp if isinstance(ramp, int) else None, s["end_step"], s["every"])
            out[kind] = s
        return out

    # ------------------------------------------------------------------ hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        candidates = require_targets(pl_module, self.include, self.exclude)
        kinds = layer_types(pl_module, candidates)
        self._targets = [n for n in candidates if kinds[n] in self.layers]
        if not self._targets:
            raise ConfigError(f"GradualPruning: no weights of the configured layer types {sorted(self.layers)} "
                              f"in {type(pl_module).__name__} (found: {sorted(set(kinds.values()))})")
        attach_masks(pl_module, self._targets)
        self._step = None  # the base's prepared masking belongs to the model set up last
        self._numel = {n: get_parameter(pl_module, n).numel() for n in self._targets}
        self._plans = [
            _Plan(kind, [n for n in self._targets if kinds[n] == kind], s.get("target"), s.get("initial", 0.0),
                  s.get("q"), {k: s.get(k) for k in _STEP_KEYS})
            for kind, s in self.layers.items() if any(kinds[n] == kind for n in self._targets)
        ]
        for plan in self._plans:
            if plan.q is not None:
                self._q.setdefault(plan.kind, plan.q)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        for plan in self._plans:
            st = plan.steps
            plan.start = resolve_step(st["start_step"], total, "start_step")
            plan.end = resolve_step(st["end_step"], total, "end_step")
            plan.every = int(st["every"])
            ramp = st["ramp_step"]
            plan.ramp = (plan.start + plan.end) // 2 if ramp is None else resolve_step(ramp, total, "ramp_step")
            _check_window(plan.kind, plan.start, plan.ramp if self.schedule == "narang" else None, plan.end, plan.every)
        self._resolved = True
        steps = self._steps_state()
        if self._loaded_steps is not None and self._loaded_steps != steps:
            rank_zero_warn(f"GradualPruning resumes from a checkpoint whose schedule steps were {self._loaded_steps}; "
                           f"now {steps}")

    def _due(self, plan: _Plan, step: int) -> bool:
        if self.schedule == "cubic":
            return cubic_update_due(step, plan.start, plan.end, plan.every)
        return narang_update_due(step, plan.start, plan.end, plan.every)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_update:  # later micro-batches of an accumulated step
            return
        due = [plan for plan in self._plans if self._due(plan, step)]
        if due:
            self.prune(trainer, pl_module, self._masks_at(trainer, pl_module, due, step))
            self._last_update = step
        if due or (step != self._last_logged and step % max(trainer.log_every_n_steps, 1) == 0):
            self._log(trainer, pl_module, step)

    def _masks_at(self, trainer: pl.Trainer, pl_module: pl.LightningModule, due: list[_Plan], step: int) -> dict:
        weights, current = self.weights(pl_module), self.current_masks(pl_module)
        masks: dict[str, torch.Tensor] = {}
        for plan in due:
            w = {n: weights[n] for n in plan.names}
            if self.schedule == "cubic":
                s = cubic_sparsity(step, plan.target, plan.start, plan.end, plan.every, plan.initial)
                new = magnitude_masks(w, s, "layer", current)
                masks.update({n: new[n] & current[n] for n in plan.names})
                continue
            if plan.kind not in self._q:  # q from this type's weights now, the same on every rank
                q = magnitude_quantile([w[n] for n in plan.names], plan.target, [current[n] for n in plan.names])
                self._q[plan.kind] = float(trainer.strategy.broadcast(q, src=0))
                rank_zero_info(f"GradualPruning: q[{plan.kind}] = {self._q[plan.kind]:.4g} "
                               f"(the {plan.target:.0%} quantile of |w| at step {step})")
            eps = narang_threshold(step, self._q[plan.kind], plan.start, plan.ramp, plan.end, plan.every)
            self._threshold[plan.kind] = eps
            masks.update(threshold_masks(w, {n: eps for n in plan.names}, current))
        return masks

    def target_at(self, step: int) -> float | None:
        """Cubic: the scheduled global sparsity at ``step`` (size-weighted over the targets); narang: None."""
        if self.schedule != "cubic" or not self._resolved:
            return None
        numel = {p.kind: sum(self._numel[n] for n in p.names) for p in self._plans}
        total = sum(numel.values())
        return sum(numel[p.kind] * cubic_sparsity(step, p.target, p.start, p.end, p.every, p.initial)
                   for p in self._plans) / total

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        masks = self.current_masks(pl_module)
        metrics = {"sparsity/global": mask_sparsity(masks.values())}
        for plan in self._plans:
            metrics[f"sparsity/type/{plan.kind}"] = mask_sparsity(masks[n] for n in plan.names)
        if self.schedule == "cubic":
            metrics["sparsity/target"] = self.target_at(step)
        else:
            metrics.update({f"sparsity/threshold/{k}": v for k, v in self._threshold.items()})
        log_metrics(trainer, metrics)
        self._last_logged = step

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = max((p.end for p in self._plans), default=0)
        if self._resolved and trainer.global_step < last:
            rank_zero_warn(f"GradualPruning: training ended at step {trainer.global_step}, before the schedule's "
                           f"end_step {last}; the final sparsity is below its target")

    # ------------------------------------------------------------------ state

    @property
    @override
    def state_key(self) -> str:
        # which weights and which schedule, not the targets: a resumed run may retune those
        return self._generate_state_key(schedule=self.schedule, types=sorted(self.layers), include=self.include,
                                        exclude=self.exclude)

    def _steps_state(self) -> dict[str, list[int]]:
        return {p.kind: [p.start, p.ramp, p.end, p.every] for p in self._plans}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule, "last_update": self._last_update, "q": dict(self._q),
                "threshold": dict(self._threshold), "steps": self._steps_state() if self._resolved else None}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("schedule") != self.schedule:
            rank_zero_warn(f"GradualPruning resumes a {state_dict.get('schedule')!r} schedule as {self.schedule!r}")
        self._last_update = int(state_dict["last_update"])
        self._q.update({k: float(v) for k, v in state_dict.get("q", {}).items() if k not in self._q})
        self._threshold = {k: float(v) for k, v in state_dict.get("threshold", {}).items()}
        self._loaded_steps = state_dict.get("steps")


def _check_window(kind: str, start: int, ramp: int | None, end: int, every: int) -> None:
    try:
        check_steps(start, end, every, ramp)
    except ConfigError as exc:
        raise ConfigError(f"layers.{kind}: {exc}") from None
