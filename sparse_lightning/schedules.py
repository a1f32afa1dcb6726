"""When and how much to prune: pure functions ``step -> target sparsity``.

They know nothing of models or Lightning, so they are tested on numbers alone. Steps are
optimizer steps (``trainer.global_step``), which makes them safe under gradient accumulation.
"""

from __future__ import annotations


def constant_sparsity(step: int, target: float) -> float:
    """The same sparsity at every step (masks fixed from the start)."""
    return target


def one_shot_sparsity(step: int, target: float, at_step: int) -> float:
    """Dense until ``at_step``, then ``target`` for the rest of training."""
    return target if step >= at_step else 0.0
