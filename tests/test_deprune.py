"""DEPrune: DR view, DCP, BWT, HSR, PW-conv2 filter pruning, the callback, convert()."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from sparse_lightning.callbacks.deprune import DEPrune
from sparse_lightning.callbacks.pruning import MagnitudePruning
from sparse_lightning.deprune import (
    KERNEL_K_TILE,
    bwt_dw_mask,
    dcp_mask,
    deprune_masks,
    dr_conv_weight,
    dr_groups,
    dr_to_depthwise,
    dr_view,
    filter_l2_mask,
    group_kept_counts,
    hsr_masks,
)
from sparse_lightning.errors import ConfigError
from sparse_lightning.masks import get_masks, set_masks
from sparse_lightning.models.classifier import Classifier
from sparse_lightning.models.mobilenet import MobileNetV2
from sparse_lightning.nn.convert import convert
from sparse_lightning.nn.depthwise import PrunedDepthwiseConv2d


def dw_weight(channels: int, k: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(channels, 1, k, k, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("channels, k", [(64, 3), (40, 5), (8, 3)])
def test_dr_view_round_trips_with_one_nonzero_per_column(channels, k):
    w = dw_weight(channels, k)
    view = dr_view(w)  # (G, 32, 32*k*k)
    assert view.shape == (dr_groups(channels), 32, 32 * k * k)
    assert torch.equal(dr_to_depthwise(view, channels, (k, k)), w)
    per_column = (view != 0).sum(1)  # (G, 32*k*k): column (c', r, s) of group g
    real = per_column.reshape(-1)[: channels * k * k]  # columns of real channels, padding after
    assert torch.all(real == 1) and torch.all(per_column <= 1)


def test_dr_grouped_conv_equals_depthwise_conv():
    w, x = dw_weight(40), torch.randn(2, 40, 9, 9)
    g = dr_groups(40)
    x_padded = F.pad(x, (0, 0, 0, 0, 0, 32 * g - 40))  # (B, G*32, H, W)
    y = F.conv2d(x_padded, dr_conv_weight(w), padding=1, groups=g)[:, :40]
    torch.testing.assert_close(y, F.conv2d(x, w, padding=1, groups=40))


def test_dcp_prunes_real_weights_only_not_the_dr_padding():
    w = dw_weight(40)  # 2 groups, the second one 8 real channels: 24*9 padding rows in the DR view
    keep = dcp_mask(w, 0.5)
    assert int((~keep).sum()) == round(0.5 * 40 * 9)  # not 0.5 * 64 * 9
    assert w.abs()[~keep].max() <= w.abs()[keep].min()


def test_bwt_gives_equal_kept_counts_per_group_where_dcp_does_not():
    w = dw_weight(96)
    w[32:64] *= 10  # a high-magnitude group: layer-wise DCP keeps more of it
    dcp = group_kept_counts(dcp_mask(w, 0.7))
    bwt = group_kept_counts(bwt_dw_mask(w, 0.7))
    assert len(set(dcp.tolist())) > 1
    assert bwt.tolist() == [288 - round(0.7 * 288)] * 3


def test_bwt_keeps_entries_pruned_before():
    w = dw_weight(64)
    prior = torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) > 0.2
    keep = bwt_dw_mask(w, 0.5, prior)
    assert not (keep & ~prior).any()
    assert group_kept_counts(keep).tolist() == [144, 144]


def test_hsr_aligns_every_groups_kept_count_to_the_kernel_tile():
    weights = {f"l{i}": dw_weight(64, 3, seed=i) for i in range(4)}
    masks = {n: bwt_dw_mask(w, s) for (n, w), s in zip(weights.items(), (0.5, 0.6, 0.7, 0.8))}
    before = sum(int(m.sum()) for m in masks.values())
    out, decisions = hsr_masks(weights, masks)
    for name, mask in out.items():
        assert all(c % KERNEL_K_TILE == 0 for c in group_kept_counts(mask).tolist()), name
    assert sorted(d.action for d in decisions) == ["prune", "prune", "restore", "restore"]
    for d in decisions:  # top half prunes eps, bottom half restores T - eps
        assert d.kept_after == (d.kept - d.epsilon if d.action == "prune" else d.kept + KERNEL_K_TILE - d.epsilon)
        assert (out[d.name] & ~masks[d.name]).any() == (d.action == "restore")
    after = sum(int(m.sum()) for m in out.values())
    assert abs(after - before) <= 2 * KERNEL_K_TILE * 2  # the total PR stays about the same


def test_hsr_ranks_layers_by_beta_from_an_alpha_table():
    weights = {n: dw_weight(32, 3, seed=i) for i, n in enumerate("ab")}
    masks = {n: bwt_dw_mask(w, 0.7) for n, w in weights.items()}  # same K, same epsilon
    for fast in "ab":
        _, decisions = hsr_masks(weights, masks, alpha={"a": 1.0, "b": 1.0, fast: 1.5})
        assert {d.name: d.action for d in decisions}[fast] == "prune"


def test_hsr_restores_highest_magnitude_and_never_prior_pruned():
    w = dw_weight(32)
    prior = torch.ones_like(w, dtype=torch.bool)
    prior.view(-1)[w.abs().view(-1).argsort(descending=True)[:50]] = False  # largest pruned elsewhere
    keep = bwt_dw_mask(w, 0.7, prior)
    out, _ = hsr_masks({"l": w}, {"l": keep}, fraction=0.0, prior={"l": prior})
    restored = out["l"] & ~keep
    assert not (restored & ~prior).any()
    assert int(out["l"].sum()) % KERNEL_K_TILE == 0
    candidates = ~keep & prior
    assert w.abs()[restored].min() >= w.abs()[candidates & ~restored].max()


def test_filter_pruning_removes_whole_smallest_l2_filters():
    w = torch.randn(16, 48, 1, 1)
    keep = filter_l2_mask(w, 0.25)
    rows = keep.reshape(16, -1)
    assert torch.all(rows.all(1) | ~rows.any(1)) and int((~rows.all(1)).sum()) == 4
    norms = w.reshape(16, -1).norm(dim=1)
    assert norms[~rows.all(1)].max() <= norms[rows.all(1)].min()


def test_deprune_masks_touch_depthwise_and_pw_conv2_only():
    net = MobileNetV2((3, 32, 32), 10, width_mult=0.25)
    masks, _ = deprune_masks(net, 0.7, pw2_sparsity=0.5)
    kinds = {n.split(".")[2] for n in masks}
    assert kinds == {"depthwise", "project"}
    assert len(masks) == 2 * 17
    for name, mask in masks.items():
        if ".project." in name:
            filters = mask.reshape(mask.shape[0], -1)
            assert int((~filters.all(1)).sum()) == round(0.5 * mask.shape[0])


def test_bad_arguments_are_one_line_config_errors():
    for kw in ({"dw_sparsity": 1.0}, {"dw_sparsity": 0.5, "pw2_sparsity": -0.1},
               {"dw_sparsity": 0.5, "at_step": -1}, {"dw_sparsity": 0.5, "tile": 0}):
        with pytest.raises(ConfigError):
            DEPrune(**kw)


def _module(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(MobileNetV2((3, 32, 32), 10, width_mult=0.25), optimizer=_sgd)


def _sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (64,), generator=g)
    x = torch.randn(10, 3, 32, 32, generator=g)[y] + 0.5 * torch.randn(64, 3, 32, 32, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=g)


def _pruned_zero(module) -> bool:
    params = dict(module.named_parameters())
    return all(torch.all(params[n][~m] == 0) for n, m in get_masks(module).items())


def test_callback_prunes_once_keeps_zeros_and_resumes(make_trainer, tmp_path):
    module, cb = _module(), DEPrune(dw_sparsity=0.7, pw2_sparsity=0.3)
    trainer = make_trainer(max_steps=4, callbacks=[cb])
    trainer.fit(module, train_dataloaders=_loader())
    assert cb.pruned_at_step == 0 and _pruned_zero(module)
    masks = {n: m.clone() for n, m in get_masks(module).items()}
    for name, mask in masks.items():
        if ".depthwise." in name:
            counts = group_kept_counts(mask)
            full = counts[: mask.shape[0] // 32]  # a last partial group keeps proportionally fewer
            assert len(set(full.tolist())) <= 1 and all(c % KERNEL_K_TILE == 0 for c in counts.tolist())
    ckpt = tmp_path / "k.ckpt"
    trainer.save_checkpoint(ckpt)

    resumed, cb2 = _module(seed=1), DEPrune(dw_sparsity=0.7, pw2_sparsity=0.3)
    trainer2 = make_trainer(max_steps=8, callbacks=[cb2])
    trainer2.fit(resumed, train_dataloaders=_loader(), ckpt_path=ckpt)
    assert cb2.pruned_at_step == 0 and trainer2.global_step == 8
    assert cb2.state_dict() == cb.state_dict()
    after = get_masks(resumed)
    assert all(torch.equal(after[n], masks[n]) for n in masks)
    assert _pruned_zero(resumed)


def test_composes_with_magnitude_pruning_of_pw_conv1(make_trainer):
    module = _module()
    other = MagnitudePruning(target=0.5, at_step=0, scope="layer", include=("*expand.0.weight",))
    cb = DEPrune(dw_sparsity=0.6, pw2_sparsity=0.0)
    make_trainer(max_steps=2, callbacks=[other, cb]).fit(module, train_dataloaders=_loader())
    masks = get_masks(module)
    assert any(".expand." in n for n in masks) and any(".depthwise." in n for n in masks)
    assert not any(".project." in n for n in masks)
    expand = [m for n, m in masks.items() if ".expand." in n]
    assert all(abs(1 - m.float().mean().item() - 0.5) < 0.01 for m in expand)
    assert _pruned_zero(module)


def test_convert_swaps_pruned_depthwise_layers_with_equal_outputs():
    net = MobileNetV2((3, 32, 32), 10, width_mult=0.25).eval()
    masks, _ = deprune_masks(net, 0.7, pw2_sparsity=0.3)
    set_masks(net, masks)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
    decisions = convert(net, "always", include=("*depthwise.0",))
    assert [d.replaced for d in decisions] == [True] * 17
    swapped = [m for m in net.modules() if isinstance(m, PrunedDepthwiseConv2d)]
    assert len(swapped) == 17 and all(math.isclose(m.sparsity, 1 - m.values.numel() / (m.channels * 9)) for m in swapped)
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=1e-4, atol=1e-5)


def test_hsr_alpha_table_needs_only_misaligned_layers_and_names_a_missing_one():
    weights = {n: dw_weight(32, 3, seed=i) for i, n in enumerate("ab")}
    masks = {"a": bwt_dw_mask(weights["a"], 0.7), "b": bwt_dw_mask(weights["b"], 1 - 64 / 288)}  # b: K = 64
    out, decisions = hsr_masks(weights, masks, alpha={"a": 1.2})
    assert {d.name: d.action for d in decisions}["b"] == "aligned"
    with pytest.raises(ConfigError, match="'a'"):
        hsr_masks(weights, masks, alpha={"b": 1.0})
