"""GuidedSparsity (Park et al. GSL with element-wise L1): init drops layers without a useful range,
freezes at >= 1 - x_up, restores dense weights when stuck at <= 1 - x_low, resumes exactly."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sparse_lightning import ConfigError, get_masks, mask_digest, set_masks
from sparse_lightning.callbacks.gsl import DROPPED, FROZEN, PRUNING, RESTORED, GuidedSparsity, decide, drop_dense_copies
from sparse_lightning.masks import get_parameter
from sparse_lightning.perf import UsefulRange, get_profile, layer_costs, model_speedup, useful_range

BIG = "big.weight"


class StemNet(pl.LightningModule):
    """Stem 3x3 conv (3 input channels), a 1x1 conv, a 32->64 3x3 conv, a small Linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.point = nn.Conv2d(32, 32, 1)
        self.big = nn.Conv2d(32, 64, 3, padding=1)
        self.head = nn.Linear(64, 4)

    def forward(self, x):  # x: (B, 3, 16, 16)
        h = torch.relu(self.point(torch.relu(self.stem(x))))  # (B, 32, 16, 16)
        h = torch.relu(self.big(h)).mean(dim=(2, 3))  # (B, 64)
        return self.head(h)  # (B, 4)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 3, 16, 16, generator=g)
        y = (x[:, 0].mean(dim=(1, 2)) > 0).long() + 2 * (x[:, 1].mean(dim=(1, 2)) > 0).long()
        return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=False)


def fit(make_trainer, model, gsl, epochs, ckpt_path=None):
    trainer = make_trainer(max_epochs=epochs, max_steps=-1, callbacks=[gsl])
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer


def premask(model: StemNet, sparsity: float) -> torch.Tensor:
    """A mask from 'another method' on the big conv: the smallest |w| fraction pruned."""
    w = model.big.weight.detach().abs().flatten()
    keep = torch.ones_like(w, dtype=torch.bool)
    keep[torch.argsort(w)[: round(sparsity * w.numel())]] = False
    mask = keep.view_as(model.big.weight)
    set_masks(model, {BIG: mask})
    return mask


def test_profile_gives_the_big_conv_a_range_and_not_the_others():
    ranges = {n: useful_range(c, get_profile("bdw")) for n, c in layer_costs(StemNet(), torch.randn(1, 3, 16, 16)).items()}
    assert ranges[BIG].useful and 0.6 < ranges[BIG].min_sparsity < ranges[BIG].max_sparsity < 0.95
    assert not any(ranges[n].useful for n in ("stem.weight", "point.weight", "head.weight"))


def test_decide_is_the_papers_rule():
    rng = UsefulRange(x_up=0.1, x_low=0.3, bandwidth_bound=False)
    assert decide(PRUNING, 0.9, [0.9], rng) == FROZEN
    assert decide(PRUNING, 0.8, [0.8] * 5, rng) == PRUNING  # stable but inside the range (0.7, 0.9)
    assert decide(PRUNING, 0.2, [0.2] * 4, rng) == PRUNING  # low but only 4 checks
    assert decide(PRUNING, 0.2, [0.18, 0.2, 0.2, 0.2, 0.2], rng) == PRUNING  # moved 2 points
    assert decide(PRUNING, 0.2, [0.197, 0.2, 0.2, 0.2, 0.2], rng) == RESTORED
    assert decide(FROZEN, 0.2, [0.2] * 5, rng) == FROZEN


def test_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="th0 must be a number > 0"):
        GuidedSparsity(th0=0)
    with pytest.raises(ConfigError, match="every_n_epochs must be an integer >= 1"):
        GuidedSparsity(every_n_epochs=0)
    with pytest.raises(ConfigError, match="profile: unknown 'tpu'"):
        GuidedSparsity(profile="tpu")


def test_gesl_prunes_only_layers_in_s(make_trainer):
    model = StemNet()
    gsl = GuidedSparsity(profile="bdw", l1=1e-3, th0=5e-3)
    trainer = fit(make_trainer, model, gsl, 2)
    assert gsl.status == {"stem.weight": DROPPED, "point.weight": DROPPED, BIG: PRUNING, "head.weight": DROPPED}
    masks = get_masks(model)
    assert all(bool(masks[n].all()) for n in ("stem.weight", "point.weight", "head.weight"))
    assert 0.05 < 1 - masks[BIG].float().mean().item() < 0.9
    assert torch.all(get_parameter(model, BIG)[~masks[BIG]] == 0)
    assert trainer.callback_metrics["gsl/decision/stem.weight"] == 3
    assert trainer.callback_metrics["gsl/decision/big.weight"] == 0
    costs = layer_costs(model, torch.randn(1, 3, 16, 16))
    densities = {n: masks[n].float().mean().item() for n in costs}
    expected = model_speedup(costs, get_profile("bdw"), densities)
    assert trainer.callback_metrics["gsl/predicted_speedup"] == pytest.approx(expected, rel=1e-5)


