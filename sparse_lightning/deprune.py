"""DEPrune (C. Park et al., NeurIPS 2024) as pure functions on weights and keep-masks.

* Diagonal-wise refactorization (DR, Qin et al. 2018): a depthwise weight D (M, 1, kh, kw) is G =
  ceil(M/32) sub-GEMMs, each a 32 x (32*kh*kw) matrix whose row c is nonzero only in its own
  kh*kw column block (:func:`dr_view`, :func:`dr_to_depthwise`). Every column holds one nonzero,
  so pruning one weight removes a whole GEMM column: K of the sub-GEMM shrinks.
* DCP: per-layer magnitude pruning over the M*kh*kw real weights (never the DR zero padding).
* BWT (DEPrune-B): exactly round(PR * 32*kh*kw) pruned per group (``kernels.formats.bwt_mask``).
* HSR (DEPrune-BH): align each layer's kept count per group to the kernel's K tile.
* PW-conv2 filter pruning: l2 norm of output filters of the block's projection 1x1 conv.

Masks are boolean keep-masks with the weight's shape; entries already pruned in an input mask stay
pruned, so DEPrune composes with other mask-based methods on the same model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from sparse_lightning.criteria import check_sparsity
from sparse_lightning.errors import ConfigError
from sparse_lightning.kernels.formats import DW_GROUP, bwt_mask

# The K tile HSR aligns to. Neither kernels/depthwise.py nor formats.py names one, so it is exposed
# here: the pruned kernel (cuda_kernels/depthwise.cu, dw_pruned_nchw) walks a group's kept taps in
# warp-sized chunks of 32 (`for (j = wb; j < we; j += 32)`), and DEPrune's DR implicit GEMM loops
# over K in chunks of 32 (METHODS.md 5, kernel design). DW_GROUP (32) is the channel group.
KERNEL_K_TILE = 32


def is_depthwise(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels
            and module.groups > 1)


def _check_dw(weight: torch.Tensor) -> None:
    if weight.dim() != 4 or weight.shape[1] != 1:
        raise ValueError(f"depthwise weight must be (M, 1, kh, kw), got {tuple(weight.shape)}")


def dr_groups(channels: int, group: int = DW_GROUP) -> int:
    """G = ceil(M / 32): the number of DR sub-GEMMs (thread blocks) of a depthwise layer."""
    return math.ceil(channels / group)


def dr_view(weight: torch.Tensor, group: int = DW_GROUP) -> torch.Tensor:
    """Depthwise weight (M, 1, kh, kw) -> DR sub-GEMM weights (G, 32, 32*kh*kw).

    W_g[c, (c'*kh + r)*kw + s] = D[32g + c, 0, r, s] if c' == c else 0; channels past M (last group)
    are zero rows.
    """
    _check_dw(weight)
    m, _, kh, kw = weight.shape
    g = dr_groups(m, group)
    padded = weight.new_zeros(g * group, kh * kw)
    padded[:m] = weight.reshape(m, kh * kw)
    eye = torch.eye(group, dtype=weight.dtype, device=weight.device)  # (32, 32)
    view = eye[None, :, :, None] * padded.reshape(g, group, 1, kh * kw)  # (G, 32, 32, kh*kw)
    return view.reshape(g, group, group * kh * kw)


def dr_to_depthwise(view: torch.Tensor, channels: int, kernel_size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`dr_view`: the diagonal blocks back to (M, 1, kh, kw)."""
    g, group, cols = view.shape
    kh, kw = kernel_size
    if cols != group * kh * kw:
        raise ValueError(f"DR view has {cols} columns, expected {group}*{kh}*{kw}")
    blocks = view.reshape(g, group, group, kh * kw)  # (G, 32, 32, kh*kw)
    diag = blocks.diagonal(dim1=1, dim2=2).permute(0, 2, 1)  # (G, 32, kh*kw)
    return diag.reshape(g * group, kh * kw)[:channels].reshape(channels, 1, kh, kw)


def dr_conv_weight(weight: torch.Tensor, group: int = DW_GROUP) -> torch.Tensor:
    """The DR reference as a grouped conv: weight (G*32, 32, kh, kw) for ``groups=G`` on the input
    zero-padded to G*32 channels (DR18's module; 32x redundant MACs)."""
    m, _, kh, kw = weight.shape
    return dr_view(weight, group).reshape(-1, group, kh, kw)


def dcp_mask(weight: torch.Tensor, sparsity: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """DCP: prune the round(PR * M*kh*kw) smallest-|w| real weights of one depthwise layer.

    Ranks the (M, 1, kh, kw) tensor itself, so the DR zero padding is never counted; entries
    pruned in ``mask`` are pruned first. Ties broken by position (stable sort).
    """
    _check_dw(weight)
    check_sparsity(sparsity)
    score = weight.detach().abs().float().flatten()
    if mask is not None:
        score = torch.where(mask.flatten().bool(), score, torch.full_like(score, -1.0))
    keep = torch.ones_like(score, dtype=torch.bool)
    keep[torch.sort(score, stable=True).indices[: round(sparsity * score.numel())]] = False
    return keep.reshape(weight.shape)


def bwt_dw_mask(weight: torch.Tensor, sparsity: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """BWT (DEPrune-B): exactly round(PR * 32*kh*kw) pruned in every group of 32 channels (a last,
    partial group prunes that fraction of its real weights), so all sub-GEMMs keep the same K.
    Entries pruned in ``mask`` count as pruned first (their |w| is taken as 0)."""
    _check_dw(weight)
    check_sparsity(sparsity)
    w = weight.detach() if mask is None else weight.detach() * mask.bool()
    keep = bwt_mask(w, sparsity, DW_GROUP)
    return keep if mask is None else keep & mask.bool()


def group_kept_counts(mask: torch.Tensor, group: int = DW_GROUP) -> torch.Tensor:
    """Kept weights (= DR GEMM columns, K_g) per 32-channel group, (G,) int64."""
    m = mask.shape[0]
    per_channel = mask.reshape(m, -1).sum(1)
    padded = per_channel.new_zeros(dr_groups(m, group) * group)
    padded[:m] = per_channel
    return padded.reshape(-1, group).sum(1)


def predicted_alignment_speedup(kept: int, tile: int = KERNEL_K_TILE) -> float:
    """alpha_l predicted from the tile count: K-loop tiles before / after pruning the partial tile,
    ceil(K/T) / floor(K/T); 0 when the layer has no full tile (aligning down would empty it)."""
    full = kept // tile
    return math.ceil(kept / tile) / full if full else 0.0


@dataclass(frozen=True)
class HSRDecision:
    name: str
    kept: int  # K per group before HSR (largest group)
    epsilon: int  # kept vectors in the partial tile, K mod T
    alpha: float
    beta: float
    action: str  # "aligned" | "prune" | "restore"
    kept_after: int


AlphaSource = Mapping[str, float] | Callable[[str, int, int], float] | None


def hsr_masks(
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    tile: int = KERNEL_K_TILE,
    alpha: AlphaSource = None,
    fraction: float = 0.5,
    prior: Mapping[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], list[HSRDecision]]:
    """HSR (DEPrune-BH): per depthwise layer, ε_l = K mod T (K: kept per group), α_l = speedup of
    aligning it, β_l = α_l / ε_l. The top ``fraction`` of misaligned layers by β prune ε_l more per
    group (lowest |w| kept first); the rest restore T - ε_l pruned weights per group (highest |w|
    first), so every group's K becomes a multiple of T and the total PR stays about the same.

    Args:
        weights: depthwise weights (M, 1, kh, kw), by name; ``masks``: their keep-masks after DCP(-B).
        tile: the kernel's K tile (:data:`KERNEL_K_TILE`).
        alpha: measured speedups by layer name (a table) or ``alpha(name, kept, tile)``; None: the
            tile-count prediction :func:`predicted_alignment_speedup`.
        prior: keep-masks from before DEPrune (another method's pruning): never restored.
    """
    if not isinstance(tile, int) or tile < 1:
        raise ConfigError(f"tile must be an integer >= 1, got {tile!r}")
    rows = []
    for name, mask in masks.items():
        kept = int(group_kept_counts(mask).max())
        eps = kept % tile
        if kept < tile or eps == 0:  # aligned, or aligning down would delete the layer: restore only
            a = 0.0
        elif callable(alpha):
            a = float(alpha(name, kept, tile))
        elif alpha is not None:
            if name not in alpha:
                raise ConfigError(f"HSR alpha table has no entry for {name!r} (K={kept}, tile={tile})")
            a = float(alpha[name])
        else:
            a = predicted_alignment_speedup(kept, tile)
        rows.append((name, kept, eps, a, a / eps if eps else math.inf))
    # Highest β first; ties (equal K and α, e.g. every 3x3 layer after BWT at one PR) in model order.
    order = sorted((i for i, r in enumerate(rows) if r[2]), key=lambda i: (-rows[i][4], i))
    misaligned = [rows[i] for i in order]
    n_prune = round(fraction * len(misaligned))
    prune = {r[0] for r in misaligned[:n_prune] if r[3] > 0}
    out, decisions = {}, []
    for name, kept, eps, a, beta in rows:
        mask = masks[name].bool()
        action = "aligned" if eps == 0 else ("prune" if name in prune else "restore")
        if action != "aligned":
            lock = None if prior is None or name not in prior else ~prior[name].bool()
            mask = align_groups(weights[name], mask, tile, action == "prune", lock)
        out[name] = mask
        decisions.append(HSRDecision(name, kept, eps, a, beta, action, int(group_kept_counts(mask).max())))
    return out, decisions


def align_groups(weight: torch.Tensor, mask: torch.Tensor, tile: int, down: bool,
                  locked: torch.Tensor | None) -> torch.Tensor:
    """Per 32-channel group: prune (down) or restore (up) until the group's kept count is a multiple
    of ``tile``; pruning takes the lowest kept |w|, restoring the highest pruned |w| not locked."""
    m = weight.shape[0]
    score = weight.detach().abs().float().reshape(m, -1)
    keep = mask.reshape(m, -1).clone()
    lock = None if locked is None else locked.reshape(m, -1)
    for g0 in range(0, m, DW_GROUP):
        k = keep[g0:g0 + DW_GROUP].reshape(-1)  # view into keep
        s = score[g0:g0 + DW_GROUP].reshape(-1)
        kept, eps = int(k.sum()), int(k.sum()) % tile
        if eps == 0:
            continue
        if down:
            cand = torch.where(k, s, torch.full_like(s, math.inf))
            k[torch.sort(cand, stable=True).indices[:min(eps, kept)]] = False
        else:
            free = ~k if lock is None else ~k & ~lock[g0:g0 + DW_GROUP].reshape(-1)
            cand = torch.where(free, s, torch.full_like(s, -math.inf))
            n = min(tile - eps, int(free.sum()))
            k[torch.sort(cand, descending=True, stable=True).indices[:n]] = True
    return keep.reshape(mask.shape)


def filter_l2_mask(weight: torch.Tensor, sparsity: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Prune the round(PR * N) output filters of smallest l2 norm (computed on the masked weight):
    the keep-mask has the weight's shape with whole filters W[n] removed."""
    check_sparsity(sparsity)
    w = weight.detach().float() if mask is None else weight.detach().float() * mask.bool()
    norms = w.reshape(w.shape[0], -1).norm(dim=1)  # (N,)
    keep_rows = torch.ones(w.shape[0], dtype=torch.bool, device=w.device)
    keep_rows[torch.sort(norms, stable=True).indices[: round(sparsity * w.shape[0])]] = False
    keep = keep_rows.reshape(-1, *([1] * (w.dim() - 1))).expand_as(w).clone()
    return keep if mask is None else keep & mask.bool()


def find_depthwise_separable(model: nn.Module) -> list[tuple[str, str | None]]:
    """(depthwise conv name, its PW-conv2 name or None) for every depthwise conv of ``model``.

    PW-conv2 (the block's projection) is the first bias-free 1x1 conv with groups 1 and
    in_channels == M after the depthwise conv in module order: SE convs have biases, and the next
    block's expansion comes after the projection. Works for this package's nets and torchvision's.
    """
    modules = list(model.named_modules())
    out = []
    for i, (name, module) in enumerate(modules):
        if not is_depthwise(module):
            continue
        pw2 = None
        for other_name, other in modules[i + 1:]:
            if is_depthwise(other):
                break
            if (isinstance(other, nn.Conv2d) and other.kernel_size == (1, 1) and other.groups == 1
                    and other.bias is None and other.in_channels == module.out_channels):
                pw2 = other_name
                break
        out.append((name, pw2))
    return out


def dw_tiles(mask: torch.Tensor, tile: int = KERNEL_K_TILE) -> int:
    """K-loop tiles of the slowest group: ceil(max_g K_g / T); time per layer is set by it."""
    return math.ceil(int(group_kept_counts(mask).max()) / tile)


def deprune_masks(
    model: nn.Module,
    dw_sparsity: float,
    pw2_sparsity: float = 0.0,
    bwt: bool = True,
    hsr: bool = True,
    tile: int = KERNEL_K_TILE,
    alpha: AlphaSource = None,
    prior: Mapping[str, torch.Tensor] | None = None,
    layers: list[tuple[str, str | None]] | None = None,
) -> tuple[dict[str, torch.Tensor], list[HSRDecision]]:
    """DEPrune's one-shot masks for a model, keyed by parameter name (``<module>.weight``).

    DCP (``bwt=False``) or DCP-B on every depthwise conv at ``dw_sparsity``, then HSR if asked,
    and l2 filter pruning of each block's PW-conv2 at ``pw2_sparsity``. ``layers``: the
    (depthwise, PW-conv2) module names to prune (default :func:`find_depthwise_separable`);
    ``prior``: keep-masks already in the model (stay pruned, never restored by HSR).
    """
    check_sparsity(dw_sparsity, "dw_sparsity")
    check_sparsity(pw2_sparsity, "pw2_sparsity")
    layers = find_depthwise_separable(model) if layers is None else layers
    prior = prior or {}
    params = dict(model.named_parameters())
    dw = {f"{d}.weight": params[f"{d}.weight"] for d, _ in layers}
    prune_dw = bwt_dw_mask if bwt else dcp_mask
    masks = {n: prune_dw(w, dw_sparsity, prior.get(n)) for n, w in dw.items()}
    decisions: list[HSRDecision] = []
    if hsr and masks:
        masks, decisions = hsr_masks(dw, masks, tile, alpha, prior=prior)
    if pw2_sparsity > 0:
        for _, p in layers:
            if p is not None:
                name = f"{p}.weight"
                masks[name] = filter_l2_mask(params[name], pw2_sparsity, prior.get(name))
    return masks, decisions


@dataclass(frozen=True)
class BlockCost:
    name: str  # depthwise conv module name
    dw_dense: float
    dw_pruned: float
    pw_dense: float
    pw_pruned: float


def predicted_block_costs(model: nn.Module, example_input: torch.Tensor, tile: int = KERNEL_K_TILE) -> list[BlockCost]:
    """Predicted cost (MAC-proportional) of each depthwise-separable block, dense vs pruned.

    DW-conv as DR implicit GEMM: G sub-GEMMs of 32 rows, K padded to whole tiles and set by the
    slowest group, cost = G*32*T*ceil(max_g K_g / T)*HW_out (dense: every weight kept). PW-convs (the
    1x1 convs of the block: expansion and projection): nnz(W)*HW_out. Zeros and ``weight_mask``
    buffers both count as pruned. A model, not a measurement: ``scripts/gpu_check.sh`` measures.
    """
    layers = find_depthwise_separable(model)
    modules = dict(model.named_modules())
    sizes: dict[str, int] = {}
    hooks = [m.register_forward_hook(_SizeRecorder(sizes, n)) for n, m in modules.items()
             if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) or is_depthwise(m)]
    try:
        with torch.no_grad():
            model(example_input[:1])
    finally:
        for h in hooks:
            h.remove()
    names, costs = list(modules), []
    for i, (dw_name, _) in enumerate(layers):
        dw = modules[dw_name]
        kh, kw = dw.kernel_size
        keep = _kept(dw)
        g, hw = dr_groups(dw.out_channels), sizes.get(dw_name, 0)
        dense = g * DW_GROUP * tile * math.ceil(int(group_kept_counts(torch.ones_like(keep)).max()) / tile) * hw
        pruned = g * DW_GROUP * tile * math.ceil(int(group_kept_counts(keep).max()) / tile) * hw
        # PW convs of the block: the 1x1 convs between the previous depthwise conv and the next one
        # that feed or are fed by this one (expansion: out == M; projection: in == M), SE excluded.
        lo = names.index(layers[i - 1][0]) + 1 if i else 0
        hi = names.index(layers[i + 1][0]) if i + 1 < len(layers) else len(names)
        pw_dense = pw_pruned = 0.0
        for n in names[lo:hi]:
            m = modules[n]
            if (n in sizes and not is_depthwise(m) and m.groups == 1 and m.bias is None
                    and ((m.out_channels == dw.in_channels and names.index(n) < names.index(dw_name))
                         or (m.in_channels == dw.out_channels and names.index(n) > names.index(dw_name)))):
                pw_dense += m.weight.numel() * sizes[n]
                pw_pruned += int(_kept(m).sum()) * sizes[n]
        costs.append(BlockCost(dw_name, float(dense), float(pruned), pw_dense, pw_pruned))
    return costs


def predicted_speedups(costs: list[BlockCost]) -> dict[str, float]:
    """Whole-network DW-conv and depthwise-separable (DW + PW) speedups from :func:`predicted_block_costs`."""
    dw = sum(c.dw_dense for c in costs) / max(sum(c.dw_pruned for c in costs), 1e-12)
    ds = sum(c.dw_dense + c.pw_dense for c in costs) / max(sum(c.dw_pruned + c.pw_pruned for c in costs), 1e-12)
    return {"dw": dw, "ds": ds}


def _kept(conv: nn.Conv2d) -> torch.Tensor:
    keep = conv.weight.detach() != 0
    mask = getattr(conv, "weight_mask", None)
    return keep & mask.bool() if isinstance(mask, torch.Tensor) else keep


class _SizeRecorder:
    """Forward hook storing a conv's output pixels per image (H_out * W_out)."""

    def __init__(self, sizes: dict[str, int], name: str) -> None:
        self.sizes, self.name = sizes, name

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.sizes.setdefault(self.name, output.shape[-2] * output.shape[-1])
