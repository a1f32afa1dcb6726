"""IterativePruning (Han et al. 2015): std thresholds, rounds, retraining LR, regularization, dropout, freezing."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import TinyNet
from sparse_lightning import MLP, ConfigError, get_masks
from sparse_lightning.callbacks import IterativePruning
from sparse_lightning.callbacks.iterative import dropout_layers
from sparse_lightning.criteria import std_threshold_masks, std_thresholds, surviving_std
from sparse_lightning.masks import get_parameter


def test_std_threshold_uses_the_population_std_of_the_surviving_weights():
    w = torch.tensor([0.0, 0.0, 1.0, -1.0, 3.0, -3.0])
    mask = torch.tensor([False, False, True, True, True, True])
    # survivors {1, -1, 3, -3}: mean 0, population variance (1 + 1 + 9 + 9) / 4 = 5
    assert surviving_std(w, mask) == pytest.approx(math.sqrt(5))
    assert std_thresholds({"w": w}, {"w": 0.5}, {"w": mask})["w"] == pytest.approx(0.5 * math.sqrt(5))
    keep = std_threshold_masks({"w": w}, {"w": 0.5}, {"w": mask})["w"]  # tau = 1.118: prune |w| < tau
    assert keep.tolist() == [False, False, False, False, True, True]
    exact = std_threshold_masks({"w": w}, {"w": 1 / math.sqrt(5)}, {"w": mask})["w"]  # tau = 1: |w| = 1 kept
    assert exact.tolist() == [False, False, True, True, True, True]


class Probe(Callback):
    """After the pruner: masks and weights at each step start; learning rate at each optimizer step."""

    def __init__(self) -> None:
        self.masks, self.weights, self.lrs = {}, {}, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.masks[trainer.global_step] = {n: m.clone() for n, m in get_masks(pl_module).items()}
        self.weights[trainer.global_step] = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs[trainer.global_step] = optimizer.param_groups[0]["lr"]


def test_rounds_prune_below_q_std_and_retrain_at_a_lower_rate(make_trainer):
    quality = {"conv": 0.5, "recurrent": 0.8, "linear": 0.8}
    pruner, probe = IterativePruning(quality, dense_steps=6, retrain_steps=5, rounds=3, lr_scale=0.1), Probe()
    model = TinyNet("sgd", lr=0.05)
    make_trainer(max_steps=25, callbacks=[pruner, probe]).fit(model)
    assert pruner.state_dict()["events_done"] == 3 and pruner.state_dict()["prune_steps"] == [6, 11, 16]
    kinds = {"conv.weight": "conv", "rnn.weight_ih_l0": "recurrent", "rnn.weight_hh_l0": "recurrent", "head.weight": "linear"}
    sparsities = []
    for step in range(1, 25):
        before, after = probe.masks[step - 1], probe.masks[step]
        if step not in (6, 11, 16):
            assert all(torch.equal(before[n], after[n]) for n in kinds)
            continue
        w = probe.weights[step]
        for name in kinds:
            assert torch.all(w[name][~after[name]] == 0) and torch.all(w[name][after[name]] != 0)
            assert torch.all(after[name] <= before[name])
        assert sum(int((~after[n]).sum()) for n in kinds) > sum(int((~before[n]).sum()) for n in kinds)
        sparsities.append(sum(int((~m).sum()) for m in after.values()) / sum(m.numel() for m in after.values()))
    assert sparsities == sorted(sparsities) and sparsities[-1] > 0.5
    assert all(probe.lrs[s] == pytest.approx(0.05) for s in range(6))
    assert all(probe.lrs[s] == pytest.approx(0.005) for s in range(6, 25))
    opt = model.trainer.optimizers[0]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # restored after each step: the schedule owns it


def test_pruned_masks_follow_the_threshold_rule(make_trainer):
    """At a prune step the new mask is exactly old & (|w| >= q * std(survivors)) of the weights before it."""

    class BeforePrune(Callback):
        def __init__(self):
            self.seen = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen[trainer.global_step] = ({n: get_parameter(pl_module, n).detach().clone() for n in get_masks(pl_module)},
                                              {n: m.clone() for n, m in get_masks(pl_module).items()})

    before, pruner, after = BeforePrune(), IterativePruning(0.7, dense_steps=4, retrain_steps=4, rounds=2), Probe()
    make_trainer(max_steps=12, callbacks=[before, pruner, after]).fit(TinyNet())
    for step in (4, 8):
        weights, masks = before.seen[step]
        expected = std_threshold_masks(weights, {n: 0.7 for n in weights}, masks)
        assert all(torch.equal(after.masks[step][n], expected[n]) for n in weights)


class ZeroLoss(pl.LightningModule):
    """Its loss has zero gradient, so the only gradient a weight gets is the callback's regularizer."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 5)

    def training_step(self, batch, batch_idx):
        return (self.fc(batch[0]) * 0).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(16, 6)), batch_size=4)


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_regularization_gradient_is_added_to_pruned_layers(make_trainer, kind):
    class Grad(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.grad, self.weight = pl_module.fc.weight.grad.clone(), pl_module.fc.weight.detach().clone()
            self.bias_grad = pl_module.fc.bias.grad.clone()

    probe = Grad()
    make_trainer(max_steps=1, callbacks=[IterativePruning(1.0, 10, 1, regularization={kind: 0.01}), probe]).fit(ZeroLoss())
    expected = 0.01 * (torch.sign(probe.weight) if kind == "l1" else probe.weight)
    torch.testing.assert_close(probe.grad, expected)
    assert torch.all(probe.bias_grad == 0)  # biases are not pruned and not regularized by the callback


class DropoutMLP(pl.LightningModule):
    def __init__(self, p: float = 0.5):
        super().__init__()
        self.net = MLP(input_shape=(12,), num_classes=3, hidden=(20, 10), dropout=p)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 12, generator=g)
        return DataLoader(TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()), batch_size=16)