def test_freezes_a_layer_past_one_minus_x_up(make_trainer):
    model = StemNet()
    mask = premask(model, 0.95)  # beyond 1 - x_up (~0.93)
    gsl = GuidedSparsity(profile="bdw", l1=1e-3, th0=1e-3)
    trainer = fit(make_trainer, model, gsl, 2)
    assert gsl.status[BIG] == FROZEN and gsl.history[BIG] == [pytest.approx(0.95, abs=1e-3)]
    # frozen after the first check: epoch 2 neither adds L1 nor shrinks the mask
    assert 1 - get_masks(model)[BIG].float().mean().item() == pytest.approx(0.95, abs=0.02)
    assert torch.all(get_masks(model)[BIG] <= mask)
    assert trainer.callback_metrics["gsl/decision/big.weight"] == 1
    assert trainer.callback_metrics["gsl/predicted_speedup"] > 1.0


def test_restores_dense_weights_when_stuck_below_one_minus_x_low(make_trainer):
    model = StemNet()
    mask = premask(model, 0.1)  # another method's mask: must survive the restore
    original = model.big.weight.detach().clone()
    gsl = GuidedSparsity(profile="bdw", l1=0.0, th0=1e-12)  # no effective pruning: stuck at 10%
    fit(make_trainer, model, gsl, 4)
    assert gsl.status[BIG] == PRUNING  # 4 checks: not yet "stabilized"
    assert not torch.equal(model.big.weight, original)
    gsl2 = GuidedSparsity(profile="bdw", l1=0.0, th0=1e-12)
    model2 = StemNet()
    premask(model2, 0.1)
    fit(make_trainer, model2, gsl2, 5)
    assert gsl2.status[BIG] == RESTORED
    assert torch.equal(model2.big.weight, original)  # dense weights as at setup
    assert torch.equal(get_masks(model2)[BIG], mask)
    assert "big.weight_gsl_dense" in drop_dense_copies(model2)
    assert not any(k.endswith("_gsl_dense") for k in model2.state_dict())


def test_state_dict_resume_is_exact(make_trainer, tmp_path):
    def gsl():
        return GuidedSparsity(profile="bdw", l1=1e-3, th0=5e-3)

    full_model, full = StemNet(), gsl()
    fit(make_trainer, full_model, full, 4)
    half_model, half = StemNet(), gsl()
    trainer = fit(make_trainer, half_model, half, 2)
    ckpt = tmp_path / "half.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=True)
    json.dumps(state["callbacks"][next(k for k in state["callbacks"] if "GuidedSparsity" in k)])  # primitives
    resumed_model, resumed = StemNet(), gsl()
    fit(make_trainer, resumed_model, resumed, 4, ckpt_path=str(ckpt))
    assert resumed.state_dict() == full.state_dict()
    assert mask_digest(resumed_model) == mask_digest(full_model)
    for (n, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), n


def test_composes_with_gradual_pruning_on_other_layers(make_trainer):
    from sparse_lightning.callbacks.gradual import GradualPruning

    model = StemNet()
    gmp = GradualPruning("cubic", {"conv": {"target": 0.5}}, start_step=0, end_step=4, every=2,
                         include=("stem.weight", "point.weight"))
    gsl = GuidedSparsity(profile="bdw", l1=1e-3, th0=5e-3, include=(BIG,))
    trainer = make_trainer(max_epochs=3, max_steps=-1, callbacks=[gmp, gsl])
    trainer.fit(model)
    masks = get_masks(model)
    assert gsl.status == {BIG: PRUNING}
    for name in ("stem.weight", "point.weight"):
        assert 1 - masks[name].float().mean().item() == pytest.approx(0.5, abs=0.01)
        assert torch.all(get_parameter(model, name)[~masks[name]] == 0)
    assert 1 - masks[BIG].float().mean().item() > 0.05
