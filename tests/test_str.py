"""STR (Kusupati et al. 2020): the parametrization, its gradients, removal, the callback, resume, trends."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, TensorDataset

from helpers import TinyNet
from sparse_lightning import CNN1d, Classifier, ConfigError, MNIST1DDataModule, get_masks
from sparse_lightning.callbacks.str import STR
from sparse_lightning.callbacks.str_control import DecayController, reference_sparsity
from sparse_lightning.masks import attach_masks_from_state_dict, get_parameter
from sparse_lightning.reparam import (
    LowRankSoftThreshold,
    apply_str,
    export_str_state_dict,
    lowrank_rank,
    remove_str,
    str_targets,
)

TINY_TARGETS = ["conv.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "head.weight"]


# --------------------------------------------------------------------------- the parametrization


def test_forward_is_the_soft_threshold():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.3, 0.05, -0.02]]))
    s = apply_str(layer, ["weight"], s_init=float(torch.logit(torch.tensor(0.1))))["weight"]
    assert torch.sigmoid(s).item() == pytest.approx(0.1)
    torch.testing.assert_close(layer.weight, torch.tensor([[0.4, -0.2, 0.0, 0.0]]))


def test_gradients_match_the_hand_derived_formulas():
    """dL/dW = dL/dW_eff * 1[|W| > g(s)];  dL/ds = -g'(s) * sum_i dL/dW_eff_i * sign(W_i) * 1[|W_i| > g(s)]."""
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    s = apply_str(layer, ["weight"], s_init=-2.5)["weight"]  # alpha ~ 0.076: some weights pruned, most kept
    w = layer.parametrizations.weight.original
    x, upstream = torch.randn(5, 16), torch.randn(5, 8)
    (layer(x) * upstream).sum().backward()
    alpha = torch.sigmoid(s.detach())
    alive = (w.detach().abs() > alpha).float()
    assert 0 < alive.mean() < 1
    grad_eff = upstream.T @ x  # dL/dW_eff of y = x W_eff^T: (8, 16)
    torch.testing.assert_close(w.grad, grad_eff * alive)
    g_prime = alpha * (1 - alpha)
    torch.testing.assert_close(s.grad, -g_prime * (grad_eff * torch.sign(w.detach()) * alive).sum())
    assert torch.all(w.grad[alive == 0] == 0)  # pruned weights get no loss gradient (only decay)


@pytest.mark.parametrize("factory", [lambda: nn.Conv1d(3, 4, 5), lambda: nn.Conv2d(2, 3, 3), lambda: nn.Embedding(10, 6)])
def test_conv_and_embedding_weights_are_parametrized(factory):
    module = factory()
    dense = copy.deepcopy(module)
    apply_str(module, ["weight"], s_init=-3.0)
    alpha = torch.sigmoid(torch.tensor(-3.0))
    expected = torch.sign(dense.weight) * torch.relu(dense.weight.abs() - alpha)
    torch.testing.assert_close(module.weight, expected)


def test_gru_under_str_computes_with_the_thresholded_weights():
    torch.manual_seed(0)
    gru = nn.GRU(4, 8, batch_first=True)
    reference = copy.deepcopy(gru)
    apply_str(gru, ["weight_ih_l0", "weight_hh_l0"], s_init=-3.0)
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0"):
            getattr(reference, name).copy_(getattr(gru, name))
    gru.flatten_parameters()  # a no-op without cuDNN; must not break the parametrized weights
    x = torch.randn(3, 7, 4)
    out, h = gru(x)
    ref_out, ref_h = reference(x)
    torch.testing.assert_close(out, ref_out)
    h.sum().backward()
    s = gru.parametrizations.weight_hh_l0[0].s
    assert s.grad is not None and gru.parametrizations.weight_hh_l0.original.grad is not None


def test_global_scope_shares_one_threshold():
    model = TinyNet()
    thresholds = apply_str(model, TINY_TARGETS, scope="global")
    assert len({id(s) for s in thresholds.values()}) == 1
    names = [n for n, _ in model.named_parameters() if n.endswith(".s")]
    assert len(names) == 1
    layer = apply_str(TinyNet(), TINY_TARGETS, scope="layer")
    assert len({id(s) for s in layer.values()}) == 4


