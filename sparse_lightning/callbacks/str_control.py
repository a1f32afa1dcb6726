"""The target controller of ``STR(target=...)`` and ``STR(target_rank=...)``: PI control (with lead)
of the decay on the thresholds ``s``, then on the weights (split range), towards a cubic reference ramp."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


# Controller constants (per optimizer step): integral and proportional gains on the log-density
# error and the lead (steps) by which the density trend is extrapolated. The control variable
# u = log(lambda) spans the decay of s over S_DECAY, then (split range) the decay of W over W_DECAY.
# The reference ramps over RAMP = (start, end), fractions of the STR phase (GMP's default window
# is 10%..60% of the run), and holds the target for the rest of the phase.
KI, KP, LEAD = 0.05, 2.0, 30.0
S_DECAY = (1e-6, 0.1)
W_DECAY = (1e-3, 0.1)
# The rank controller's second stage decays the singular values sigma over SIGMA_DECAY (the same span
# as W_DECAY), kept below what Adam's step (~lr) can undo so the loss still defends the directions it
# needs. MNIST-1D GRU, AdamW lr 0.003, target_rank 0.5 / 0.25: at up to 1e-2 per step the rank followed
# the ramp but every direction shrank alike (test accuracy 48.4% / 44.5%); at up to 2e-3 the rank lags
# (120 / 104 of 128 at the fix), the fix cuts the weakest directions, and accuracy is 92.2% / 66.8%.
SIGMA_DECAY = (2e-5, 2e-3)
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


def split_decay(u: float, second: tuple[float, float] = W_DECAY) -> tuple[float, float]:
    """``(decay of s, decay of W)`` for the control variable ``u``: s first, W (over ``second``) once s's decay is at its maximum."""
    if u <= _U_SPLIT:
        return math.exp(u), 0.0
    return S_DECAY[1], second[0] * math.exp(u - _U_SPLIT)  # u <= _U_HIGH: at most second[1] (same span)


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


@torch.no_grad()
def decay(thresholds: Sequence[torch.Tensor], weights: Sequence[torch.Tensor], decay_s: float, decay_w: float) -> None:
    """Decoupled decay (as AdamW's, the same for any optimizer): ``s <- (1 - decay_s) s``, ``w <- (1 - decay_w) w``."""
    for s in thresholds:
        s.mul_(1.0 - decay_s)
    for w in weights if decay_w else ():
        w.mul_(1.0 - decay_w)
