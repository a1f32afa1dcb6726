"""The mask engine and the magnitude criterion, without Lightning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparse_lightning import ConfigError
from sparse_lightning.criteria import magnitude_masks
from sparse_lightning.masks import (
    MaskedStep,
    apply_masks,
    attach_masks,
    attach_masks_from_state_dict,
    get_masks,
    mask_digest,
    mask_gradients,
    require_targets,
    select_parameters,
    set_masks,
)


def zoo() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 5), nn.LSTM(5, 6, num_layers=2),
        nn.Embedding(10, 3), nn.Conv1d(2, 2, 1), nn.Conv3d(1, 1, 1), nn.LayerNorm(3),
    )


def test_select_parameters_picks_prunable_weights_only():
    names = select_parameters(zoo())
    assert names == [
        "0.weight", "3.weight", "4.weight_ih_l0", "4.weight_hh_l0", "4.weight_ih_l1", "4.weight_hh_l1",
        "5.weight", "6.weight", "7.weight",
    ]


def test_include_exclude_patterns():
    assert select_parameters(zoo(), include=["4.*"], exclude=["*hh*"]) == ["4.weight_ih_l0", "4.weight_ih_l1"]


def test_no_prunable_layer_is_a_clear_error():
    with pytest.raises(ConfigError, match="no prunable weights in Sequential"):
        require_targets(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)), ["*"], [])


def test_masks_are_buffers_in_state_dict_and_idempotent():
    model = zoo()
    attach_masks(model, ["0.weight", "4.weight_hh_l1"])
    model[0].weight_mask.zero_()
    attach_masks(model, ["0.weight"])  # does not reset an existing mask
    assert not model[0].weight_mask.any()
    sd = model.state_dict()
    assert sd["0.weight_mask"].dtype == torch.bool and "4.weight_hh_l1_mask" in sd
    assert set(get_masks(model)) == {"0.weight", "4.weight_hh_l1"}


def test_state_dict_loads_into_a_fresh_dense_model():
    src = zoo()
    set_masks(src, magnitude_masks({"3.weight": src[3].weight}, 0.5))
    fresh = zoo()
    assert attach_masks_from_state_dict(fresh, src.state_dict()) == ["3.weight"]
    fresh.load_state_dict(src.state_dict())
    assert mask_digest(fresh) == mask_digest(src)


def test_layer_magnitude_masks_prune_exact_count_and_smallest():
    w = torch.tensor([[0.5, -0.1, 0.3], [-0.9, 0.2, 0.05]])
    keep = magnitude_masks({"w": w}, 0.5)["w"]
    assert keep.tolist() == [[True, False, True], [True, False, False]]
    for s in (0.0, 0.1, 0.37, 0.9, 0.99):
        big = torch.randn(37, 11)
        assert (~magnitude_masks({"w": big}, s)["w"]).sum() == round(s * big.numel())


def test_ties_are_broken_by_position_deterministically():
    w = torch.ones(10)
    keep = magnitude_masks({"w": w}, 0.3)["w"]
    assert keep.tolist() == [False] * 3 + [True] * 7


def test_global_masks_rank_all_layers_together():
    weights = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([0.5, 5.0])}
    keep = magnitude_masks(weights, 0.5, scope="global")
    assert keep["a"].tolist() == [False, False, True, True] and keep["b"].tolist() == [False, True]


def test_masks_only_shrink_given_current_masks():
    w = torch.tensor([0.0, 0.1, 0.2, 0.3])
    current = torch.tensor([True, True, False, True])  # 0.2 already pruned, 0.0 is a live zero
    keep = magnitude_masks({"w": w}, 0.5, masks={"w": current})["w"]
    assert keep.tolist() == [False, True, False, True]


@pytest.mark.parametrize("bad", [1.0, 1.2, -0.1, "0.5", None, True])
def test_sparsity_out_of_range_is_rejected(bad):
    with pytest.raises(ConfigError, match=r"in \[0, 1\)"):
        magnitude_masks({"w": torch.ones(3)}, bad)


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.AdamW])
def test_set_masks_zeroes_weights_and_optimizer_state_of_newly_pruned(opt_cls):
    torch.manual_seed(0)
    layer = nn.Linear(8, 8)
    kw = {"momentum": 0.9} if opt_cls is torch.optim.SGD else {}
    opt = opt_cls(layer.parameters(), lr=0.1, **kw)
    layer(torch.randn(4, 8)).sum().backward()
    opt.step()
    state = [v for v in opt.state[layer.weight].values() if torch.is_tensor(v) and v.shape == layer.weight.shape]
    assert state and all(v.abs().sum() > 0 for v in state)
    keep = magnitude_masks({"weight": layer.weight}, 0.75)
    set_masks(layer, keep, [opt])
    assert torch.all(layer.weight[~keep["weight"]] == 0)
    for v in state:
        assert torch.all(v[~keep["weight"]] == 0) and torch.all(v[keep["weight"]] != 0)
    assert torch.all(opt.state[layer.bias]["exp_avg" if "exp_avg" in opt.state[layer.bias] else "momentum_buffer"] != 0)


def test_mask_gradients_and_apply_masks():
    layer = nn.Linear(4, 4)
    set_masks(layer, {"weight": torch.eye(4, dtype=torch.bool)})
    layer(torch.randn(2, 4)).sum().backward()
    mask_gradients(layer)
    assert torch.count_nonzero(layer.weight.grad) <= 4
    with torch.no_grad():
        layer.weight.fill_(1.0)
    apply_masks(layer)
    assert torch.equal(layer.weight, torch.eye(4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_prepared_step_masks_weights_and_only_present_gradients(dtype):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3)).to(dtype)
    set_masks(model, {"0.weight": torch.eye(4, dtype=torch.bool), "1.weight": torch.zeros(3, 4, dtype=torch.bool)})
    step = MaskedStep(model)
    model[0](torch.randn(2, 4, dtype=dtype)).sum().backward()  # layer 1 gets no gradient
    step.mask_gradients()
    assert model[1].weight.grad is None
    assert torch.equal(model[0].weight.grad != 0, model[0].weight.grad.new_ones(4, 4).diag().diag() != 0)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(2.0)
    step.apply()
    assert model[0].weight.dtype == dtype
    assert torch.equal(model[0].weight, 2 * torch.eye(4, dtype=dtype)) and not model[1].weight.any()


def test_prepared_step_is_stale_after_an_in_place_mask_change():
    layer = nn.Linear(4, 4)
    set_masks(layer, {"weight": torch.ones(4, 4, dtype=torch.bool)})
    step = MaskedStep(layer)
    assert not step.stale()
    layer.load_state_dict({**layer.state_dict(), "weight_mask": torch.eye(4, dtype=torch.bool)})  # a checkpoint restore
    assert step.stale()
    MaskedStep(layer).apply()
    assert torch.count_nonzero(layer.weight) == 4


def test_digest_changes_with_any_bit():
    layer = nn.Linear(4, 4)
    attach_masks(layer, ["weight"])
    before = mask_digest(layer)
    layer.weight_mask[1, 2] = False
    assert mask_digest(layer) != before
