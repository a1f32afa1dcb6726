"""STR (Kusupati et al. 2020) as ``torch.nn.utils.parametrize`` parametrizations, and their removal.

Unstructured, on Linear, Conv, RNN/GRU/LSTM and Embedding weights (METHODS.md Sec. 3)::

    W_eff = sign(W) * relu(|W| - g(s)),   g = sigmoid,  threshold alpha = g(s) in (0, 1)

Structured low rank, on 2-D weights such as RNN/GRU matrices::

    W_eff = U diag(S_g(sigma, s)) V^T,    S_g(x, s) = sign(x) relu(|x| - g(s)),  rank = nnz(S_g(sigma, s))

with U (m, r), V (n, r) the orthonormal singular vectors of the dense W and sigma its top-r singular
values, so the threshold ``g(s)`` acts on the singular values themselves and prunes the weakest
directions first (METHODS.md writes sigma = 1 and marks the form unverified: with the scale in U and
V every direction looks alike to the threshold, and ``g(s) <= 1/2`` while decay alone raises ``s``
towards 0, so sigma = 1 is never pruned). ``s`` is an ordinary ``nn.Parameter`` inside the parametrization module,
so the user's optimizer and its weight decay train it, as the paper's objective
``L(W_eff) + lambda * sum_l (||W_l||^2 + s_l^2)`` asks. With ``scope="global"`` one ``s`` is shared
by every unstructured layer (``named_parameters`` lists it once); low-rank matrices always have
their own scalar ``s``. ``scope="filter"`` gives one ``s`` per output filter/row (shape ``(C_out, 1, ...)``)
and ``scope="weight"`` one per weight (shape of ``W``), the paper's Algorithm 1 variants.

:func:`remove_str` writes ``W <- W_eff`` into the original parameter (same tensor, so optimizer
state keeps pointing at it), drops the parametrization and installs the mask engine's masks
(``set_masks``), so export and kernels see an ordinary pruned model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from sparse_lightning.errors import ConfigError
from sparse_lightning.masks import MASK_SUFFIX, attach_masks, select_parameters, set_masks

Scope = Literal["layer", "global", "filter", "weight"]
SCOPES = ("layer", "global", "filter", "weight")


def soft_threshold(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``sign(x) * relu(|x| - sigmoid(s))``.

    Autograd (ReLU subgradient ``1[z > 0]``, ``sign' = 0``) gives the paper's sparse gradients:
    ``dL/dx = dL/dx_eff * 1[|x| > g(s)]`` and
    ``dL/ds = -g'(s) * sum_i dL/dx_eff_i * sign(x_i) * 1[|x_i| > g(s)]``.
    """
    return torch.sign(x) * torch.relu(x.abs() - torch.sigmoid(s))


class SoftThreshold(nn.Module):
    """Unstructured STR parametrization: the stored tensor is the dense ``W``, ``s`` the threshold logit."""

    def __init__(self, s: nn.Parameter) -> None:
        super().__init__()
        self.s = s  # (), shared with other layers (scope="global"), (C_out, 1, ...) or W's shape

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return soft_threshold(weight, self.s)


class LowRankSoftThreshold(nn.Module):
    """Structured STR: ``W_eff = U diag(keep * S_g(sigma, s)) V^T``, stored as ``original0..2 = U, sigma, V``.

    ``keep`` (all True while learning) freezes the rank during fine-tuning: directions whose
    thresholded singular value is zero stay zero.
    """

    def __init__(self, s: nn.Parameter, rank: int) -> None:
        super().__init__()
        self.s = s
        self.register_buffer("keep", torch.ones(rank, dtype=torch.bool, device=s.device))

    def forward(self, u: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (u * (self.keep * soft_threshold(sigma, self.s))) @ v.T  # (m, r) * (r,) @ (r, n) -> (m, n)

    @torch.no_grad()
    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        u, sv, vh = torch.linalg.svd(weight.float(), full_matrices=False)  # (m, k), (k,), (k, n)
        r = self.keep.numel()
        return u[:, :r].to(weight.dtype), sv[:r].to(weight.dtype), vh[:r].T.to(weight.dtype)


def _owner(model: nn.Module, fqn: str) -> tuple[nn.Module, str]:
    module_name, _, local = fqn.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), local


