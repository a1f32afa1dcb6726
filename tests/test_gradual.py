"""GradualPruning (Zhu & Gupta cubic, Narang threshold ramp) on a plain user LightningModule."""

from __future__ import annotations

import csv

import pytest
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger

from helpers import TinyNet
from sparse_lightning import ConfigError, get_masks
from sparse_lightning.callbacks import GradualPruning
from sparse_lightning.criteria import magnitude_quantile, threshold_masks
from sparse_lightning.masks import get_parameter
from sparse_lightning.schedules import cubic_sparsity, narang_threshold

TYPES = {"conv.weight": "conv", "rnn.weight_ih_l0": "recurrent", "rnn.weight_hh_l0": "recurrent", "head.weight": "linear"}


class MaskProbe(Callback):
    """Placed after the pruner: records masks (and weights) at the start of every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.masks: list[dict[str, torch.Tensor]] = []
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.steps and self.steps[-1] == trainer.global_step:
            return
        self.steps.append(trainer.global_step)
        self.masks.append({n: m.clone() for n, m in get_masks(pl_module).items()})
        self.weights.append({n: get_parameter(pl_module, n).detach().clone() for n in get_masks(pl_module)})


def read_metrics(logger: CSVLogger, key: str) -> dict[int, float]:
    rows = list(csv.DictReader(open(f"{logger.log_dir}/metrics.csv")))
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


def test_cubic_schedule_per_layer_type_on_optimizer_steps(make_trainer, tmp_path):
    layers = {"conv": {"target": 0.5}, "recurrent": {"target": 0.8}, "linear": {"target": 0.6, "initial": 0.1}}
    pruner = GradualPruning("cubic", layers, start_step=2, end_step=14, every=4)
    probe, logger = MaskProbe(), CSVLogger(tmp_path, name="csv")
    # 3 micro-batches per optimizer step: the schedule must count optimizer steps, not batches
    trainer = make_trainer(max_steps=20, accumulate_grad_batches=3, logger=logger, log_every_n_steps=1,
                           callbacks=[pruner, probe])
    trainer.fit(TinyNet("adamw"))
    assert probe.steps == list(range(20))
    for step, masks in zip(probe.steps, probe.masks):
        for name, mask in masks.items():
            kind = TYPES[name]
            s = cubic_sparsity(step, layers[kind]["target"], 2, 14, 4, layers[kind].get("initial", 0.0))
            assert int((~mask).sum()) == round(s * mask.numel()), (step, name)
    for before, after in zip(probe.masks, probe.masks[1:]):  # masks only shrink
        assert all(torch.all(after[n] <= before[n]) for n in before)
    target, measured = read_metrics(logger, "sparsity/target"), read_metrics(logger, "sparsity/global")
    assert sorted(target) == list(range(20))  # one point per optimizer step
    assert target[19] == pytest.approx(measured[19], abs=2e-3)
    assert target[6] == pytest.approx(pruner.target_at(6)) and 0 < target[6] < target[10] < target[14]
    assert read_metrics(logger, "sparsity/type/conv")[19] == pytest.approx(0.5, abs=0.01)


def test_narang_threshold_ramp_prunes_below_epsilon(make_trainer, tmp_path):
    layers = {"recurrent": {"q": 0.3}, "linear": {"q": 0.2}}
    pruner = GradualPruning("narang", layers, start_step=1, ramp_step=9, end_step=19, every=2)
    probe, logger = MaskProbe(), CSVLogger(tmp_path, name="csv")
    trainer = make_trainer(max_steps=24, logger=logger, log_every_n_steps=1, callbacks=[pruner, probe])
    trainer.fit(TinyNet())
    updates = [s for s in probe.steps if 1 < s < 19 and s % 2 == 0]
    assert updates == [2, 4, 6, 8, 10, 12, 14, 16, 18]
    # Between consecutive probes the weights move once; the update at step s prunes |w| <= eps(s).
    for i, step in enumerate(probe.steps[1:], start=1):
        if step not in updates:
            assert all(torch.equal(probe.masks[i][n], probe.masks[i - 1][n]) for n in probe.masks[i])
            continue
        # weights the pruner saw at `step` = the probe's weights at `step` for kept entries
        assert "conv.weight" not in probe.masks[i]  # type not configured: no mask, stays dense
        for name, kind in TYPES.items():
            if kind == "conv":
                continue
            mask = probe.masks[i][name]
            eps = narang_threshold(step, layers[kind]["q"], 1, 9, 19, 2)
            expected = threshold_masks({name: probe.weights[i][name]}, {name: eps}, {name: probe.masks[i - 1][name]})
            assert torch.equal(mask, expected[name]), (step, name)
    assert "conv.weight" not in pruner.targets
    thresholds = read_metrics(logger, "sparsity/threshold/recurrent")
    assert thresholds[18] == pytest.approx(narang_threshold(18, 0.3, 1, 9, 19, 2))
    assert thresholds[18] == pytest.approx(0.3, rel=0.1)  # epsilon ends near q


def test_narang_q_from_a_quantile_is_measured_once_and_kept_in_state(make_trainer):
    pruner = GradualPruning("narang", {"recurrent": {"target": 0.9}}, start_step=3, ramp_step=6, end_step=12, every=2)
    probe = MaskProbe()
    make_trainer(max_steps=14, callbacks=[pruner, probe]).fit(TinyNet())
    first = probe.steps.index(4)  # the first update (start_step < itr, itr % 2 == 0)
    names = ["rnn.weight_ih_l0", "rnn.weight_hh_l0"]
    state = pruner.state_dict()
    assert set(state["q"]) == {"recurrent"}
    # the probe sees step 4's weights after the first prune, which zeroed only |w| <= eps < q:
    # the 90% quantile is unchanged by it
    assert state["q"]["recurrent"] == pytest.approx(magnitude_quantile([probe.weights[first][n] for n in names], 0.9))
    assert all(isinstance(v, (int, float, str, dict, type(None))) for v in state.values())
    restored = GradualPruning("narang", {"recurrent": {"target": 0.9}}, start_step=3, ramp_step=6, end_step=12, every=2)
    restored.load_state_dict(state)
    assert restored.state_dict()["q"] == state["q"] and restored.state_dict()["last_update"] == state["last_update"]


def test_two_schedules_side_by_side_keep_separate_state(make_trainer, tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    cubic = GradualPruning("cubic", {"conv": {"target": 0.5}}, start_step=0, end_step=4, every=2)
    narang = GradualPruning("narang", {"recurrent": {"q": 0.2}}, start_step=0, end_step=8, every=2)
    assert cubic.state_key != narang.state_key
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    make_trainer(max_steps=10, enable_checkpointing=True, callbacks=[cubic, narang, ckpt]).fit(TinyNet())
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"]
    assert saved[cubic.state_key]["schedule"] == "cubic" and saved[narang.state_key]["q"] == {"recurrent": 0.2}


def test_fractional_steps_resolve_against_the_run(make_trainer):
    pruner = GradualPruning("cubic", {"linear": {"target": 0.5}}, start_step=0.25, end_step=0.75, every=1)
    make_trainer(max_steps=40, callbacks=[pruner]).fit(TinyNet())
    assert pruner.state_dict()["steps"] == {"linear": [10, 20, 30, 1]}


def test_schedule_past_the_end_of_training_warns(make_trainer):
    with pytest.warns(UserWarning, match="before the schedule's end_step 100"):
        make_trainer(max_steps=5, callbacks=[GradualPruning("cubic", start_step=0, end_step=100, every=10)]).fit(TinyNet())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(schedule="linear"), "schedule must be 'cubic' or 'narang'"),
        (dict(layers={"dense": {"target": 0.5}}), "unknown layer type 'dense'; allowed: conv, linear, recurrent, embedding"),
        (dict(layers={"linear": {"target": 1.5}}), r"layers.linear.target must be a number in \[0, 1\)"),
        (dict(layers={"linear": {"q": 0.1}}), "layers.linear.q: unknown setting for schedule 'cubic'"),
        (dict(layers={"linear": {"target": 0.5, "initial": 0.6}}), "initial sparsity 0.6 exceeds target 0.5"),
        (dict(schedule="narang", layers={"linear": {"q": 0.1, "target": 0.9}}), "exactly one of q"),
        (dict(schedule="narang", layers={"linear": {"q": -1}}), "layers.linear.q must be a number > 0"),
        (dict(start_step=50, end_step=10), "need 0 <= start_step < end_step"),
        (dict(schedule="narang", start_step=10, ramp_step=90, end_step=50), "start_step <= ramp_step <= end_step"),
        (dict(ramp_step=5), "ramp_step is a setting of the 'narang' schedule only"),
        (dict(every=0), "every must be an integer >= 1"),
        (dict(end_step=1.5), "end_step as a float is a fraction"),
    ],
)
def test_bad_arguments_fail_in_the_constructor(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        GradualPruning(**kwargs)


def test_no_weights_of_the_configured_types(make_trainer):
    with pytest.raises(ConfigError, match="no weights of the configured layer types"):
        make_trainer(callbacks=[GradualPruning(layers={"embedding": {"target": 0.5}}, end_step=10, every=1)]).fit(TinyNet())


# --------------------------------------------------------------------------- DDP and torch.compile

class PerturbRankOne(Callback):
    """Rank 1's weights drift from rank 0's every step, so only the broadcast can keep masks equal."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == 1:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.add_(0.01 * torch.randn_like(p))


