"""convert(): policies always / measured-faster / predicted-faster on a small pruned model keep its
outputs; bad arguments fail with one clear error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparse_lightning.errors import ConfigError
from sparse_lightning.nn import PrunedDepthwiseConv2d, SparseConv2d, SparseLinear, convert


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 24, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(24, 10))
        self.unused = nn.Linear(5, 5)

    def forward(self, x):
        return self.head(self.pool(torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.stem(x))))))))


def pruned_tiny(sparsity: float = 0.8) -> Tiny:
    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(torch.rand_like(m.weight) >= sparsity)
    return model


def test_always_replaces_every_layer_and_keeps_outputs():
    model, x = pruned_tiny(), torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        before = model(x)
    decisions = convert(model, "always")
    assert {d.name: d.kind for d in decisions} == {"stem": "conv", "dw": "depthwise", "pw": "conv",
                                                   "head.1": "linear", "unused": "linear"}
    assert all(d.replaced for d in decisions)
    assert isinstance(model.stem, SparseConv2d) and isinstance(model.dw, PrunedDepthwiseConv2d)
    assert isinstance(model.head[1], SparseLinear)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_measured_faster_keeps_the_faster_module_per_layer():
    model, x = pruned_tiny(0.9), torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        before = model(x)
    decisions = convert(model, "measured-faster", example_inputs=(x,))
    for d in decisions:
        if d.name == "unused":
            assert not d.replaced and d.reason == "not called by example_inputs"
            continue
        assert d.dense_us > 0 and d.sparse_us > 0
        assert d.replaced == (d.sparse_us < d.dense_us)
        sparse_types = (SparseConv2d, SparseLinear, PrunedDepthwiseConv2d)
        assert isinstance(model.get_submodule(d.name), sparse_types) == d.replaced
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def linear_only(module: nn.Module, input_shape: torch.Size) -> bool:
    return isinstance(module, nn.Linear) and len(input_shape) == 2


def test_predicted_faster_asks_the_predictor_with_input_shapes():
    model, x = pruned_tiny(), torch.randn(2, 3, 12, 12)
    decisions = {d.name: d for d in convert(model, "predicted-faster", example_inputs=(x,),
                                            predict=linear_only)}
    assert decisions["head.1"].replaced and not decisions["stem"].replaced
    assert isinstance(model.head[1], SparseLinear) and isinstance(model.stem, nn.Conv2d)


def test_filters_and_min_sparsity():
    model = pruned_tiny(0.5)
    with torch.no_grad():
        model.pw.weight.mul_(torch.rand_like(model.pw.weight) >= 0.9)  # pw ~95% sparse
    decisions = {d.name: d for d in convert(model, "always", min_sparsity=0.9, exclude=("head.*",))}
    assert "head.1" not in decisions
    assert decisions["pw"].replaced and not decisions["stem"].replaced
    assert "min_sparsity" in decisions["stem"].reason


@pytest.mark.parametrize("kwargs,match", [
    (dict(policy="fastest"), "allowed values"),
    (dict(policy="measured-faster"), "example_inputs"),
    (dict(policy="predicted-faster", example_inputs=(torch.randn(1, 3, 8, 8),)), "predict="),
    (dict(min_sparsity=1.5), "min_sparsity"),
])
def test_bad_arguments_raise_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        convert(pruned_tiny(), **kwargs)
