"""Which weights to prune: functions that return boolean keep-masks for a requested sparsity.

Every criterion is deterministic: the number pruned in a layer is exactly
``round(sparsity * numel)`` and ties in |w| are broken by position (a stable sort), so the same
weights give the same masks on every rank and every run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch

from sparse_lightning.errors import ConfigError

Scope = Literal["layer", "global"]


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    """Validate a target sparsity in [0, 1)."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def _scores(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """|w| as float32, with already-pruned entries below every live one so masks only shrink."""
    score = weight.detach().abs().float().flatten()
    if mask is not None:
        score = torch.where(mask.flatten(), score, torch.full_like(score, -1.0))
    return score


def _keep_mask_from_scores(score: torch.Tensor, n_prune: int) -> torch.Tensor:
    keep = torch.ones_like(score, dtype=torch.bool)
    if n_prune > 0:
        order = torch.sort(score, stable=True).indices
        keep[order[:n_prune]] = False
    return keep


def magnitude_masks(
    weights: Mapping[str, torch.Tensor],
    sparsity: float,
    scope: Scope = "layer",
    masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep-masks pruning the smallest-|w| fraction ``sparsity``, per layer or over all layers.

    Args:
        weights: parameter name -> weight tensor.
        sparsity: fraction in [0, 1) to prune (per layer for ``"layer"``, overall for ``"global"``).
        scope: ``"layer"`` prunes each tensor to ``sparsity``; ``"global"`` ranks all weights together.
        masks: current masks; entries pruned there stay pruned (masks are monotone).
    """
    check_sparsity(sparsity)
    masks = masks or {}
    if scope == "layer":
        out = {}
        for name, w in weights.items():
            score = _scores(w, masks.get(name))
            out[name] = _keep_mask_from_scores(score, round(sparsity * score.numel())).view_as(w)
        return out
    if scope != "global":
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    names = list(weights)
    scores = [_scores(weights[n], masks.get(n)).cpu() for n in names]
    flat = torch.cat(scores)
    keep = _keep_mask_from_scores(flat, round(sparsity * flat.numel()))
    out, offset = {}, 0
    for name, score in zip(names, scores):
        w = weights[name]
        out[name] = keep[offset : offset + score.numel()].view_as(w).to(w.device)
        offset += score.numel()
    return out