class GatherDigests(Callback):
    """After the pruner, at every step: all-gather (step, mask digest) and assert one value (in each worker)."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        from sparse_lightning import mask_digest

        digest = mask_digest(pl_module)
        gathered = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, (trainer.global_step, digest))
        assert len(set(gathered)) == 1, gathered
        self.seen = getattr(self, "seen", [])
        if not self.seen or self.seen[-1] != digest:
            self.seen.append(digest)

    def on_fit_end(self, trainer, pl_module):
        if trainer.global_rank == 0:
            with open(self.out, "w") as f:
                f.write(str(len(self.seen) - 1))  # number of mask changes, all checked equal on both ranks


@pytest.mark.parametrize("method", ["narang", "iterative"])
def test_ddp_masks_identical_across_ranks_after_every_pruning_step(make_trainer, tmp_path, method):
    from sparse_lightning.callbacks import IterativePruning

    pruner = (GradualPruning("narang", {"recurrent": {"target": 0.9}, "linear": {"target": 0.8}, "conv": {"target": 0.5}},
                             start_step=1, ramp_step=6, end_step=12, every=2) if method == "narang"
              else IterativePruning(0.6, dense_steps=2, retrain_steps=3, rounds=3))
    out = tmp_path / "changes.txt"
    trainer = make_trainer(devices=2, strategy="ddp_spawn", max_steps=14,
                           callbacks=[PerturbRankOne(), pruner, GatherDigests(str(out))])
    trainer.fit(TinyNet("sgd"))
    assert int(out.read_text()) >= 3  # several pruning steps, each checked on both ranks


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cubic", "iterative"])
def test_callbacks_work_on_a_torch_compiled_model(make_trainer, method):
    from sparse_lightning.callbacks import IterativePruning

    torch.manual_seed(0)
    model = TinyNet("adamw")
    pruner = (GradualPruning("cubic", {"conv": {"target": 0.5}, "recurrent": {"target": 0.8}, "linear": {"target": 0.7}},
                             start_step=2, end_step=10, every=2) if method == "cubic"
              else IterativePruning(0.7, dense_steps=3, retrain_steps=3, rounds=3))
    probe = MaskProbe()
    compiled = torch.compile(model)
    make_trainer(max_steps=14, callbacks=[pruner, probe]).fit(compiled)
    assert model._compiler_ctx is not None  # Lightning trained through the compiled forward/training_step
    masks = get_masks(model)
    assert set(masks) == set(TYPES)
    assert len({tuple(int(m.sum()) for m in step.values()) for step in probe.masks}) >= 3  # pruned while compiled
    for name, mask in masks.items():
        assert torch.all(get_parameter(model, name)[~mask] == 0), name
    if method == "cubic":
        assert int((~masks["rnn.weight_hh_l0"]).sum()) == round(0.8 * masks["rnn.weight_hh_l0"].numel())
    x = torch.randn(5, 1, 12)
    model.eval()
    torch.testing.assert_close(compiled(x), model(x))  # the compiled graph sees the pruned weights


# --------------------------------------------------------------------------- experiment configs

FAST = ["trainer.max_steps=8", "trainer.max_epochs=2", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
        "callbacks.progress=null", "+trainer.enable_model_summary=false", "logger=csv", "+callbacks.monitor.print_table=false"]
PAPER_TRENDS = ("han_", "gmp_", "narang_", "oneshot_")  # the experiments of this module's methods


def _experiments(prefixes: tuple[str, ...] = ("",)) -> list[str]:
    from sparse_lightning.resources import config_dir

    return sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml") if p.stem.startswith(prefixes))


def _compose(experiment: str, tmp_path, overrides=()):
    from hydra import compose, initialize_config_dir

    from sparse_lightning.resources import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=[f"output_dir={tmp_path}", f"experiment={experiment}", *overrides])


@pytest.mark.parametrize("experiment", _experiments())
def test_every_experiment_composes_and_validates(experiment, tmp_path):
    from sparse_lightning.config import validate
    from sparse_lightning.resources import config_dir

    assert (config_dir() / "experiment" / f"{experiment}.yaml").read_text().startswith("# @package _global_")
    validate(_compose(experiment, tmp_path))


@pytest.mark.parametrize("experiment", _experiments(PAPER_TRENDS))
def test_pruning_experiments_train_a_few_steps(experiment, tmp_path, data_cache):
    from sparse_lightning.train import train

    cfg = _compose(experiment, tmp_path, FAST)
    if cfg.data._target_.endswith("MNIST1DDataModule"):
        cfg.data.num_samples = 1000
    if "every" in cfg.sparsity:
        cfg.sparsity.every = 1  # the schedule's updates must fall inside 8 steps
    if "at_epoch" in cfg.sparsity:
        cfg.sparsity.at_epoch = 1
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert metrics["sparsity/global"] > 0.0


def test_dense_override_of_a_pruning_experiment_fails_before_training(tmp_path):
    from sparse_lightning.train import build

    cfg = _compose("han_mlp_digits", tmp_path, ["sparsity=dense"])
    with pytest.raises(ConfigError, match="sparsity"):
        build(cfg)