@pytest.mark.parametrize("scope, shape", [("filter", (8, 1, 1)), ("weight", (8, 1, 3))])
def test_filter_and_weight_scopes_give_each_filter_or_weight_its_threshold(scope, shape):
    """METHODS.md Sec. 3 variants: s of shape (C_out, 1, 1) or of W's shape, broadcast in the soft threshold."""
    torch.manual_seed(0)
    conv = nn.Conv1d(1, 8, 3)
    dense = conv.weight.detach().clone()  # (8, 1, 3)
    s = apply_str(conv, ["weight"], s_init=-3.0, scope=scope)["weight"]
    assert s.shape == shape
    with torch.no_grad():
        s.copy_(torch.linspace(-4.0, 0.0, s.numel()).reshape(shape))  # a different threshold each
    alpha = torch.sigmoid(s.detach())
    torch.testing.assert_close(conv.weight, torch.sign(dense) * torch.relu(dense.abs() - alpha))
    conv(torch.randn(2, 1, 5)).sum().backward()
    assert s.grad.shape == shape and torch.count_nonzero(s.grad) > 1
    masks = remove_str(conv)
    assert torch.equal(masks["weight"], dense.abs() > alpha)


def test_apply_is_idempotent_and_remove_writes_back_a_plain_pruned_model():
    torch.manual_seed(0)
    model = TinyNet()
    apply_str(model, TINY_TARGETS, s_init=-2.5)
    first = {n: p for n, p in model.named_parameters()}
    apply_str(model, TINY_TARGETS, s_init=-2.5)
    assert {n: p for n, p in model.named_parameters()} == first
    effective = {n: get_parameter(model, n).detach().clone() for n in TINY_TARGETS}
    state = export_str_state_dict(model.state_dict())
    originals = {n: model.get_submodule(n.rpartition(".")[0]).parametrizations[n.rpartition(".")[2]].original
                 for n in TINY_TARGETS}
    masks = remove_str(model)
    assert str_targets(model) == {} and not any(n.endswith(".s") for n, _ in model.named_parameters())
    for name in TINY_TARGETS:
        weight = get_parameter(model, name)
        assert isinstance(weight, nn.Parameter) and weight is originals[name]  # same tensor: optimizer state survives
        torch.testing.assert_close(weight.detach(), effective[name])
        assert torch.equal(masks[name], effective[name] != 0) and torch.equal(get_masks(model)[name], masks[name])
    plain = TinyNet()
    attach_masks_from_state_dict(plain, state)
    plain.load_state_dict(state)  # the exported STR state is an ordinary pruned state dict
    assert all(torch.equal(get_parameter(plain, n), get_parameter(model, n)) for n in TINY_TARGETS)


def test_remove_drops_the_thresholds_from_the_optimizer():
    model = TinyNet()
    apply_str(model, TINY_TARGETS)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    model.training_step(next(iter(model.train_dataloader())), 0).backward()
    optimizer.step()
    n_before = len(optimizer.param_groups[0]["params"])
    remove_str(model, [optimizer])
    assert len(optimizer.param_groups[0]["params"]) == n_before - 4
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == [id(p) for p in model.parameters()]


def test_lowrank_factorization_rank_and_removal():
    torch.manual_seed(0)
    gru = nn.GRU(4, 8, batch_first=True)
    dense = gru.weight_hh_l0.detach().clone()  # (24, 8)
    s = apply_str(gru, ["weight_hh_l0"], s_init=-20.0, lowrank=["weight_hh_l0"])["weight_hh_l0"]
    p = gru.parametrizations.weight_hh_l0
    assert isinstance(p[0], LowRankSoftThreshold) and p.original0.shape == (24, 8) and p.original2.shape == (8, 8)
    torch.testing.assert_close(gru.weight_hh_l0, dense)  # full rank, g(s) ~ 0: W_eff = W at the start
    with torch.no_grad():
        p.original1.copy_(torch.tensor([1.0, 0.9, 0.8, 0.05, 0.04, 0.6, 0.03, 0.7]))
        s.fill_(float(torch.logit(torch.tensor(0.1))))
    assert lowrank_rank(gru, "weight_hh_l0") == 5
    gru(torch.randn(2, 3, 4))[1].sum().backward()
    assert all(t.grad is not None for t in (p.original0, p.original1, p.original2, s))
    remove_str(gru)
    assert not parametrize.is_parametrized(gru) and torch.linalg.matrix_rank(gru.weight_hh_l0.detach()) == 5


def test_lowrank_rank_falls_with_weight_decay():
    """Low-rank STR on a linear map of rank 3: larger weight decay (on U, V, sigma and s) leaves a lower rank."""
    torch.manual_seed(0)
    target = torch.randn(12, 3) @ torch.randn(3, 10) / 3
    x = torch.randn(256, 10)
    ranks = {}
    for decay in (1e-4, 3e-2):
        layer = nn.Linear(10, 12, bias=False)
        apply_str(layer, ["weight"], s_init=-3.0, lowrank=["weight"])
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.05, momentum=0.9, weight_decay=decay)
        for _ in range(400):
            optimizer.zero_grad()
            ((layer(x) - x @ target.T) ** 2).mean().backward()
            optimizer.step()
        ranks[decay] = lowrank_rank(layer, "weight")
    assert ranks[3e-2] < ranks[1e-4]
    assert ranks[3e-2] <= 4


