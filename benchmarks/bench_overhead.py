"""Training-step time with each pruning callback vs dense training, measured in one process.

    python benchmarks/bench_overhead.py                          # GRU and 1-D CNN on MNIST-1D, CPU
    python benchmarks/bench_overhead.py --models gru --steps 200 --repeats 5 --docs

A step is timed from the first callback's ``on_train_batch_start`` to the last callback's
``on_train_batch_end``: forward, backward, optimizer step and every callback hook (mask decisions,
prunes, gradient masking, regularization, re-masking, logging). Configurations run interleaved
(dense, A, B, ..., dense, A, B, ...) so drift on the machine hits all of them alike; the overhead
is the median step time against dense's, over all repeats. Pruning schedules span the timed steps
(gradual updates every ``--every`` steps; Han's 4 rounds), so the figures include the prune steps. Writes
``benchmarks/results/overhead_<device>.json``; ``--docs`` also writes the "overhead" section of
docs/results.md. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]


class StepTimer(Callback):
    """Two halves of one timer: ``first`` goes before every other callback, the other after them."""

    def __init__(self, first: bool, times: list[float], warmup: int) -> None:
        self.first, self.times, self.warmup = first, times, warmup

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.first and trainer.global_step > self.warmup:
            self.times.append(time.perf_counter() - self.start.t0)


class HookClock(Callback):
    """Brackets the pruning callbacks: ``open`` before them, ``close`` after them, in each hook they use.

    The time between the two is the callbacks' own cost, which machine noise blurs far less than
    the difference of two step times.
    """

    HOOKS = ("on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end")

    def __init__(self, opener: "HookClock | None", per_step: list[float], warmup: int) -> None:
        self.opener, self.per_step, self.warmup = opener, per_step, warmup
        self.t = 0.0
        self.acc = 0.0

    def _tick(self, trainer) -> None:
        if self.opener is None:
            self.t = time.perf_counter()
        else:
            self.acc += time.perf_counter() - self.opener.t

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._tick(trainer)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self._tick(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._tick(trainer)
        if self.opener is not None:
            if trainer.global_step > self.warmup:
                self.per_step.append(self.acc)
            self.acc = 0.0


def callbacks(name: str, every: int) -> list[Callback]:
    from sparse_lightning.callbacks import GradualPruning, IterativePruning, MagnitudePruning, SparsityMonitor

    window = dict(start_step=0.1, end_step=0.6, every=every)
    return {
        "dense": [],
        "magnitude (one-shot)": [MagnitudePruning(0.9, at_step=10, scope="layer")],
        "gmp (cubic)": [GradualPruning("cubic", {k: {"target": 0.9} for k in ("conv", "linear", "recurrent")}, **window)],
        "narang": [GradualPruning("narang", {k: {"target": 0.9} for k in ("conv", "linear", "recurrent")},
                                  ramp_step=0.35, **window)],
        "han (iterative, L2)": [IterativePruning(0.5, dense_steps=0.1, retrain_steps=0.2, rounds=4,
                                                 regularization={"l2": 1e-4})],
        "gmp + monitor": [GradualPruning("cubic", {k: {"target": 0.9} for k in ("conv", "linear", "recurrent")}, **window),
                          SparsityMonitor(every_n_steps=50, print_table=False)],
    }[name]


CONFIGS = ["dense", "magnitude (one-shot)", "gmp (cubic)", "narang", "han (iterative, L2)", "gmp + monitor"]


def time_run(model_name: str, config: str, steps: int, warmup: int, seed: int, every: int) -> tuple[list[float], list[float]]:
    from sparse_lightning import CNN1d, Classifier, GRUClassifier, MNIST1DDataModule

    pl.seed_everything(seed, verbose=False)
    data = MNIST1DDataModule(num_samples=4000, batch_size=128)
    net = {"gru": lambda: GRUClassifier((1, 40), 10), "cnn1d": lambda: CNN1d((1, 40), 10)}[model_name]()
    times: list[float] = []
    hooks: list[float] = []
    first, last = StepTimer(True, times, warmup), StepTimer(False, times, warmup)
    last.start = first
    opener = HookClock(None, hooks, warmup)
    closer = HookClock(opener, hooks, warmup)
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps + warmup, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                         callbacks=[first, opener, *callbacks(config, every), closer, last])
    trainer.fit(Classifier(net), datamodule=data)
    return times, hooks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=["gru", "cnn1d"], default=["gru", "cnn1d"])
    p.add_argument("--steps", type=int, default=400, help="timed optimizer steps per run")
    p.add_argument("--every", type=int, default=100,
                   help="steps between gradual-pruning updates (100: Narang's freq and TF-MOT's GMP default)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every configuration")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: one core, the quietest timing)")
    p.add_argument("--docs", action="store_true", help="also write the 'overhead' section of docs/results.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    results = {}
    for model in args.models:
        samples: dict[str, list[float]] = {c: [] for c in CONFIGS}
        hooks: dict[str, list[float]] = {c: [] for c in CONFIGS}
        for r in range(args.repeats):
            for config in CONFIGS:
                t, h = time_run(model, config, args.steps, args.warmup, seed=r, every=args.every)
                samples[config] += t
                hooks[config] += h
        dense, dense_mean = statistics.median(samples["dense"]), statistics.fmean(samples["dense"])
        results[model] = {c: {"median_ms": 1e3 * statistics.median(t), "mean_ms": 1e3 * statistics.fmean(t),
                              "overhead_pct": 100 * (statistics.median(t) / dense - 1),
                              "mean_overhead_pct": 100 * (statistics.fmean(t) / dense_mean - 1),
                              "hook_ms_mean": 1e3 * statistics.fmean(hooks[c]),
                              "hook_pct_of_dense_step": 100 * (statistics.fmean(hooks[c]) - statistics.fmean(hooks["dense"]))
                              / dense_mean,
                              "hook_ms_median": 1e3 * statistics.median(hooks[c]),
                              "hook_median_pct_of_dense_step": 100 * (statistics.median(hooks[c]) - statistics.median(hooks["dense"]))
                              / dense,
                              "steps": len(t)} for c, t in samples.items()}
    device = f"cpu-{platform.machine()}-{torch.get_num_threads()}thread"
    report = {"device": device, "processor": platform.processor() or platform.machine(),
              "torch": torch.__version__, "lightning": pl.__version__, "date": datetime.now(timezone.utc).isoformat(),
              "steps": args.steps, "repeats": args.repeats, "every": args.every, "results": results}
    out = ROOT / "benchmarks" / "results" / f"overhead_{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    text = markdown(report, " ".join(["python", "benchmarks/bench_overhead.py", *(argv if argv is not None else sys.argv[1:])]))
    sys.stdout.write(text + "\n")
    if args.docs:
        write_docs_section("overhead", text)
    return 0


def write_docs_section(key: str, body: str) -> None:
    """Replace the block ``<!-- BEGIN key -->``..``<!-- END key -->`` of docs/results.md (append if absent)."""
    import re

    path = ROOT / "docs" / "results.md"
    text = path.read_text() if path.exists() else "# Results\n"
    block = f"<!-- BEGIN {key} -->\n{body.strip()}\n<!-- END {key} -->"
    pattern = re.compile(rf"<!-- BEGIN {key} -->.*?<!-- END {key} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)


def markdown(report: dict, command: str) -> str:
    lines = ["## Training-step overhead of the callbacks (CPU)", "",
             f"Made by `{command}` on {report['device']} (torch {report['torch']}, Lightning {report['lightning']}), "
             f"{report['steps']} timed steps x {report['repeats']} interleaved repeats per configuration, MNIST-1D "
             f"batch 128, gradual schedules updating every {report['every']} steps. Step = first callback's "
             "`on_train_batch_start` to the last one's `on_train_batch_end` (forward, backward, optimizer step, all "
             "hooks, prune steps included). \"Hooks\" is the time spent inside the pruning callbacks' own hooks "
             "(bracketed by timers), minus the empty brackets of the dense run, as a share of the dense step: the "
             "overhead with the machine's noise taken out. Its mean includes the prune steps; its median is the "
             "cost of an ordinary step (masking gradients and weights). Target: <= 3%.", ""]
    for model, rows in report["results"].items():
        lines += [f"**{model}**", "",
                  "| callback | median step (ms) | step overhead (median) | step overhead (mean) | hooks per step, mean (ms) "
                  "| hooks / dense step, mean | hooks / dense step, median |",
                  "|---|---|---|---|---|---|---|"]
        for config, r in rows.items():
            lines.append(f"| {config} | {r['median_ms']:.2f} | {r['overhead_pct']:+.1f}% | {r['mean_overhead_pct']:+.1f}% "
                         f"| {r['hook_ms_mean']:.3f} | {r['hook_pct_of_dense_step']:.2f}% "
                         f"| {r['hook_median_pct_of_dense_step']:.2f}% |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