def test_dropout_is_rescaled_by_the_root_of_the_kept_connections(make_trainer):
    model = DropoutMLP(0.5)
    # MLP registers `dropouts` before `features`: matching must follow the Sequential alias
    assert dropout_layers(model, ["net.features.1", "net.features.4", "net.classifier"]) == {
        "net.dropouts.0": "net.features.1", "net.dropouts.1": "net.features.4"}
    pruner = IterativePruning(1.0, dense_steps=2, retrain_steps=3, rounds=2)
    make_trainer(max_steps=10, callbacks=[pruner]).fit(model)
    for drop, layer in (("dropouts.0", "features.1"), ("dropouts.1", "features.4")):
        mask = model.net.get_submodule(layer).weight_mask
        density = mask.sum().item() / mask.numel()
        assert density < 0.5
        assert model.net.get_submodule(drop).p == pytest.approx(0.5 * math.sqrt(density))
    assert pruner.state_dict()["dropout_p0"] == {"net.dropouts.0": 0.5, "net.dropouts.1": 0.5}


def test_freeze_alternates_conv_and_fc_phases(make_trainer):
    probe = Probe()
    pruner = IterativePruning({"conv": 0.5, "recurrent": 0.8, "linear": 0.8}, dense_steps=3, retrain_steps=4, rounds=1, freeze=True)
    make_trainer(max_steps=11, callbacks=[pruner, probe]).fit(TinyNet("adamw"))
    conv = ("conv.weight", "conv.bias")
    fc = ("rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0", "head.weight", "head.bias")
    w = probe.weights
    # steps 3..6: conv pruned and retrained, the FC/recurrent layers fixed; steps 7..10: the reverse
    assert all(torch.equal(w[s][n], w[3][n]) for s in range(3, 7) for n in fc)
    assert not torch.equal(w[6]["conv.weight"], w[3]["conv.weight"])
    assert all(torch.equal(w[s][n], w[7][n]) for s in range(7, 11) for n in conv)
    assert not torch.equal(w[10]["head.weight"], w[7]["head.weight"])
    assert not torch.equal(w[3]["norm.weight"], w[6]["norm.weight"])  # other parameters keep training
    masks = probe.masks
    assert not masks[3]["conv.weight"].all() and masks[3]["head.weight"].all()  # phase 1 pruned conv only
    assert not masks[7]["head.weight"].all()


