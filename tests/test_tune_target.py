"""sparse-tune toward a requested sparsity (``tune=str_target``): log-space bisection of the weight decay."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sparse_lightning import ConfigError
from sparse_lightning.resources import config_dir
from sparse_lightning.tune.bisect import interior_points, narrow
from sparse_lightning.tune.search import TuneSettings, choose_best


def compose_tune(overrides=()):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("tune", overrides=["tune=str_target", *overrides])


def test_interior_points_split_the_bracket_evenly_in_log_space():
    assert interior_points(0.001, 0.1, 1) == pytest.approx([0.01])
    assert interior_points(0.001, 1.0, 2) == pytest.approx([0.01, 0.1])


def test_narrow_keeps_the_values_around_the_target():
    trials = [(0.004, 0.70), (0.008, 0.88), (0.016, 0.93), (0.03, 0.97)]
    assert narrow(0.002, 0.05, trials, target=0.9) == (0.008, 0.016)
    assert narrow(0.002, 0.05, trials, target=0.99) == (0.03, 0.05)  # all below: the upper end stays
    assert narrow(0.002, 0.05, trials, target=0.5) == (0.002, 0.004)  # all above: the lower end stays
    assert narrow(0.002, 0.01, trials, target=0.9) == (0.008, 0.01)  # values outside the bracket are ignored
    assert narrow(0.002, 0.05, [(0.01, math.nan)], target=0.9) == (0.002, 0.05)  # a failed trial tells nothing


def test_best_is_the_most_accurate_within_tolerance():
    settings = TuneSettings.from_config(compose_tune(["tune.tolerance=0.02"]).tune)
    rows = [{"val/acc": a, "sparsity": s, "objective": a, "status": "ok"}
            for a, s in [(0.99, 0.80), (0.97, 0.89), (0.96, 0.915), (0.98, 0.93)]]
    assert choose_best(rows, settings) is rows[1]
    assert choose_best(rows[:1], settings) is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["tune.scheduler=asha"], "objective=target judges each trial's final sparsity; use tune.scheduler=fifo"),
        (["tune.target_sparsity=1.2"], r"tune.target_sparsity, tune.tolerance: must be in \(0, 1\)"),
        (["+tune.space.s_init={path: sparsity.s_init, type: uniform, low: -9, high: -3}"],
         r"bisects one loguniform entry .* got \['loguniform', 'uniform'\]"),
        (["tune.rounds=0"], "tune.rounds: must be >= 1"),
    ],
)
def test_bad_target_settings_fail_with_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        TuneSettings.from_config(compose_tune(overrides).tune)


@pytest.mark.slow
def test_bisection_narrows_the_weight_decay_over_rounds_on_local_ray(tmp_path, data_cache):
    """2 rounds x 2 trials of 2 epochs: round 1 searches inside the bracket round 0 left, sparsity rises with λ."""
    run_dir = tmp_path / "run"
    exe = Path(sys.executable).with_name("sparse-tune")
    env = {**os.environ, "SPARSE_LIGHTNING_DATA": str(data_cache), "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run(
        [str(exe), "tune=str_target", "tune.rounds=2", "trainer.max_epochs=2", "data.num_samples=2000",
         "tune.num_cpus=2", "tune.target_sparsity=0.5", "tune.tolerance=0.45", "logger=none",
         "tune.space.weight_decay.low=0.001", "tune.space.weight_decay.high=0.1", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((run_dir / "trials.csv").read_text().splitlines()))
    assert [int(r["round"]) for r in rows] == [0, 0, 1, 1] and all(r["status"] == "ok" for r in rows)
    first = sorted((float(r["weight_decay"]), float(r["sparsity"])) for r in rows[:2])
    assert [v for v, _ in first] == pytest.approx([0.001 * 10 ** (2 / 3), 0.001 * 10 ** (4 / 3)])
    assert first[0][1] < first[1][1]  # more decay, more sparsity
    low, high = narrow(0.001, 0.1, first, 0.5)
    second = sorted(float(r["weight_decay"]) for r in rows[2:])
    assert second == pytest.approx(interior_points(low, high, 2))
    best = json.loads((run_dir / "best.json").read_text())["best"]
    assert best is not None and abs(float(best["sparsity"]) - 0.5) <= 0.45
    assert "best configuration: round=" in proc.stdout
