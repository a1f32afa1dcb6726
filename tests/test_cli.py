"""`sparse-train` end to end: bad input gives one line and exit 2; wandb offline runs hold the metrics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sparse_lightning.cli.train import main
from sparse_lightning.wandb_offline import read_history

TINY = ["trainer.max_epochs=2", "sparsity.at_epoch=1", "callbacks.progress=null",
        "+trainer.enable_model_summary=false"]

BAD = [
    (["model=foo"], "Could not find 'model/foo'; available: cnn1d, efficientnet_b0, gru, lenet5, mlp, mobilenet_v2, "
                    "mobilenet_v3_small, resnet20"),
    (["logger=nope"], "Could not find 'logger/nope'"),
    (["sparsity.tagret=0.9"], "Could not override 'sparsity.tagret'. It is not in the config"),
    (["+sparsity.tagret=0.9"], "sparsity.tagret: unknown key for sparse_lightning.MagnitudePruning"),
    (["sparsity.target=1.2"], "sparsity: target must be a number in [0, 1), got 1.2"),
    (["sparsity.at_epoch=-1"], "sparsity: at_epoch must be an integer >= 0, got -1"),
    (["sparsity.scope=row"], "sparsity.scope: must be one of 'global', 'layer', got 'row'"),
    (["model.optimizer.lr=-0.1"], "model.optimizer: Invalid learning rate: -0.1"),
    (["sparsity.include=[nothing.*]"], "sparsity: no prunable weights in Classifier"),
    (["data=cifar10", "data.data_dir=/no/such/cifar"], "data: CIFAR-10 directory not found: /no/such/cifar"),
    (["data.batch_size=0"], "data: batch_size must be an integer >= 1, got 0"),
    (["model=lenet5"], "model.net: LeNet5 expects"),
    (["seed=abc"], "seed: Value 'abc' of type 'str' could not be converted to Integer"),
    (["trainer.max_epochs=-5"], "trainer: MisconfigurationException"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, monkeypatch, capsys, data_cache):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["sparse-train", *TINY, "logger=csv", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sparse-train: error: "), err
    assert message in err[0]
    assert "provider=" not in err[0]  # no Hydra search-path dump
    assert not list(tmp_path.rglob("*.ckpt")), "no training may start"


def test_real_process_exit_code_and_single_line(tmp_path):
    exe = Path(sys.executable).with_name("sparse-train")
    out = subprocess.run([str(exe), "sparsity.target=1.2"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == "sparse-train: error: sparsity: target must be a number in [0, 1), got 1.2"


def test_sparse_tune_real_process_fails_with_one_line_before_ray_starts(tmp_path):
    exe = Path(sys.executable).with_name("sparse-tune")
    out = subprocess.run([str(exe), "tune.num_samples=-3"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == "sparse-tune: error: tune.num_samples: must be >= 1, got -3"
    assert not any(tmp_path.iterdir()), "nothing may run"


def test_wandb_offline_run_holds_sparsity_and_accuracy(tmp_path, monkeypatch, data_cache):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setattr(sys, "argv", ["sparse-train", *TINY, "data.num_samples=600", "logger=wandb", f"hydra.run.dir={tmp_path}/run"])
    main()
    (run_dir,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    history = read_history(run_dir)
    sparsity = [row["sparsity/global"] for row in history if "sparsity/global" in row]
    assert sparsity and sparsity[-1] == pytest.approx(0.9, abs=1e-3)
    assert any("sparsity/layer/net.features.0.weight" in row for row in history)
    test_acc = [row["test/acc"] for row in history if "test/acc" in row]
    assert len(test_acc) == 1 and 0.0 < test_acc[0] <= 1.0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_nan_loss_stops_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["sparse-train", *TINY, "logger=csv", "data=synthetic", "+data.noise=nan"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sparse-train: error: training loss is nan at step 0: lower the learning rate or check the data "
                   "(the last checkpoint is kept)"]


@pytest.mark.slow
def test_ddp_trainer_config_runs_two_processes(tmp_path, data_cache):
    """`trainer=ddp` through the real CLI: Lightning launches rank 1 as a second process (gloo)."""
    exe = Path(sys.executable).with_name("sparse-train")
    argv = [str(exe), "trainer=ddp", "trainer.devices=2", "trainer.max_epochs=2", "sparsity.at_epoch=1",
            "data.num_samples=1000", "logger=csv", "callbacks.progress=null", f"hydra.run.dir={tmp_path}/run"]
    out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in out.stderr + out.stdout
    import torch

    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    masks = [v for k, v in state.items() if k.endswith("_mask")]
    pruned = sum(int((~m).sum()) for m in masks)
    assert pruned == round(0.9 * sum(m.numel() for m in masks))