# --------------------------------------------------------------------------- the callback


def test_reference_and_controller_are_pure_functions():
    assert reference_sparsity(5, 0.9, 10, 70) == 0.0
    assert reference_sparsity(70, 0.9, 10, 70) == 0.9
    assert reference_sparsity(40, 0.9, 10, 70) == pytest.approx(0.9 * (1 - 0.5**3))
    lagging = DecayController().update(reference=0.5, sparsity=0.1)
    assert lagging.u > DecayController().u  # too dense: more decay
    ahead = DecayController().update(reference=0.1, sparsity=0.5)
    assert ahead.u < DecayController().u
    assert DecayController(u=20.0).decays[1] > 0 and DecayController().decays[1] == 0  # W decays only past s's range


class ThresholdProbe(Callback):
    def __init__(self) -> None:
        self.in_optimizer: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        ids = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
        self.in_optimizer.append(all(id(p.s) in ids for p in str_targets(pl_module).values()))


@pytest.mark.parametrize("scope", ["layer", "filter", "weight"])
def test_thresholds_reach_the_optimizer_and_its_weight_decay(make_trainer, scope):
    model, probe = TinyNet("sgd"), ThresholdProbe()
    make_trainer(max_steps=3, callbacks=[STR(s_init=-3.0, scope=scope), probe]).fit(model)
    assert probe.in_optimizer == [True, True, True]
    assert not parametrize.is_parametrized(model.rnn) and set(get_masks(model)) == set(TINY_TARGETS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(s_init=float("nan")), "s_init must be a finite number"),
        (dict(scope="row"), "scope must be one of layer, global, filter, weight, got 'row'"),
        (dict(target=1.0), r"target must be a number in \[0, 1\)"),
        (dict(finetune_steps=1.5), "finetune_steps as a float is a fraction"),
        (dict(finetune_steps=-3), "finetune_steps must be >= 0"),
        (dict(rank=0), "rank must be an integer >= 1 or null"),
        (dict(lowrank="*rnn*"), "lowrank must be a list of fnmatch patterns"),
    ],
)
def test_bad_arguments_fail_in_the_constructor(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        STR(**kwargs)


def test_no_prunable_weights_and_bad_lowrank_target_fail_in_setup(make_trainer):
    with pytest.raises(ConfigError, match="no prunable weights"):
        make_trainer(max_steps=1, callbacks=[STR(include=["nothing.*"])]).fit(TinyNet())
    with pytest.raises(ConfigError, match="conv.weight has shape .*low-rank STR needs a 2-D weight"):
        make_trainer(max_steps=1, callbacks=[STR(lowrank=["conv.*"])]).fit(TinyNet())


class OrderedNet(TinyNet):
    """TinyNet on data in a fixed order, so an interrupted run can replay the rest exactly."""

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(128, 1, 12, generator=g)
        y = (x.sum(dim=(1, 2)) > 0).long() + 2 * (x[:, 0, 0] > 0).long()
        return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=False)


def _fit(tmp_path, name, max_epochs, ckpt_path=None):
    pl.seed_everything(0)
    model = OrderedNet("sgd", lr=0.05)
    callback = STR(s_init=-3.0, target=0.6, finetune_steps=8, lowrank=["rnn.weight_hh_l0"])
    saver = ModelCheckpoint(dirpath=tmp_path / name, every_n_epochs=1, save_top_k=-1, save_last=False,
                            filename="{epoch}")
    trainer = pl.Trainer(accelerator="cpu", max_epochs=max_epochs, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback, saver], default_root_dir=tmp_path)
    trainer.fit(model, ckpt_path=ckpt_path)
    return model, callback


@pytest.mark.parametrize("resume_epoch", [1, 4])  # 4 steps per epoch; the masks are fixed at step 16 of 24
def test_resume_from_a_checkpoint_gives_identical_results(tmp_path, resume_epoch):
    full, full_cb = _fit(tmp_path, "full", 6)
    ckpt = tmp_path / "full" / f"epoch={resume_epoch}.ckpt"
    state = torch.load(ckpt, weights_only=True)  # callback state is primitives only
    resumed, resumed_cb = _fit(tmp_path, "resumed", 6, ckpt_path=str(ckpt))
    phase = "finetune" if resume_epoch == 4 else "str"
    assert state["callbacks"][next(k for k in state["callbacks"] if k.startswith("STR"))]["phase"] == phase
    assert full_cb.fixed_at_step == resumed_cb.fixed_at_step == 16
    saved = state["state_dict"]
    assert any(k.endswith("_mask") for k in saved) == (phase == "finetune")
    assert not torch.equal(saved["head.weight" if phase == "finetune" else "head.parametrizations.weight.original"],
                           resumed.state_dict()["head.weight"])  # the resumed run did train
    full_state, resumed_state = full.state_dict(), resumed.state_dict()
    assert full_state.keys() == resumed_state.keys()
    for key in full_state:
        assert torch.equal(full_state[key], resumed_state[key]), key
    assert full_cb.state_dict() == resumed_cb.state_dict()


