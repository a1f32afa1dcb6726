"""A Ray Tune search (Tuner + ASHA) over a composed ``sparse-train`` config, and its outputs.

The search space maps names (table columns) to ``{path, type, ...}``: ``path`` is a dotted key of the
train config (or a list of keys that get the same value), ``type`` one of :data:`SAMPLERS`. The
driver resolves the train config to a plain dict once (no ``${hydra:...}`` or other
interpolation left; paths under ``output_dir`` hold a token each trial replaces with its own
directory), validates it, and hands it to the trials with ``tune.with_parameters``. Each trial sets
the sampled values at their dotted paths, adds :class:`~sparse_lightning.tune.report.TuneReport`
to the callbacks, groups its wandb run under the search, and calls
:func:`sparse_lightning.train.train`. The driver writes ``trials.csv``, ``trials.md``, ``best.json``
and ``pareto.png`` (accuracy vs sparsity, the Pareto front marked).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf

from sparse_lightning.config import type_problem, validate
from sparse_lightning.errors import ConfigError

TRIAL_DIR = "{trial_dir}"  # stands for each trial's own directory in the resolved config
SAMPLERS = {"loguniform": ("low", "high"), "uniform": ("low", "high"), "randint": ("low", "high"),
            "choice": ("values",), "grid": ("values",)}


@dataclass
class TuneSettings:
    """The ``tune:`` node of ``conf/tune.yaml`` (see conf/tune/*.yaml for the options)."""

    name: str = "search"
    num_samples: int = 8
    objective: Literal["min_sparsity", "pareto", "target"] = "min_sparsity"
    min_sparsity: float = 0.9
    target_sparsity: float = 0.9
    tolerance: float = 0.01
    rounds: int = 3
    metric: str = "val/acc"
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = 1
    reduction_factor: int = 2
    max_concurrent: int = 2
    cpus_per_trial: int = 1
    num_cpus: int | None = None
    address: str | None = None
    storage: str | None = None
    seed: int = 0
    space: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, node: Any) -> TuneSettings:
        values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
        known = [f.name for f in fields(cls)]
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"tune.{key}: unknown key; allowed: {', '.join(known)}")
            problem = type_problem(value, _HINTS[key])
            if problem:
                raise ConfigError(f"tune.{key}: {problem}")
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        for key in ("num_samples", "grace_period", "reduction_factor", "max_concurrent", "cpus_per_trial", "rounds"):
            if getattr(self, key) < 1:
                raise ConfigError(f"tune.{key}: must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.min_sparsity < 1.0:
            raise ConfigError(f"tune.min_sparsity: must be in [0, 1), got {self.min_sparsity}")
        if self.objective == "pareto" and self.scheduler == "asha":
            raise ConfigError("tune.scheduler: ASHA stops trials on one number and would cut one end of the "
                              "Pareto front; use tune.scheduler=fifo with tune.objective=pareto")
        if not self.space:
            raise ConfigError("tune.space: empty; give at least one {path, type, ...} entry")
        if self.objective == "target":
            self._check_target()
        for name, spec in self.space.items():
            kind = spec.get("type") if isinstance(spec, dict) else None
            if kind not in SAMPLERS:
                raise ConfigError(f"tune.space.{name}.type: must be one of {', '.join(SAMPLERS)}, got {kind!r}")
            missing = [k for k in ("path", *SAMPLERS[kind]) if k not in spec]
            if missing:
                raise ConfigError(f"tune.space.{name}: a {kind} entry needs {', '.join(missing)}")
            extra = set(spec) - {"type", "path", *SAMPLERS[kind]}
            if extra:
                raise ConfigError(f"tune.space.{name}: unknown keys {sorted(extra)}; allowed: path, type, "
                                  f"{', '.join(SAMPLERS[kind])}")

    def _check_target(self) -> None:
        if self.scheduler != "fifo":
            raise ConfigError("tune.scheduler: objective=target judges each trial's final sparsity; use tune.scheduler=fifo")
        if not 0.0 < self.target_sparsity < 1.0 or not 0.0 < self.tolerance < 1.0:
            raise ConfigError(f"tune.target_sparsity, tune.tolerance: must be in (0, 1), got "
                              f"{self.target_sparsity}, {self.tolerance}")
        kinds = [spec.get("type") for spec in self.space.values()]
        if kinds != ["loguniform"]:
            raise ConfigError(f"tune.space: objective=target bisects one loguniform entry (e.g. the weight decay), got {kinds}")

    def paths(self, name: str) -> list[str]:
        """The dotted train-config paths a searched value is written to (one or several)."""
        path = self.space[name]["path"]
        return [path] if isinstance(path, str) else list(path)


_HINTS = {
    "name": str, "num_samples": int, "objective": Literal["min_sparsity", "pareto", "target"], "min_sparsity": float,
    "target_sparsity": float, "tolerance": float, "rounds": int,
    "metric": str, "scheduler": Literal["asha", "fifo"], "grace_period": int, "reduction_factor": int,
    "max_concurrent": int, "cpus_per_trial": int, "num_cpus": int | None, "address": str | None,
    "storage": str | None, "seed": int, "space": dict,
}


# --------------------------------------------------------------------------- config plumbing


def get_path(cfg: dict[str, Any], path: str) -> Any:
    node: Any = cfg
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            raise ConfigError(f"tune.space: {path!r} is not a key of the train config (at {key!r})")
        node = node[key]
    return node


def set_path(cfg: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = cfg
    for key in parents:
        node = node[key]
    node[leaf] = value


def resolve_train_config(cfg: DictConfig) -> dict[str, Any]:
    """The train part of a composed tune config as a validated plain dict (``output_dir`` = :data:`TRIAL_DIR`)."""
    train = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "tune"])
    train.output_dir = TRIAL_DIR
    container = validate(train)  # resolves every interpolation; fails here, before Ray starts
    return container


def fill_trial_dir(node: Any, trial_dir: str) -> Any:
    """Replace :data:`TRIAL_DIR` in every string of a plain config."""
    if isinstance(node, dict):
        return {k: fill_trial_dir(v, trial_dir) for k, v in node.items()}
    if isinstance(node, list):
        return [fill_trial_dir(v, trial_dir) for v in node]
    return node.replace(TRIAL_DIR, trial_dir) if isinstance(node, str) else node


def trial_config(base: dict[str, Any], params: dict[str, Any], settings: TuneSettings, trial_dir: str,
                 trial_name: str, group: str) -> dict[str, Any]:
    """The plain train config of one trial: sampled values set, reporting added, wandb grouped."""
    cfg = fill_trial_dir(copy.deepcopy(base), trial_dir)
    for name, value in params.items():
        for path in settings.paths(name):
            set_path(cfg, path, value)
    cfg.setdefault("callbacks", {})
    cfg["callbacks"]["progress"] = None  # no live progress bars in worker logs
    mode = "pareto" if settings.objective == "target" else settings.objective  # target: the driver judges the trials
    cfg["callbacks"]["tune_report"] = {"_target_": "sparse_lightning.tune.report.TuneReport", "metric": settings.metric,
                                       "mode": mode, "min_sparsity": settings.min_sparsity}
    if isinstance(cfg["callbacks"].get("monitor"), dict):
        cfg["callbacks"]["monitor"]["print_table"] = False
    logger = cfg.get("logger")
    if isinstance(logger, dict) and str(logger.get("_target_", "")).endswith("WandbLogger"):
        logger.update(group=group, name=trial_name, job_type="tune")
    return cfg


def sampler(spec: dict[str, Any]) -> Any:
    from ray import tune

    kind = spec["type"]
    if kind in ("choice", "grid"):
        return tune.grid_search(list(spec["values"])) if kind == "grid" else tune.choice(list(spec["values"]))
    return {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint}[kind](spec["low"], spec["high"])


# --------------------------------------------------------------------------- trials


def run_trial(params: dict[str, Any], base: dict[str, Any], settings: dict[str, Any], group: str) -> None:
    """Ray Tune function trainable: one ``train(cfg)`` with the sampled ``params``."""
    import torch
    from ray import tune

    from sparse_lightning.train import train

    torch.set_num_threads(settings["cpus_per_trial"])
    context = tune.get_context()
    cfg = trial_config(base, params, TuneSettings(**settings), context.get_trial_dir(), context.get_trial_name(), group)
    train(OmegaConf.create(cfg))


def trial_dirname(trial: Any) -> str:
    """``trial_<id>``: short trial directories (the sampled values are in the table and params.json)."""
    return f"trial_{trial.trial_id}"


# --------------------------------------------------------------------------- results


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated ``(sparsity, accuracy)`` points (both maximized), by sparsity."""
    front = [i for i, (s, a) in enumerate(points)
             if not any((s2 >= s and a2 >= a) and (s2 > s or a2 > a) for s2, a2 in points)]
    return sorted(front, key=lambda i: points[i][0])


@dataclass
class SearchResult:
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    front: list[int]
    files: dict[str, str]


def collect_rows(results: Any, settings: TuneSettings) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        metrics = result.metrics or {}
        accuracy, sparsity = metrics.get(settings.metric, math.nan), metrics.get("sparsity", math.nan)
        row = {"trial": Path(result.path).name if result.path else "", **{n: result.config.get(n) for n in settings.space},
               "epochs": metrics.get("training_iteration", 0), settings.metric: accuracy, "sparsity": sparsity,
               "objective": metrics.get("objective", math.nan), "status": "error" if result.error else "ok"}
        rows.append(row)
    return rows


def choose_best(rows: list[dict[str, Any]], settings: TuneSettings) -> dict[str, Any] | None:
    """The most accurate trial at ``sparsity >= min_sparsity`` (``min_sparsity`` mode), within ``tolerance`` of
    ``target_sparsity`` (``target`` mode), else the top objective."""
    ok = [r for r in rows if r["status"] == "ok" and not math.isnan(r["objective"])]
    if settings.objective == "target":
        meeting = [r for r in ok if abs(r["sparsity"] - settings.target_sparsity) <= settings.tolerance]
        return max(meeting, key=lambda r: r[settings.metric]) if meeting else None
    if settings.objective == "min_sparsity":
        meeting = [r for r in ok if r["sparsity"] >= settings.min_sparsity]
        return max(meeting, key=lambda r: r[settings.metric]) if meeting else None
    return max(ok, key=lambda r: r["objective"]) if ok else None


def write_outputs(rows: list[dict[str, Any]], settings: TuneSettings, out: Path) -> SearchResult:
    out.mkdir(parents=True, exist_ok=True)
    points = [(r["sparsity"], r[settings.metric]) for r in rows]
    front = pareto_front([p for p in points if not any(math.isnan(v) for v in p)])
    valid = [i for i, p in enumerate(points) if not any(math.isnan(v) for v in p)]
    front = [valid[i] for i in front] if len(valid) != len(points) else front
    for i, row in enumerate(rows):
        row["pareto"] = i in front
    best = choose_best(rows, settings)
    columns = list(rows[0]) if rows else []
    with open(out / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (out / "trials.md").write_text(markdown_table(rows, columns))
    (out / "best.json").write_text(json.dumps({"settings": asdict(settings), "best": best}, indent=1, default=str))
    plot_pareto(rows, front, best, settings, out / "pareto.png")
    files = {k: str(out / v) for k, v in (("csv", "trials.csv"), ("markdown", "trials.md"), ("best", "best.json"),
                                          ("plot", "pareto.png"))}
    return SearchResult(rows, best, front, files)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_pareto(rows: list[dict[str, Any]], front: list[int], best: dict[str, Any] | None, settings: TuneSettings,
                path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    xs, ys = [r["sparsity"] for r in rows], [r[settings.metric] for r in rows]
    ax.scatter(xs, ys, c="tab:gray", label="trials")
    if front:
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "o-", c="tab:blue", label="Pareto front")
    if best is not None:
        ax.scatter([best["sparsity"]], [best[settings.metric]], s=160, facecolors="none", edgecolors="tab:red",
                   label="best")
    if settings.objective == "min_sparsity":
        ax.axvline(settings.min_sparsity, ls="--", c="tab:red", lw=1, label=f"min sparsity {settings.min_sparsity:g}")
    ax.set_xlabel("global sparsity (last report)")
    ax.set_ylabel(settings.metric)
    ax.set_title(f"sparse-tune: {settings.name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- driver


def prepare(cfg: DictConfig, output_dir: str | Path) -> tuple[TuneSettings, dict[str, Any], Path]:
    """The search settings, the validated plain train config and the output directory of a composed tune config."""
    settings = TuneSettings.from_config(cfg.get("tune"))
    base = resolve_train_config(cfg)
    for name in settings.space:
        for path in settings.paths(name):
            get_path(base, path)
    return settings, base, Path(output_dir).resolve()


@contextlib.contextmanager
def ray_session(settings: TuneSettings) -> Iterator[None]:
    """Local Ray (or ``settings.address``) for the duration of a search, unless one is running already."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        if settings.address:
            ray.init(address=settings.address)
        else:  # a short temp dir: Ray's socket paths must stay under 107 characters
            ray.init(num_cpus=settings.num_cpus or os.cpu_count(), include_dashboard=False,
                     _temp_dir=tempfile.mkdtemp(prefix="ray"), log_to_driver=False)
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


def fit_trials(settings: TuneSettings, base: dict[str, Any], param_space: dict[str, Any], out: Path,
               group: str) -> list[dict[str, Any]]:
    """One Ray Tune run of ``train(cfg)`` trials over ``param_space``; returns the table rows."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    epochs = base["trainer"].get("max_epochs") or 1
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, settings=asdict(settings), group=group),
        {"cpu": settings.cpus_per_trial})
    # stop_last_trials=False: a trial that reaches the last rung finishes train() (test, checkpoint, wandb)
    scheduler = (ASHAScheduler(max_t=max(int(epochs), 1), grace_period=settings.grace_period,
                               reduction_factor=settings.reduction_factor, stop_last_trials=False)
                 if settings.scheduler == "asha" else None)
    num_samples = 1 if settings.objective == "target" else settings.num_samples  # target: a grid per round
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(metric="objective", mode="max", scheduler=scheduler,
                                    num_samples=num_samples, trial_dirname_creator=trial_dirname,
                                    search_alg=BasicVariantGenerator(random_state=settings.seed,
                                                                     max_concurrent=settings.max_concurrent)),
        run_config=tune.RunConfig(name=group, storage_path=settings.storage or str(out / "ray"), verbose=0),
    )
    return collect_rows(tuner.fit(), settings)


def run_search(cfg: DictConfig, output_dir: str | Path) -> SearchResult:
    """Run the search ``cfg`` (a composed ``conf/tune.yaml``) and write its outputs under ``output_dir``."""
    settings, base, out = prepare(cfg, output_dir)
    if settings.objective == "target":
        from sparse_lightning.tune.bisect import run_bisection

        with ray_session(settings):
            return write_outputs(run_bisection(settings, base, out), settings, out)
    with ray_session(settings):
        group = f"{settings.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        rows = fit_trials(settings, base, {name: sampler(spec) for name, spec in settings.space.items()}, out, group)
    return write_outputs(rows, settings, out)
