"""Park et al.'s performance model (ICLR 2017, sec. 2.2; METHODS.md 4b), per layer.

For a layer with dense FLOPs C, activation bytes S_A (padded input + output) and dense weight
bytes S_W, on a profile (F, B, alpha, beta), at density x (fraction of nonzero weights)::

    t_dense     = C / F                                         (dense assumed compute-bound)
    t_sparse(x) = max(alpha * x * C / F, (S_A + beta * x * S_W) / B)
    x_low = min(1 / alpha, (C * B / F - S_A) / (beta * S_W))    sparse beats dense below x_low
    x_up  = F * S_A / (alpha * C * B - beta * F * S_W)          bandwidth-bound below x_up

A layer is worth pruning for speed only when x_up < x_low; a denominator <= 0 in x_up means the
sparse kernel is bandwidth-bound at every density (x_up = 1: no useful range). Densities are
``1 - sparsity``. Shapes come from one forward pass with hooks (:func:`layer_costs`)::

    costs = layer_costs(net, torch.randn(1, 3, 32, 32))     # {"conv1.weight": LayerCost, ...}
    rng = useful_range(costs["layer3.0.conv2.weight"], get_profile("h100"))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import torch
from torch import nn

from sparse_lightning.perf.profiles import HardwareProfile

MODELED = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """Work and traffic of one layer call, for ``batch`` inputs (weights read once per call).

    Args:
        name: fully-qualified name of the weight (``"features.3.weight"``).
        kind: ``"conv1d"``, ``"conv2d"`` or ``"linear"``.
        flops: C, dense FLOPs (2 per multiply-add).
        act_bytes: S_A, bytes of the zero-padded input plus the output.
        weight_bytes: S_W, bytes of the dense weight.
        kernel: spatial kernel size (``()`` for Linear); ``(1, 1)`` marks a 1x1 conv.
        batch: inputs per call.
    """

    name: str
    kind: str
    flops: float
    act_bytes: float
    weight_bytes: float
    kernel: tuple[int, ...] = ()
    batch: int = 1

    @property
    def intensity(self) -> float:
        """Arithmetic intensity of the dense layer, C / (S_A + S_W) in FLOP/byte."""
        return self.flops / (self.act_bytes + self.weight_bytes)

    def at_batch(self, batch: int) -> LayerCost:
        """The same layer at another batch size: C and S_A scale, S_W is read once."""
        scale = batch / self.batch
        return dataclasses.replace(self, flops=self.flops * scale, act_bytes=self.act_bytes * scale, batch=batch)


@dataclasses.dataclass(frozen=True)
class UsefulRange:
    """Densities where the sparse kernel pays: (x_up, x_low), useful when x_up < x_low."""

    x_up: float
    x_low: float
    bandwidth_bound: bool  # x_up's denominator <= 0: bandwidth-bound at every density

    @property
    def useful(self) -> bool:
        return self.x_up < self.x_low

    @property
    def min_sparsity(self) -> float:
        """Sparsity above which the sparse kernel beats dense: 1 - x_low."""
        return 1.0 - self.x_low

    @property
    def max_sparsity(self) -> float:
        """Sparsity above which more sparsity stops paying: 1 - x_up."""
        return 1.0 - self.x_up


def conv_cost(name: str, weight_shape: tuple[int, ...], groups: int, in_shape: tuple[int, ...],
              out_shape: tuple[int, ...], padding: tuple[int, ...], dtype_bytes: int = 4) -> LayerCost:
    """Cost of a Conv1d/Conv2d call. weight (N, C/groups, *k), input (B, C, *spatial), output
    (B, N, *spatial_out); ``padding`` per spatial dim (both sides)."""
    n, cg, *k = weight_shape
    batch, c, *spatial = in_shape
    out_pixels = math.prod(out_shape[2:])
    flops = 2.0 * batch * n * cg * math.prod(k) * out_pixels
    padded_in = batch * c * math.prod(s + 2 * p for s, p in zip(spatial, padding))
    act = dtype_bytes * (padded_in + math.prod(out_shape))
    kind = f"conv{len(k)}d"
    return LayerCost(name, kind, flops, float(act), float(dtype_bytes * math.prod(weight_shape)), tuple(k), batch)


def linear_cost(name: str, weight_shape: tuple[int, int], in_shape: tuple[int, ...], batch: int,
                dtype_bytes: int = 4) -> LayerCost:
    """Cost of a Linear call on ``in_shape`` (..., K) holding ``batch`` samples."""
    n, k = weight_shape
    rows = math.prod(in_shape) // k
    return LayerCost(name, "linear", 2.0 * rows * n * k, float(dtype_bytes * rows * (n + k)),
                     float(dtype_bytes * n * k), (), batch)


def conv_padding(module: nn.Module) -> tuple[int, ...]:
    """Padding per spatial dim (one side) of a Conv1d/Conv2d, with "same"/"valid" resolved."""
    pad = module.padding
    if isinstance(pad, str):  # 'same' keeps the size: total padding (k - 1) * dilation per dim
        return tuple(0 if pad == "valid" else (k - 1) * d // 2 for k, d in zip(module.kernel_size, module.dilation))
    return tuple(pad)


@torch.no_grad()
def record_shapes(model: nn.Module, example_input: torch.Tensor | tuple) -> dict[str, tuple[tuple, tuple]]:
    """(input shape, output shape) of every Conv1d/Conv2d/Linear call in one forward pass on
    ``example_input``, keyed by module name. The model runs in eval mode (BatchNorm statistics
    untouched) and gets its mode back."""
    shapes: dict[str, tuple] = {}
    handles = []
    for module_name, module in model.named_modules():
        if isinstance(module, MODELED):
            def hook(mod, args, out, key=module_name):
                shapes.setdefault(key, (tuple(args[0].shape), tuple(out.shape)))
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return shapes


def layer_costs(model: nn.Module, example_input: torch.Tensor | tuple, batch: int = 1,
                dtype_bytes: int = 4) -> dict[str, LayerCost]:
    """Per-layer costs of every Conv1d/Conv2d/Linear, from one forward pass on ``example_input``
    (its first dim is the batch), rescaled to ``batch`` inputs per call. Keyed by weight name."""
    return costs_from_shapes(model, record_shapes(model, example_input), batch, dtype_bytes)


def costs_from_shapes(model: nn.Module, shapes: Mapping[str, tuple[tuple, tuple]], batch: int = 1,
                      dtype_bytes: int = 4) -> dict[str, LayerCost]:
    """Costs from recorded (input shape, output shape) per module name; the input's first dim is
    its batch, rescaled to ``batch``."""
    costs = {}
    for module_name, (in_shape, out_shape) in shapes.items():
        module = model.get_submodule(module_name)
        name = f"{module_name}.weight" if module_name else "weight"
        if isinstance(module, nn.Linear):
            n_in = in_shape[0] if len(in_shape) > 1 else 1
            cost = linear_cost(name, tuple(module.weight.shape), in_shape, n_in, dtype_bytes)
        else:
            cost = conv_cost(name, tuple(module.weight.shape), module.groups, in_shape, out_shape,
                             conv_padding(module), dtype_bytes)
        costs[name] = cost.at_batch(batch)
    return costs


def t_dense(cost: LayerCost, profile: HardwareProfile) -> float:
    """Predicted dense time in seconds: C / F (+ the profile's fixed latency)."""
    return profile.latency_s + cost.flops / profile.flops


def t_sparse(cost: LayerCost, profile: HardwareProfile, density: float) -> float:
    """Predicted sparse time in seconds at density x: max(alpha x C / F, (S_A + beta x S_W) / B)."""
    compute = profile.alpha * density * cost.flops / profile.flops
    memory = (cost.act_bytes + profile.beta * density * cost.weight_bytes) / profile.bandwidth
    return profile.latency_s + max(compute, memory)


def speedup(cost: LayerCost, profile: HardwareProfile, density: float) -> float:
    """t_dense / t_sparse(x): above 1 the sparse kernel is predicted faster."""
    return t_dense(cost, profile) / t_sparse(cost, profile, density)


def useful_range(cost: LayerCost, profile: HardwareProfile) -> UsefulRange:
    """Park's (x_up, x_low) for one layer (see the module docstring)."""
    f, b, a, beta = profile.flops, profile.bandwidth, profile.alpha, profile.beta
    s_a, s_w, c = cost.act_bytes, cost.weight_bytes, cost.flops
    x_low = min(1.0 / a, (c * b / f - s_a) / (beta * s_w))
    denominator = a * c * b - beta * f * s_w
    if denominator <= 0:
        return UsefulRange(1.0, max(x_low, 0.0), True)
    return UsefulRange(min(f * s_a / denominator, 1.0), max(x_low, 0.0), False)


def model_speedup(costs: Mapping[str, LayerCost], profile: HardwareProfile,
                  densities: Mapping[str, float]) -> float:
    """Predicted end-to-end speedup over the modeled layers: sum t_dense / sum of each layer's
    faster option (a layer converts to the sparse kernel only where that is predicted faster,
    as ``nn.convert`` does). Layers missing from ``densities`` stay dense."""
    dense = sum(t_dense(c, profile) for c in costs.values())
    mixed = sum(min(t_dense(c, profile), t_sparse(c, profile, densities[n])) if n in densities
                else t_dense(c, profile) for n, c in costs.items())
    return dense / mixed if mixed > 0 else 1.0
