"""When and how much to prune: pure functions of the optimizer step.

They know nothing of models or Lightning, so they are tested on numbers alone. Steps are
optimizer steps (``trainer.global_step``), which makes them safe under gradient accumulation.

* :func:`cubic_sparsity`: Zhu & Gupta (2017) gradual magnitude pruning (GMP), ``s_t`` per update.
* :func:`narang_threshold`: Narang et al. (2017) threshold ramp ``epsilon(itr)`` for RNNs.
* :func:`han_position`: Han et al. (2015) rounds of prune -> retrain after dense training.
"""

from __future__ import annotations

import math

from sparse_lightning.errors import ConfigError


def constant_sparsity(step: int, target: float) -> float:
    """The same sparsity at every step (masks fixed from the start)."""
    return target


def one_shot_sparsity(step: int, target: float, at_step: int) -> float:
    """Dense until ``at_step``, then ``target`` for the rest of training."""
    return target if step >= at_step else 0.0


# --------------------------------------------------------------------------- Zhu & Gupta (GMP)


def check_steps(start: int, end: int, every: int, ramp: int | None = None) -> None:
    """Validate a pruning window: ``0 <= start < end``, ``every >= 1``, ``start <= ramp <= end``."""
    for name, value in (("start_step", start), ("end_step", end), ("every", every), ("ramp_step", ramp)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not 0 <= start < end:
        raise ConfigError(f"need 0 <= start_step < end_step, got start_step={start}, end_step={end}")
    if every < 1:
        raise ConfigError(f"every must be an integer >= 1, got {every}")
    if ramp is not None and not start <= ramp <= end:
        raise ConfigError(f"need start_step <= ramp_step <= end_step, got {start}, {ramp}, {end}")


def cubic_update_due(step: int, begin_step: int, end_step: int, frequency: int) -> bool:
    """True at the update steps ``t0 + k*dt <= end_step``, and at ``end_step`` itself.

    Adding ``end_step`` makes the schedule reach ``s_f`` exactly even when ``end_step - t0``
    is not a multiple of the frequency ``dt``.
    """
    return begin_step <= step <= end_step and ((step - begin_step) % frequency == 0 or step == end_step)


def cubic_sparsity(
    step: int,
    final: float,
    begin_step: int,
    end_step: int,
    frequency: int = 100,
    initial: float = 0.0,
    power: int = 3,
) -> float:
    """Zhu & Gupta (2017), Eq. 1: the sparsity the masks hold at optimizer step ``step``.

        s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3,   t in {t0, t0 + dt, ..., t0 + n*dt}

    with ``t0 = begin_step``, ``dt = frequency`` and ``t0 + n*dt = end_step``. Between updates
    the value of the last update holds; before ``t0`` nothing is pruned (0.0); from ``end_step``
    on it is ``s_f``. ``power`` generalizes the cube (TF-MOT's ``PolynomialDecay``).
    """
    if step < begin_step:
        return 0.0
    if step >= end_step:
        return final
    t = begin_step + (step - begin_step) // frequency * frequency  # last update at or before step
    progress = (t - begin_step) / (end_step - begin_step)
    return final + (initial - final) * (1.0 - progress) ** power


# --------------------------------------------------------------------------- Narang et al.


def narang_slopes(q: float, start_itr: int, ramp_itr: int, end_itr: int, freq: int) -> tuple[float, float]:
    """Narang et al. (2017), Table 1 heuristics: the two slopes of the threshold ramp.

        theta = 2 * q * freq / (2 * (ramp_itr - start_itr) + 3 * (end_itr - ramp_itr)),   phi = 1.5 * theta

    chosen so that the threshold reaches ``q`` (the 90th percentile of |w| of a trained dense
    model) at ``end_itr``: ``theta * (ramp - start) + phi * (end - ramp) = q * freq``.
    """
    check_steps(start_itr, end_itr, freq, ramp_itr)
    theta = 2.0 * q * freq / (2 * (ramp_itr - start_itr) + 3 * (end_itr - ramp_itr))
    return theta, 1.5 * theta


def narang_update_due(itr: int, start_itr: int, end_itr: int, freq: int) -> bool:
    """Narang's Algorithm 1 updates the masks when ``start_itr < itr < end_itr`` and ``itr % freq == 0``."""
    return start_itr < itr < end_itr and itr % freq == 0


def narang_threshold(itr: int, q: float, start_itr: int, ramp_itr: int, end_itr: int, freq: int) -> float:
    """Narang et al. (2017), Eq. 1: the pruning threshold epsilon at an update iteration ``itr``.

        epsilon = theta * (itr - start_itr + 1) / freq                                   itr < ramp_itr
        epsilon = (theta * (ramp_itr - start_itr + 1) + phi * (itr - ramp_itr + 1)) / freq   otherwise

    Weights with ``|w| <= epsilon`` are pruned at each update (masks only shrink). Use
    :func:`narang_update_due` for the iterations at which the update happens.
    """
    theta, phi = narang_slopes(q, start_itr, ramp_itr, end_itr, freq)
    if itr < ramp_itr:
        return theta * (itr - start_itr + 1) / freq
    return (theta * (ramp_itr - start_itr + 1) + phi * (itr - ramp_itr + 1)) / freq


# --------------------------------------------------------------------------- Han et al.


def han_prune_steps(dense_steps: int, retrain_steps: int, rounds: int, phases: int = 1) -> list[int]:
    """Han et al. (2015): the optimizer steps at which a prune happens.

    Train dense for ``dense_steps``, then ``rounds`` rounds of ``phases`` x (prune, retrain for
    ``retrain_steps``): prune ``k`` (0-based) happens at ``dense_steps + k * retrain_steps``.
    ``phases`` is 2 when conv and FC layers are pruned and retrained in turn (the other kept fixed).
    """
    check_han(dense_steps, retrain_steps, rounds, phases)
    return [dense_steps + k * retrain_steps for k in range(rounds * phases)]


def han_position(step: int, dense_steps: int, retrain_steps: int, rounds: int, phases: int = 1) -> tuple[int, int]:
    """``(round, phase)`` that optimizer step ``step`` trains in; ``(-1, -1)`` during dense training.

    Round and phase are 0-based. After the last retraining the position stays at the last
    ``(rounds - 1, phases - 1)``: training simply continues with the final masks.
    """
    check_han(dense_steps, retrain_steps, rounds, phases)
    if step < dense_steps:
        return -1, -1
    k = min((step - dense_steps) // retrain_steps, rounds * phases - 1)
    return k // phases, k % phases


def check_han(dense_steps: int, retrain_steps: int, rounds: int, phases: int = 1) -> None:
    for name, value, low in (("dense_steps", dense_steps, 0), ("retrain_steps", retrain_steps, 1),
                             ("rounds", rounds, 1), ("phases", phases, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def resolve_step(value: int | float, total_steps: int | float, name: str) -> int:
    """A step given as an int (absolute) or a float in [0, 1] (fraction of ``total_steps``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be an integer step or a fraction in [0, 1], got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{name} must be >= 0, got {value}")
        return value
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} as a float is a fraction of the run's steps and must be in [0, 1], got {value}")
    if not math.isfinite(total_steps):
        raise ConfigError(f"{name}={value} is a fraction of the run's steps, but the run has no finite length "
                          f"(set trainer.max_steps or max_epochs, or give {name} as an integer step)")
    return int(round(value * total_steps))
