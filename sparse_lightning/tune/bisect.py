"""Reaching a requested sparsity with STR: log-space bisection of one hyperparameter (``tune.objective=target``).

Official STR's sparsity follows the weight decay λ and cannot be asked for (METHODS.md Sec. 3: "find
λ by bisection"). Each round trains ``tune.num_samples`` trials at log-evenly spaced values inside the
bracket ``[low, high]`` of the one ``loguniform`` search entry, in parallel on Ray; the bracket then
shrinks to the largest value that stayed below ``target_sparsity`` and the smallest that reached it
(sparsity rises with λ). After ``tune.rounds`` rounds the best trial is the most accurate one whose
final sparsity is within ``tolerance`` of the target.

    sparse-tune tune=str_target tune.target_sparsity=0.95     # 3 rounds x 2 trials on the MNIST-1D CNN
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from sparse_lightning.tune.search import TuneSettings, fit_trials


def interior_points(low: float, high: float, n: int) -> list[float]:
    """``n`` values splitting ``[low, high]`` into ``n + 1`` equal steps of ``log``: ``low (high/low)^(i/(n+1))``."""
    step = (math.log(high) - math.log(low)) / (n + 1)
    return [math.exp(math.log(low) + step * (i + 1)) for i in range(n)]


def narrow(low: float, high: float, trials: list[tuple[float, float]], target: float) -> tuple[float, float]:
    """The bracket after a round of ``(value, final sparsity)`` trials: the largest value below ``target``
    and the smallest value at or above it, within the old bracket (sparsity rises with the value)."""
    inside = [(v, s) for v, s in trials if low <= v <= high and not math.isnan(s)]
    below = [v for v, s in inside if s < target]
    above = [v for v, s in inside if s >= target]
    return max(below, default=low), min(above, default=high)


def run_bisection(settings: TuneSettings, base: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """All rounds of the bisection (Ray must be running); returns the table rows with a ``round`` column."""
    from ray import tune

    (name, spec), = settings.space.items()
    low, high = float(spec["low"]), float(spec["high"])
    rows: list[dict[str, Any]] = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for round_index in range(settings.rounds):
        values = interior_points(low, high, settings.num_samples)
        found = fit_trials(settings, base, {name: tune.grid_search(values)}, out, f"{settings.name}-{stamp}-r{round_index}")
        rows += [{"round": round_index, **row} for row in found]
        low, high = narrow(low, high, [(r[name], r["sparsity"]) for r in found], settings.target_sparsity)
    return rows