def _str_module(module: nn.Module, local: str) -> SoftThreshold | LowRankSoftThreshold | None:
    """The STR parametrization of ``module.<local>``, or None."""
    if not parametrize.is_parametrized(module, local):
        return None
    first = module.parametrizations[local][0]
    return first if isinstance(first, (SoftThreshold, LowRankSoftThreshold)) else None


def prunable_targets(model: nn.Module, include: Sequence[str] = ("*",), exclude: Sequence[str] = ()) -> list[str]:
    """:func:`sparse_lightning.masks.select_parameters`, also seeing RNN weights that are parametrized.

    A parametrized RNN weight leaves the RNN's own parameters (it moves into
    ``rnn.parametrizations``), so the mask engine's selection would skip it while STR is applied.
    """
    names = select_parameters(model, include, exclude)
    for module_name, module in model.named_modules():
        if isinstance(module, nn.RNNBase) and parametrize.is_parametrized(module):
            for local in module.parametrizations:
                fqn = f"{module_name}.{local}" if module_name else local
                if local.startswith("weight_") and fqn not in names and any(
                    fnmatch.fnmatchcase(fqn, p) for p in include
                ) and not any(fnmatch.fnmatchcase(fqn, p) for p in exclude):
                    names.append(fqn)
    order = {fqn: i for i, fqn in enumerate(_all_weight_names(model))}
    return sorted(names, key=lambda n: order.get(n, len(order)))


def _all_weight_names(model: nn.Module) -> list[str]:
    out = []
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        out += [prefix + n for n, _ in module.named_parameters(recurse=False)]
        if parametrize.is_parametrized(module):
            out += [prefix + n for n in module.parametrizations]
    return out


def str_targets(model: nn.Module) -> dict[str, SoftThreshold | LowRankSoftThreshold]:
    """Every STR-parametrized tensor of ``model``: ``{fqn: parametrization}``, in module order."""
    out = {}
    for module_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for local in module.parametrizations:
                p = _str_module(module, local)
                if p is not None:
                    out[f"{module_name}.{local}" if module_name else local] = p
    return out


def _threshold_shape(weight: torch.Tensor, scope: Scope) -> tuple[int, ...]:
    """The shape of ``s``: one per output filter/row ``(C_out, 1, ...)``, one per weight, or a scalar."""
    if scope == "filter":
        return (weight.shape[0],) + (1,) * (weight.dim() - 1)
    return tuple(weight.shape) if scope == "weight" else ()


def _new_s(s_init: float, weight: torch.Tensor, shape: tuple[int, ...]) -> nn.Parameter:
    return nn.Parameter(torch.full(shape, float(s_init), dtype=weight.dtype, device=weight.device))


