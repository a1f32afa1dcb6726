"""sparse-tune: search settings, config plumbing, outputs; a real 4-trial search on local Ray (slow)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sparse_lightning import ConfigError
from sparse_lightning.resources import config_dir
from sparse_lightning.tune.report import objective
from sparse_lightning.tune.search import (
    TRIAL_DIR,
    TuneSettings,
    pareto_front,
    resolve_train_config,
    trial_config,
    write_outputs,
)


def compose_tune(overrides=()):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("tune", overrides=list(overrides))


def test_objective_penalizes_the_sparsity_shortfall():
    assert objective(0.95, 0.92, "min_sparsity", 0.9) == 0.95
    assert objective(0.95, 0.80, "min_sparsity", 0.9) == pytest.approx(0.85)
    assert objective(0.95, 0.10, "pareto", 0.9) == 0.95


def test_pareto_front_keeps_the_non_dominated_points():
    points = [(0.5, 0.99), (0.9, 0.97), (0.8, 0.96), (0.95, 0.90), (0.95, 0.85)]
    assert pareto_front(points) == [0, 1, 3]


@pytest.mark.parametrize("option", sorted(p.stem for p in (config_dir() / "tune").glob("*.yaml")))
def test_every_tune_option_resolves_to_a_plain_validated_train_config(option):
    cfg = compose_tune([f"tune={option}"])
    settings = TuneSettings.from_config(cfg.tune)
    base = resolve_train_config(cfg)
    text = json.dumps(base)
    assert "${" not in text and "tune" not in base  # nothing left for a worker to resolve
    assert base["output_dir"] == TRIAL_DIR and base["callbacks"]["checkpoint"]["dirpath"] == f"{TRIAL_DIR}/checkpoints"
    params = {name: (spec.get("values") or [spec.get("low")])[0] for name, spec in settings.space.items()}
    trial = trial_config(base, params, settings, "/runs/t1", "t1", "search-1")
    assert trial["output_dir"] == "/runs/t1" and "{trial_dir}" not in json.dumps(trial)
    assert trial["callbacks"]["tune_report"]["_target_"] == "sparse_lightning.tune.report.TuneReport"
    assert trial["logger"]["group"] == "search-1" and trial["logger"]["name"] == "t1"
    for name in settings.space:
        for path in settings.paths(name):
            node = trial
            for key in path.split("."):
                node = node[key]
            assert node == params[name]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["tune.num_samples=0"], "tune.num_samples: must be >= 1"),
        (["tune.objective=pareto"], "tune.scheduler: ASHA stops trials on one number"),
        (["+tune.space.s_init.step=1"], r"tune.space.s_init: unknown keys \['step'\]"),
        (["tune.space.s_init.type=normal"], "tune.space.s_init.type: must be one of"),
        (["~tune.space.s_init.path"], "tune.space.s_init: a uniform entry needs path"),
        (["+tune.colour=red"], "tune.colour: unknown key"),
        (["tune.min_sparsity=high"], "tune.min_sparsity: expected a number"),
    ],
)
def test_bad_search_settings_fail_with_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        TuneSettings.from_config(compose_tune(overrides).tune)


def test_unknown_search_path_fails_before_ray_starts(capsys):
    from sparse_lightning.cli.tune import precheck

    with pytest.raises(ConfigError, match="'sparsity.s_inti' is not a key of the train config"):
        precheck(["tune.space.s_init.path=sparsity.s_inti"])


def test_outputs_table_best_and_plot(tmp_path):
    settings = TuneSettings(space={"s_init": {"path": "sparsity.s_init", "type": "uniform", "low": -9, "high": -3}})
    rows = [{"trial": f"t{i}", "s_init": -5.0, "epochs": 2, "val/acc": a, "sparsity": s,
             "objective": objective(a, s, "min_sparsity", 0.9), "status": "ok"}
            for i, (a, s) in enumerate([(0.99, 0.5), (0.97, 0.92), (0.95, 0.95), (0.90, 0.91)])]
    result = write_outputs(rows, settings, tmp_path)
    assert result.best["trial"] == "t1"  # most accurate at >= 90%
    assert result.front == [0, 1, 2]
    table = list(csv.DictReader(open(tmp_path / "trials.csv")))
    assert [r["trial"] for r in table] == ["t0", "t1", "t2", "t3"] and table[3]["pareto"] == "False"
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    assert json.loads((tmp_path / "best.json").read_text())["best"]["trial"] == "t1"


def _wandb_groups(run_dir: Path) -> list[str]:
    from sparse_lightning.wandb_offline import _records

    (path,) = run_dir.glob("run-*.wandb")
    return [r.run.run_group for r in _records(path) if r.WhichOneof("record_type") == "run"]


@pytest.mark.slow
def test_sparse_tune_runs_four_trials_on_local_ray(tmp_path, data_cache):
    """`sparse-tune` with 4 trials of 2 epochs on local Ray: reports the best, saves the trials to disk."""
    run_dir = tmp_path / "run"
    exe = Path(sys.executable).with_name("sparse-tune")
    env = {**os.environ, "SPARSE_LIGHTNING_DATA": str(data_cache), "RAY_AUTH_MODE": "disabled"}
    start = time.monotonic()
    proc = subprocess.run(
        [str(exe), "tune.num_samples=4", "trainer.max_epochs=2", "data.num_samples=2000", "tune.num_cpus=2",
         "tune.grace_period=1", "tune.min_sparsity=0.05", "tune.space.s_init.low=-4.0", "tune.space.s_init.high=-3.0",
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 300
    assert "best configuration: trial=trial_" in proc.stdout
    rows = list(csv.DictReader(open(run_dir / "trials.csv")))
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert all(1 <= int(r["epochs"]) <= 2 for r in rows)
    best = json.loads((run_dir / "best.json").read_text())["best"]
    assert float(best["sparsity"]) >= 0.05 and best["trial"] in {r["trial"] for r in rows}
    assert (run_dir / "pareto.png").exists() and (run_dir / "trials.md").read_text().startswith("| trial |")
    runs = sorted((run_dir / "ray").glob("*/trial_*/wandb/offline-run-*"))
    assert len(runs) == 4  # one wandb run per trial ...
    groups = [g for r in runs for g in _wandb_groups(r)]  # (Ray kills a trial ASHA stops: its run may be empty)
    assert len(groups) >= 1 and len(set(groups)) == 1  # ... grouped per search