# --------------------------------------------------------------------------- trends on MNIST-1D


class SparsityTrace(Callback):
    """Global sparsity of the STR weights at the end of every epoch."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module):
        cb = next(c for c in trainer.callbacks if isinstance(c, STR))
        self.values.append(cb.metrics(pl_module)["str/sparsity"])


def _mnist1d_run(make_trainer, weight_decay: float, s_init: float, epochs: int = 6, **kwargs):
    pl.seed_everything(0)
    dm = MNIST1DDataModule(num_samples=2000, batch_size=64)
    model = Classifier(CNN1d((1, 40), 10), optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9,
                                                                                   weight_decay=weight_decay))
    callback, trace = STR(s_init=s_init, **kwargs), SparsityTrace()
    trainer = make_trainer(max_epochs=epochs, max_steps=-1, callbacks=[callback, trace], limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    return model, callback, trace.values


def test_sparsity_rises_with_weight_decay_and_falls_with_more_negative_s_init(make_trainer, data_cache):
    """METHODS Sec. 3: larger lambda -> more sparsity; more negative s_init -> less (two settings each)."""
    final = {}
    for decay, s_init in ((2e-3, -5.0), (1e-2, -5.0), (1e-2, -40.0)):
        _, _, trace = _mnist1d_run(make_trainer, decay, s_init)
        final[decay, s_init] = trace[-1]
        if (decay, s_init) == (1e-2, -5.0):
            assert trace[0] < trace[len(trace) // 2] < trace[-1], trace  # sparsity rises during training
    assert final[1e-2, -5.0] > final[2e-3, -5.0] + 0.1, final
    assert final[1e-2, -40.0] < final[1e-2, -5.0] - 0.1, final


def test_target_controller_reaches_the_requested_sparsity(tmp_path, data_cache):
    """`experiment=str_cnn1d_mnist1d` (STR(target=0.9), 12 epochs of the MNIST-1D CNN): the controller gets
    within 1 point of 90% before the masks are fixed, and the fix makes it exact."""
    from hydra import compose, initialize_config_dir

    from sparse_lightning.resources import config_dir
    from sparse_lightning.train import build

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"output_dir={tmp_path}", "experiment=str_cnn1d_mnist1d", "logger=none",
                                          "callbacks.progress=null", "+trainer.enable_progress_bar=false",
                                          "+trainer.enable_model_summary=false", "+callbacks.monitor.print_table=false"])
    run = build(cfg)
    run.trainer.fit(run.module, datamodule=run.datamodule)
    callback = next(c for c in run.callbacks if isinstance(c, STR))
    assert abs(callback.sparsity_before_fix - 0.9) <= 0.01, callback.sparsity_before_fix
    masks = get_masks(run.module)
    kept = sum(int(m.sum()) for m in masks.values())
    assert abs(1 - kept / sum(m.numel() for m in masks.values()) - 0.9) <= 1e-3
    assert all(torch.all(get_parameter(run.module, n)[~m] == 0) for n, m in masks.items())
    assert run.trainer.callback_metrics["val/acc"] > 0.9


# --------------------------------------------------------------------------- configs

FAST = ["trainer.max_steps=8", "trainer.max_epochs=2", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
        "callbacks.progress=null", "+trainer.enable_model_summary=false", "logger=csv", "data.num_samples=1000",
        "+callbacks.monitor.print_table=false"]


@pytest.mark.parametrize("experiment", ["str_cnn1d_mnist1d", "str_gru_mnist1d", "str_lowrank_gru_mnist1d"])
def test_str_experiments_train_a_few_steps(experiment, tmp_path, data_cache):
    from hydra import compose, initialize_config_dir

    from sparse_lightning.resources import config_dir
    from sparse_lightning.train import train

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"output_dir={tmp_path}", f"experiment={experiment}", *FAST])
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    if cfg.sparsity.target is not None:  # masks fixed at step 6 of 8, calibrated to the target
        assert metrics["sparsity/global"] == pytest.approx(cfg.sparsity.target, abs=1e-3)
    else:
        assert metrics["sparsity/global"] > 0.0