def apply_str(
    model: nn.Module,
    targets: Sequence[str],
    s_init: float = -5.0,
    scope: Scope = "layer",
    lowrank: Sequence[str] = (),
    rank: int | None = None,
) -> dict[str, nn.Parameter]:
    """Parametrize every target with STR (idempotent: targets already under STR are kept as they are).

    Args:
        model: any module; targets are fully-qualified parameter names (``"net.rnn.weight_hh_l0"``).
        s_init: initial threshold logit; very negative means g(s) ~ 0, a dense start.
        scope: ``"layer"`` (one scalar ``s`` per tensor, the paper's default), ``"global"`` (one ``s``),
            ``"filter"`` (one per output filter/row) or ``"weight"`` (one per weight).
        lowrank: fnmatch patterns of 2-D targets that get structured low-rank STR instead.
        rank: number of singular directions kept by the low-rank factorization (default: full).

    Returns:
        ``{fqn: s}`` for every target.
    """
    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    existing = str_targets(model)
    shared = next((p.s for p in existing.values() if isinstance(p, SoftThreshold)), None) if scope == "global" else None
    thresholds: dict[str, nn.Parameter] = {}
    for fqn in targets:
        if fqn in existing:
            thresholds[fqn] = existing[fqn].s
            continue
        module, local = _owner(model, fqn)
        weight = getattr(module, local)
        if parametrize.is_parametrized(module, local):
            raise ConfigError(f"{fqn} already has a parametrization ({type(module.parametrizations[local][0]).__name__}); STR cannot stack on it")

        if any(fnmatch.fnmatchcase(fqn, p) for p in lowrank):
            if weight.dim() != 2:
                raise ConfigError(f"lowrank: {fqn} has shape {tuple(weight.shape)}; low-rank STR needs a 2-D weight")
            full = min(weight.shape)
            r = full if rank is None else rank
            if not 1 <= r <= full:
                raise ConfigError(f"rank must be in [1, {full}] for {fqn}, got {r}")
            p: nn.Module = LowRankSoftThreshold(_new_s(s_init, weight, ()), r)
        else:
            if scope == "global":
                shared = shared if shared is not None else _new_s(s_init, weight, ())
            p = SoftThreshold(shared if scope == "global" else _new_s(s_init, weight, _threshold_shape(weight, scope)))
        parametrize.register_parametrization(module, local, p)
        thresholds[fqn] = p.s
    return thresholds


def thresholds(model: nn.Module) -> dict[str, float]:
    """Each STR tensor's threshold ``alpha = sigmoid(s)`` (the mean over filters or weights with a non-scalar ``s``)."""
    return {fqn: float(torch.sigmoid(p.s.detach()).mean()) for fqn, p in str_targets(model).items()}


def _alive(model: nn.Module, fqn: str, p: LowRankSoftThreshold) -> torch.Tensor:
    """Which singular directions of a low-rank STR tensor are nonzero (``keep`` applied): (r,) bool."""
    module, local = _owner(model, fqn)
    return p.keep & (soft_threshold(module.parametrizations[local].original1.detach(), p.s.detach()) != 0)


@torch.no_grad()
def lowrank_rank(model: nn.Module, fqn: str) -> int:
    """Rank of a low-rank STR tensor: nonzero thresholded singular values (``keep`` applied)."""
    module, local = _owner(model, fqn)
    p = _str_module(module, local)
    if not isinstance(p, LowRankSoftThreshold):
        raise ValueError(f"{fqn} is not under low-rank STR")
    return int(_alive(model, fqn, p).sum())


@torch.no_grad()
def lowrank_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{fqn: (rank, r)}`` of each low-rank STR tensor: its current rank and its factorization's size."""
    return {fqn: (int(_alive(model, fqn, p).sum()), p.keep.numel())
            for fqn, p in str_targets(model).items() if isinstance(p, LowRankSoftThreshold)}


S_FIXED = -30.0  # threshold logit of a fixed rank: g(S_FIXED) ~ 1e-13, so no kept direction can cross it


@torch.no_grad()
def fix_ranks(model: nn.Module, fraction: float | None = None) -> dict[str, int]:
    """Fix the rank of every low-rank STR tensor for fine-tuning; returns ``{fqn: rank}``.

    The threshold is folded into the singular values, ``sigma <- keep * S_alpha(sigma)`` and
    ``s <- S_FIXED`` (frozen), so ``W_eff`` does not change and no kept direction can fall below the
    threshold later. With ``fraction``, exactly ``max(1, round(fraction * r))`` directions stay, the
    largest ``|sigma|``. Directions the controller had already pruned but that are among them come
    back with ``|sigma| - alpha'``, ``alpha'`` midway between the last kept and the first dropped
    ``|sigma|``; the directions alive before keep their values (moving the one threshold instead
    would shift every kept singular value at once, which the MNIST-1D GRU did not survive).
    """
    ranks = {}
    for fqn, p in str_targets(model).items():
        if not isinstance(p, LowRankSoftThreshold):
            continue
        module, local = _owner(model, fqn)
        sigma = module.parametrizations[local].original1  # (r,)
        alpha = torch.sigmoid(p.s).expand_as(sigma)
        if fraction is not None:
            k = max(1, round(fraction * sigma.numel()))
            mags, order = torch.sort(sigma.abs(), descending=True)
            floor = (mags[k - 1] + mags[k]) / 2 if k < sigma.numel() else mags[k - 1] / 2
            alpha = torch.where(sigma.abs() > alpha, alpha, torch.minimum(alpha, floor))  # revive, don't shift the rest
            p.keep.zero_()
            p.keep[order[:k]] = True
        sigma.copy_(p.keep * torch.sign(sigma) * torch.relu(sigma.abs() - alpha))
        p.keep &= sigma != 0
        p.s.fill_(S_FIXED)
        p.s.requires_grad_(False)
        ranks[fqn] = int(p.keep.sum())
    return ranks


