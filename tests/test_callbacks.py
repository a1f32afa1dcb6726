"""MagnitudePruning and SparsityMonitor on a plain user LightningModule (not ours)."""

from __future__ import annotations

import pytest
import torch
from pytorch_lightning.loggers import CSVLogger

from helpers import TinyNet
from sparse_lightning import ConfigError, MagnitudePruning, SparsityMonitor, get_masks, layer_sparsity
from sparse_lightning.masks import get_parameter


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_pruned_weights_stay_exactly_zero_through_training(make_trainer, optimizer, scope):
    model = TinyNet(optimizer)
    pruner = MagnitudePruning(target=0.7, at_step=5, scope=scope)
    trainer = make_trainer(max_steps=60, callbacks=[pruner])
    trainer.fit(model)
    assert pruner.pruned_at_step == 5
    masks = get_masks(model)
    assert set(masks) == {"conv.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "head.weight"}
    for name, mask in masks.items():
        weight = get_parameter(model, name)
        assert torch.all(weight[~mask] == 0), name
        assert torch.count_nonzero(weight[mask]) == mask.sum(), name  # kept weights are alive
    n_pruned = {n: int((~m).sum()) for n, m in masks.items()}
    if scope == "layer":
        for name, mask in masks.items():
            assert abs(n_pruned[name] - 0.7 * mask.numel()) <= 1, name
    else:
        total = sum(m.numel() for m in masks.values())
        assert abs(sum(n_pruned.values()) - 0.7 * total) <= 1


def test_pruning_at_epoch_and_bias_untouched(make_trainer):
    model = TinyNet()
    pruner = MagnitudePruning(target=0.5, at_epoch=1, scope="layer")
    trainer = make_trainer(max_epochs=2, max_steps=-1, callbacks=[pruner])
    trainer.fit(model)
    assert pruner.pruned_at_step == 8  # 256 samples / 32 per batch = 8 steps per epoch
    assert torch.count_nonzero(model.head.bias) == model.head.bias.numel()


def test_masks_identical_for_same_seed_and_kept_under_gradient_accumulation(make_trainer):
    import pytorch_lightning as pl

    digests = []
    for _ in range(2):
        pl.seed_everything(3)
        model = TinyNet("adamw")
        trainer = make_trainer(max_steps=12, accumulate_grad_batches=3, callbacks=[MagnitudePruning(0.8, at_step=4)])
        trainer.fit(model)
        from sparse_lightning import mask_digest

        digests.append(mask_digest(model))
        assert all(torch.all(get_parameter(model, n)[~m] == 0) for n, m in get_masks(model).items())
    assert digests[0] == digests[1]


def test_monitor_logs_per_layer_and_global_sparsity(make_trainer, tmp_path):
    model = TinyNet()
    logger = CSVLogger(tmp_path, name="csv")
    monitor = SparsityMonitor(every_n_steps=5, print_table=False)
    trainer = make_trainer(max_steps=20, logger=logger, callbacks=[MagnitudePruning(0.6, at_step=3), monitor])
    trainer.fit(model)
    import csv

    rows = list(csv.DictReader(open(logger.log_dir + "/metrics.csv")))
    logged = [float(r["sparsity/global"]) for r in rows if r.get("sparsity/global")]
    assert logged[-1] == pytest.approx(0.6, abs=1e-3)
    assert "sparsity/layer/rnn.weight_hh_l0" in rows[0]
    expected = layer_sparsity(model, ["conv.weight"])[0].sparsity
    assert float([r for r in rows if r.get("sparsity/layer/conv.weight")][-1]["sparsity/layer/conv.weight"]) == pytest.approx(expected)


def test_monitor_prints_table_at_end(make_trainer, capsys):
    trainer = make_trainer(max_steps=4, callbacks=[MagnitudePruning(0.5, at_step=1), SparsityMonitor(every_n_steps=2)])
    trainer.fit(TinyNet())
    out = capsys.readouterr().out
    assert "Sparsity per layer" in out and "rnn.weight_hh_l0" in out and "global" in out and "50.00%" in out


def test_callback_state_round_trips():
    cb = MagnitudePruning(0.9, at_step=10)
    cb.pruned_at_step = 10
    restored = MagnitudePruning(0.9, at_step=10)
    restored.load_state_dict(cb.state_dict())
    assert restored.pruned_at_step == 10
    assert all(isinstance(v, (int, float, str, type(None))) for v in cb.state_dict().values())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target=1.2, at_step=0), r"target must be a number in \[0, 1\)"),
        (dict(target=0.5), "exactly one of at_step, at_epoch"),
        (dict(target=0.5, at_step=1, at_epoch=1), "exactly one of at_step, at_epoch"),
        (dict(target=0.5, at_step=-3), "at_step must be an integer >= 0"),
        (dict(target=0.5, at_step=0, scope="row"), "scope must be 'global' or 'layer'"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MagnitudePruning(**kwargs)


def test_model_without_prunable_layers_fails_in_setup(make_trainer):
    class NoWeights(TinyNet):
        def __init__(self):
            super().__init__()
            self.conv = self.rnn = self.head = None
            self.scale = torch.nn.Parameter(torch.ones(1))

    with pytest.raises(ConfigError, match="no prunable weights"):
        make_trainer(callbacks=[MagnitudePruning(0.5, at_step=0)]).fit(NoWeights())
