"""``sparse-tune``: Ray Tune (Tuner + ASHA) over weight decay, ``s_init`` and targets of a sparse-train config.

    sparse-tune                                    # STR, MNIST-1D CNN: weight decay x s_init, best at >= 90%
    sparse-tune tune=str_pareto                    # accuracy-vs-sparsity front of STR
    sparse-tune tune=gmp tune.min_sparsity=0.95    # GMP: weight decay x target
    sparse-tune tune=str_target                    # STR: bisect the weight decay toward 90% sparsity
    sparse-tune tune.space.s_init.low=-20          # widen a range of the search space
    sparse-tune model=gru tune.num_samples=16      # any sparse-train override
    sparse-tune tune.address=auto                  # join a running Ray cluster instead of a local one

Local Ray by default (``tune.num_cpus``, default all cores). Each trial is a ``train(cfg)`` run in its
own directory under ``<run dir>/ray/``, logging to wandb offline, grouped per search. The run dir gets
``trials.csv``, ``trials.md``, ``best.json`` and ``pareto.png``. Needs the ``[tune]`` extra.
"""

from __future__ import annotations


import hydra
from omegaconf import DictConfig

from sparse_lightning.cli import train as train_cli
from sparse_lightning.cli.train import compose_config
from sparse_lightning.errors import ConfigError
from sparse_lightning.resources import config_dir

CONFIG_NAME = "tune"


def fail(message: str) -> None:
    train_cli.fail(message, "sparse-tune")


def precheck(overrides: list[str]) -> None:
    """Compose this command line's config; check the search settings and the train config it holds."""
    from sparse_lightning.tune.search import TuneSettings, get_path, resolve_train_config

    cfg = compose_config(CONFIG_NAME, overrides)
    settings = TuneSettings.from_config(cfg.get("tune"))
    base = resolve_train_config(cfg)
    for name in settings.space:
        for path in settings.paths(name):
            get_path(base, path)


@hydra.main(config_path=str(config_dir()), config_name=CONFIG_NAME, version_base="1.3")
def _run(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from sparse_lightning.tune.search import markdown_table, run_search

    try:
        result = run_search(cfg, HydraConfig.get().runtime.output_dir)
    except ConfigError as exc:
        fail(str(exc))
    if result.rows:
        print(markdown_table(result.rows, list(result.rows[0])))
    if result.best is None:
        wanted = (f"within tune.tolerance={cfg.tune.tolerance} of tune.target_sparsity={cfg.tune.target_sparsity}"
                  if cfg.tune.objective == "target" else f"tune.min_sparsity={cfg.tune.min_sparsity}")
        print(f"sparse-tune: no trial reached {wanted}; see {result.files['csv']}")
        return None
    shown = {k: v for k, v in result.best.items() if k not in ("status", "pareto")}
    print("best configuration: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    print("outputs: " + ", ".join(result.files.values()))
    return result.best["objective"]


def main() -> None:
    train_cli.checked_main("sparse-tune", precheck, _run)


if __name__ == "__main__":
    main()