@torch.no_grad()
def unstructured_counts(model: nn.Module, scale: float = 1.0) -> dict[str, tuple[int, int]]:
    """``{fqn: (nnz, numel)}`` of each unstructured STR tensor's effective weight, thresholds times ``scale``."""
    out = {}
    for fqn, p in str_targets(model).items():
        if isinstance(p, SoftThreshold):
            module, local = _owner(model, fqn)
            w = module.parametrizations[local].original
            out[fqn] = (int(torch.count_nonzero(w.abs() > scale * torch.sigmoid(p.s))), w.numel())
    return out


@torch.no_grad()
def calibrate_scale(model: nn.Module, sparsity: float) -> float:
    """The common factor ``c`` for all unstructured thresholds that makes the global sparsity ``sparsity``.

    Weights are ranked by ``|W_i| / alpha_l`` over all layers; ``c`` is the ratio at the cut, so
    scaling every layer's threshold by ``c`` keeps STR's learned per-layer budgets in proportion.
    Ties at the cut may make the reached sparsity differ from ``sparsity`` by the tied count.
    """
    ratios = []
    for fqn, p in str_targets(model).items():
        if isinstance(p, SoftThreshold):
            module, local = _owner(model, fqn)
            w = module.parametrizations[local].original
            ratios.append((w.abs() / torch.sigmoid(p.s)).flatten().float())
    if not ratios:
        return 1.0
    flat = torch.cat(ratios)
    n_prune = int(round(sparsity * flat.numel()))
    if n_prune <= 0:
        return 0.0
    return float(torch.kthvalue(flat, n_prune).values)


def _drop_from_optimizers(optimizers: Iterable[torch.optim.Optimizer], params: Iterable[torch.Tensor]) -> None:
    """Remove parameters (and their state) from optimizers, keeping every group in place.

    A dropped ``s`` would otherwise stay in the optimizer without ever being used again, and a run
    resumed after the switch builds its optimizer from the model, which no longer has it.
    """
    ids = {id(p) for p in params}
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["params"] = [q for q in group["params"] if id(q) not in ids]
        for q in list(optimizer.state):
            if id(q) in ids:
                del optimizer.state[q]


@torch.no_grad()
def remove_str(
    model: nn.Module,
    optimizers: Iterable[torch.optim.Optimizer] = (),
    scale: float = 1.0,
    structured: bool = True,
) -> dict[str, torch.Tensor]:
    """Write ``W <- W_eff`` and drop STR; install masks for the unstructured tensors.

    Args:
        model: a model with STR parametrizations.
        optimizers: optimizers holding the parameters; the dropped ``s`` leave them, and the
            optimizer state of newly pruned weights is zeroed (``set_masks``).
        scale: common factor on every unstructured threshold (see :func:`calibrate_scale`).
        structured: also remove low-rank STR (writes the dense rank-r product into a new parameter).

    Returns:
        The masks installed, ``{fqn: bool tensor}``.
    """
    optimizers = list(optimizers)
    masks: dict[str, torch.Tensor] = {}
    dropped: list[nn.Parameter] = []
    for fqn, p in str_targets(model).items():
        module, local = _owner(model, fqn)
        if isinstance(p, SoftThreshold):
            original = module.parametrizations[local].original
            alpha = scale * torch.sigmoid(p.s)
            effective = torch.sign(original) * torch.relu(original.abs() - alpha)
            parametrize.remove_parametrizations(module, local, leave_parametrized=False)
            original.copy_(effective)  # same Parameter object: the optimizer keeps its state for W
            masks[fqn] = effective != 0
            dropped.append(p.s)
        elif structured:
            parametrize.remove_parametrizations(module, local, leave_parametrized=True)
            dropped.append(p.s)
    still_used = {id(p.s) for p in str_targets(model).values()}
    _drop_from_optimizers(optimizers, {id(s): s for s in dropped if id(s) not in still_used}.values())
    set_masks(model, masks, optimizers)
    return masks


