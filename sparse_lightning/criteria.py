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


# --------------------------------------------------------------------------- layer types

LayerType = Literal["conv", "linear", "recurrent", "embedding"]
LAYER_TYPES: tuple[str, ...] = ("conv", "linear", "recurrent", "embedding")


def layer_type(module: torch.nn.Module) -> str | None:
    """``"conv"``, ``"linear"``, ``"recurrent"`` or ``"embedding"`` for a prunable module, else None.

    Narang et al. (2017) and Han et al. (2015) set their hyperparameters per layer type (recurrent
    vs fully connected; conv vs FC), so the callbacks group their targets with this.
    """
    nn = torch.nn
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.RNNBase):
        return "recurrent"
    if isinstance(module, nn.Embedding):
        return "embedding"
    return None


def layer_types(model: torch.nn.Module, names: list[str]) -> dict[str, str]:
    """Parameter name -> type of its owning module (see :func:`layer_type`)."""
    out = {}
    for name in names:
        owner = name.rpartition(".")[0]
        kind = layer_type(model.get_submodule(owner) if owner else model)
        if kind is None:
            raise ValueError(f"{name} is not the weight of a conv, linear, recurrent or embedding layer")
        out[name] = kind
    return out


# --------------------------------------------------------------------------- thresholds


def threshold_masks(
    weights: Mapping[str, torch.Tensor],
    thresholds: Mapping[str, float],
    masks: Mapping[str, torch.Tensor] | None = None,
    keep_equal: bool = False,
) -> dict[str, torch.Tensor]:
    """Keep-masks ``mask & (|w| > eps_l)`` (Narang et al. 2017), or ``|w| >= tau_l`` with ``keep_equal``.

    Han et al. (2015) prune the weights *below* the threshold, so their ties are kept
    (``keep_equal=True``); Narang et al. prune at or below it. Entries already pruned in ``masks``
    stay pruned, so masks only shrink while the thresholds rise. Layers without a threshold are
    left out of the result.
    """
    masks = masks or {}
    out = {}
    for name, eps in thresholds.items():
        w = weights[name]
        score = w.detach().abs().float()
        keep = score >= eps if keep_equal else score > eps
        if name in masks:
            keep &= masks[name].to(device=keep.device, dtype=torch.bool)
        out[name] = keep
    return out


def surviving_std(weight: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Population standard deviation (``correction=0``) of the weights that ``mask`` keeps.

    The surviving weights are the whole population being thresholded, not a sample, hence no
    Bessel correction; pruned zeros are left out because they would shrink the std each round
    and stall iterative pruning (Han's thresholds are meant to rise as the survivors spread).
    """
    w = weight.detach().float().flatten()
    if mask is not None:
        w = w[mask.flatten().to(w.device)]
    if w.numel() == 0:
        return 0.0
    return float(torch.std(w, correction=0))


def std_thresholds(
    weights: Mapping[str, torch.Tensor],
    quality: Mapping[str, float],
    masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Han et al. (2015), Sec. 4: ``tau_l = q_l * std(W_l)``, the std over the layer's surviving weights.

    Args:
        weights: parameter name -> weight tensor.
        quality: parameter name -> quality parameter ``q_l`` (>= 0); layers without one are skipped.
        masks: current masks; the std is taken over the weights they keep (:func:`surviving_std`).
    """
    masks = masks or {}
    return {name: q * surviving_std(weights[name], masks.get(name)) for name, q in quality.items()}


def std_threshold_masks(
    weights: Mapping[str, torch.Tensor],
    quality: Mapping[str, float],
    masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Han et al. (2015): prune ``|w| < q_l * std(W_l)``; masks only shrink."""
    return threshold_masks(weights, std_thresholds(weights, quality, masks), masks, keep_equal=True)


def magnitude_quantile(weights: list[torch.Tensor], fraction: float, masks: list[torch.Tensor] | None = None) -> float:
    """The ``fraction`` quantile of |w| pooled over ``weights``: the k-th smallest, k = round(fraction * n).

    Narang et al. (2017) set ``q`` to the 90th percentile of |w| of a layer type in a trained
    dense model; ``fraction=0.9`` over that type's weights gives it.
    """
    check_sparsity(fraction, "fraction")
    parts = []
    for i, w in enumerate(weights):
        a = w.detach().abs().float().flatten().cpu()
        if masks is not None:
            a = a[masks[i].flatten().cpu()]
        parts.append(a)
    flat = torch.cat(parts) if parts else torch.zeros(0)
    k = round(fraction * flat.numel())  # pruning |w| <= q then removes k weights (without ties)
    return float(torch.sort(flat).values[k - 1]) if k > 0 else 0.0