def test_lr_scale_zero_prunes_without_retraining(make_trainer):
    probe = Probe()
    make_trainer(max_steps=8, callbacks=[IterativePruning(0.5, dense_steps=4, retrain_steps=4, rounds=1, lr_scale=0.0),
                                         probe]).fit(TinyNet("sgd"))
    targets = ("conv.weight", "rnn.weight_hh_l0", "head.weight", "head.bias")
    assert all(torch.equal(probe.weights[s][n], probe.weights[4][n]) for s in range(4, 8) for n in targets)


def test_state_dict_is_primitive_and_resume_restores_dropout(make_trainer):
    model = DropoutMLP(0.4)
    pruner = IterativePruning({"linear": 1.0}, dense_steps=2, retrain_steps=2, rounds=2)
    make_trainer(max_steps=5, callbacks=[pruner]).fit(model)
    state = pruner.state_dict()
    assert state["events_done"] == 2
    flat = [state["events_done"], *state["prune_steps"], *state["dropout_p0"].values(), *state["quality"].values()]
    assert all(isinstance(v, (int, float)) for v in flat)
    fresh_model, fresh = DropoutMLP(0.4), IterativePruning({"linear": 1.0}, dense_steps=2, retrain_steps=2, rounds=2)
    fresh_model.load_state_dict(model.state_dict(), strict=False)
    fresh.setup(None, fresh_model, "fit")
    fresh_model.load_state_dict(model.state_dict())
    fresh.load_state_dict(state)
    fresh.on_train_start(None, fresh_model)
    assert fresh_model.net.dropouts[0].p == pytest.approx(model.net.dropouts[0].p)
    assert model.net.dropouts[0].p < 0.4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(quality={"dense": 1.0}), "quality: unknown layer type 'dense'"),
        (dict(quality=-1.0), "quality.conv must be a number >= 0"),
        (dict(rounds=0), "rounds must be an integer >= 1"),
        (dict(lr_scale=2.0), r"lr_scale must be a number in \[0, 1\]"),
        (dict(regularization={"l3": 1e-4}), "regularization: unknown key 'l3'; allowed: l1, l2"),
        (dict(regularization={"l2": -1.0}), "regularization.l2 must be a number >= 0"),
        (dict(retrain_steps=0), "retrain_steps must be >= 1"),
        (dict(dense_steps=-5), "dense_steps must be >= 0"),
        (dict(dense_steps=1.5), "dense_steps as a float is a fraction"),
    ],
)
def test_bad_arguments_fail_in_the_constructor(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        IterativePruning(**kwargs)


def test_schedule_longer_than_the_run_warns(make_trainer):
    with pytest.warns(UserWarning, match="the schedule needs 40 optimizer steps, the run has 10"):
        make_trainer(max_steps=10, callbacks=[IterativePruning(1.0, dense_steps=10, retrain_steps=10, rounds=3)]).fit(TinyNet())


def test_quality_per_parameter_pattern_wins_over_the_layer_type(make_trainer):
    pruner = IterativePruning({"linear": 0.9, "head.*": 0.0, "recurrent": 0.5}, dense_steps=2, retrain_steps=2, rounds=1)
    model = TinyNet()
    make_trainer(max_steps=3, callbacks=[pruner]).fit(model)
    assert pruner.targets == ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "head.weight"]  # conv: no q, stays dense
    assert model.head.weight_mask.all()  # q = 0 prunes nothing (only |w| < 0)
    assert not model.rnn.weight_hh_l0_mask.all()
    with pytest.raises(ConfigError, match="quality pattern 'tail.*' matches no prunable weight"):
        make_trainer(max_steps=1, callbacks=[IterativePruning({"tail.*": 1.0}, 1, 1)]).fit(TinyNet())