def register_state_switch(model: nn.Module) -> RemovableHandle:
    """Let ``model.load_state_dict`` accept a state saved after STR was removed (plain weights + masks).

    Before loading, every unstructured STR tensor whose incoming state holds ``<fqn>`` and
    ``<fqn>_mask`` (not ``parametrizations.<...>.original``) is switched to the plain form: the
    parametrization is removed and a mask buffer attached, so the checkpoint of a run that was
    fine-tuning with fixed masks resumes into the same structure.
    """

    def hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs) -> None:
        switch = []
        for fqn, p in str_targets(module).items():
            if isinstance(p, SoftThreshold) and prefix + fqn in state_dict and prefix + fqn + MASK_SUFFIX in state_dict:
                switch.append(fqn)
        if switch:
            for fqn in switch:
                owner, local = _owner(module, fqn)
                parametrize.remove_parametrizations(owner, local, leave_parametrized=False)
            attach_masks(module, switch)

    return model.register_load_state_dict_pre_hook(hook)


def export_str_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Turn a state dict saved under STR into an ordinary pruned one: ``W_eff`` plus ``<fqn>_mask``.

    Unstructured STR tensors become ``<fqn>`` and ``<fqn>_mask``; low-rank ones become the dense
    product ``<fqn>``; thresholds disappear. Load the result into the plain model after
    :func:`sparse_lightning.masks.attach_masks_from_state_dict`.
    """
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        head, sep, tail = key.partition("parametrizations.")
        if not sep:
            out[key] = value
            continue
        local, _, rest = tail.partition(".")
        groups.setdefault(head + local, {})[rest] = value
    for fqn, parts in groups.items():
        s = parts.get("0.s")
        if s is None:
            raise ValueError(f"{fqn}: parametrized state without an STR threshold ('0.s'); keys: {sorted(parts)}")
        if "original" in parts:
            w = parts["original"]
            effective = soft_threshold(w, s)
            out[fqn], out[fqn + MASK_SUFFIX] = effective, effective != 0
        else:
            u, sigma, v = parts["original0"], parts["original1"], parts["original2"]
            keep = parts.get("0.keep", torch.ones_like(sigma, dtype=torch.bool))
            out[fqn] = (u * (keep * soft_threshold(sigma, s))) @ v.T
    return out


def export_lowrank_factors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The compact factors of every low-rank STR tensor in a state dict saved under STR: ``{fqn: (A, B)}``.

    ``W_eff = A @ B.T`` with ``A = U[:, kept] * S_g(sigma, s)[kept]`` (m, k) and ``B = V[:, kept]`` (n, k),
    k the rank: ``(m + n) k`` numbers instead of ``m n``.
    """
    out = {}
    for key, s in state_dict.items():
        head, sep, tail = key.rpartition(".0.s")
        if tail or not sep or head + ".original1" not in state_dict:
            continue
        sigma = soft_threshold(state_dict[head + ".original1"], s)
        kept = state_dict.get(head + ".0.keep", torch.ones_like(sigma, dtype=torch.bool)) & (sigma != 0)
        fqn = head.replace("parametrizations.", "")
        out[fqn] = (state_dict[head + ".original0"][:, kept] * sigma[kept], state_dict[head + ".original2"][:, kept])
    return out
