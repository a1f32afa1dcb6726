"""`convert`: swap a pruned model's layers for sparse inference modules, in place.

    decisions = convert(model, policy="measured-faster", example_inputs=(x,))

Eligible layers: `nn.Conv2d` with zero padding (depthwise -> `PrunedDepthwiseConv2d`, otherwise
`SparseConv2d`) and `nn.Linear` (-> `SparseLinear`); their zeros, and `weight_mask` buffers, define
the sparsity. Policies (DESIGN.md: replace a layer only where the model or a measurement says the
sparse kernel is faster):

* "always": every eligible layer at or above `min_sparsity`.
* "measured-faster": run `example_inputs` once to capture each layer's input, time the dense layer
  and its sparse replacement on that input on the current device (CUDA events on a GPU, a wall
  clock on CPU; median of repeated calls) and keep the faster one.
* "predicted-faster": ask `predict(module, input_shape) -> bool` per layer. The roofline
  performance model (`sparse_lightning.perf`, Park et al. Sec. 2.2) is a later piece of work, so
  no predictor is built in: pass one explicitly.
"""

from __future__ import annotations

import fnmatch
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from sparse_lightning.errors import ConfigError
from sparse_lightning.nn._buffers import masked_weight
from sparse_lightning.nn.depthwise import PrunedDepthwiseConv2d, is_depthwise
from sparse_lightning.nn.sparse_conv import SparseConv2d
from sparse_lightning.nn.sparse_linear import SparseLinear

log = logging.getLogger(__name__)
Policy = Literal["always", "predicted-faster", "measured-faster"]
POLICIES = ("always", "predicted-faster", "measured-faster")
Predictor = Callable[[nn.Module, torch.Size], bool]


@dataclass
class LayerDecision:
    name: str  # fully-qualified module name
    kind: str  # "conv" | "depthwise" | "linear"
    sparsity: float
    replaced: bool
    reason: str
    dense_us: float | None = None  # measured-faster only
    sparse_us: float | None = None


def _sparse_class(module: nn.Module) -> tuple[str, type[nn.Module]] | None:
    if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
        return ("depthwise", PrunedDepthwiseConv2d) if is_depthwise(module) else ("conv", SparseConv2d)
    if isinstance(module, nn.Linear):
        return "linear", SparseLinear
    return None


def _sparsity(module: nn.Module) -> float:
    weight, mask = masked_weight(module)
    keep = weight != 0 if mask is None else (weight != 0) & mask.bool()
    return 1.0 - keep.sum().item() / keep.numel()


class _InputRecorder:
    """Forward pre-hook keeping the first input a module sees (returns None: changes nothing)."""

    def __init__(self, inputs: dict[str, torch.Tensor], name: str) -> None:
        self.inputs, self.name = inputs, name

    def __call__(self, module: nn.Module, args: tuple) -> None:
        self.inputs.setdefault(self.name, args[0].detach())


def _capture_inputs(model: nn.Module, names: Sequence[str], example_inputs: tuple) -> dict[str, torch.Tensor]:
    modules, inputs, hooks = dict(model.named_modules()), {}, []
    for name in names:
        hooks.append(modules[name].register_forward_pre_hook(_InputRecorder(inputs, name)))
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return inputs


def time_call(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int = 20) -> float:
    """Median microseconds per call after 3 warm-up calls (CUDA events on a GPU)."""
    with torch.no_grad():
        for _ in range(3):
            fn()
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(device)
                times.append(start.elapsed_time(end) * 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def convert(model: nn.Module, policy: Policy = "always", *, example_inputs: tuple | None = None,
            predict: Predictor | None = None, min_sparsity: float = 0.0,
            include: Sequence[str] = ("*",), exclude: Sequence[str] = ()) -> list[LayerDecision]:
    """Replace eligible layers of `model` (in place) per `policy`; returns one decision per
    eligible layer matched by the `include`/`exclude` fnmatch patterns on module names.
    `example_inputs` (a tuple of model arguments) is needed by the measured- and predicted-faster
    policies; `predict(module, input_shape) -> bool` by predicted-faster."""
    if policy not in POLICIES:
        raise ConfigError(f"policy={policy!r}: allowed values are {', '.join(POLICIES)}")
    if policy != "always" and example_inputs is None:
        raise ConfigError(f"policy={policy!r} needs example_inputs=(tensors passed to the model)")
    if policy == "predicted-faster" and predict is None:
        raise ConfigError("policy='predicted-faster' needs predict=callable(module, input_shape) -> "
                          "bool; the roofline model (sparse_lightning.perf) is not built in yet")
    if not 0.0 <= min_sparsity <= 1.0:
        raise ConfigError(f"min_sparsity={min_sparsity} must be in [0, 1]")
    targets = [(name, m, *_sparse_class(m)) for name, m in model.named_modules()
               if _sparse_class(m) is not None
               and any(fnmatch.fnmatchcase(name, p) for p in include)
               and not any(fnmatch.fnmatchcase(name, p) for p in exclude)]
    inputs = {} if policy == "always" else _capture_inputs(model, [t[0] for t in targets], example_inputs)
    decisions = []
    for name, module, kind, cls in targets:
        d = LayerDecision(name, kind, _sparsity(module), replaced=False, reason="")
        decisions.append(d)
        if d.sparsity < min_sparsity:
            d.reason = f"sparsity {d.sparsity:.3f} < min_sparsity {min_sparsity}"
            continue
        if policy != "always" and name not in inputs:
            d.reason = "not called by example_inputs"
            continue
        sparse = cls.from_dense(module)
        if policy == "always":
            d.replaced, d.reason = True, "policy=always"
        elif policy == "predicted-faster":
            d.replaced = bool(predict(module, inputs[name].shape))
            d.reason = "predicted faster" if d.replaced else "predicted slower"
        else:
            x = inputs[name]
            d.dense_us = time_call(lambda: module(x), x.device)
            d.sparse_us = time_call(lambda: sparse(x), x.device)
            d.replaced = d.sparse_us < d.dense_us
            d.reason = f"measured {d.sparse_us:.1f} us sparse vs {d.dense_us:.1f} us dense"
        if d.replaced:
            _set_module(model, name, sparse)
        log.info("convert %s (%s, sparsity %.3f): %s -> %s", name, kind, d.sparsity, d.reason,
                 "sparse" if d.replaced else "dense")
    return decisions
