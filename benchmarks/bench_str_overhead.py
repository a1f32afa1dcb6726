"""STR's training-step overhead vs dense: forward + backward + optimizer step, same model and batch.

    python benchmarks/bench_str_overhead.py                       # CPU, 1 thread, CNN1d and GRU on (128, 1, 40)
    python benchmarks/bench_str_overhead.py --device cuda --threads 0 --out benchmarks/results/str_overhead_gpu.json

For each model: a dense step, an STR step (every prunable weight parametrized, scalar s per layer)
and, for the GRU, structured low-rank STR on the recurrent matrix. Steps are interleaved in rounds
(dense, STR, dense, ...) so drift on a shared machine hits all variants alike; the reported time is
the median over rounds of the mean step time within a round. Target: STR <= 15% over dense.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone

import torch
from torch import nn

from sparse_lightning.models import CNN1d, GRUClassifier
from sparse_lightning.reparam import apply_str, prunable_targets


def build(model_name: str, variant: str, device: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = CNN1d((1, 40), 10) if model_name == "cnn1d" else GRUClassifier((1, 40), 10, hidden_size=128)
    if variant != "dense":
        lowrank = ["rnn.weight_hh_l*"] if variant == "str_lowrank" else []
        apply_str(net, prunable_targets(net), s_init=-5.0, lowrank=lowrank)
    net.to(device)
    return net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(net: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int,
               device: str) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    sync(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave torch's default)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=10, help="steps per round")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, 1, 40, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    results = []
    for model_name, variants in (("cnn1d", ("dense", "str")), ("gru", ("dense", "str", "str_lowrank"))):
        runs = {v: build(model_name, v, args.device) for v in variants}
        for net, optimizer in runs.values():  # warm-up
            time_steps(net, optimizer, x, y, 3, args.device)
        samples: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.rounds):
            for v, (net, optimizer) in runs.items():
                samples[v].append(time_steps(net, optimizer, x, y, args.steps, args.device))
        dense = statistics.median(samples["dense"])
        for v in variants:
            ms = statistics.median(samples[v]) * 1e3
            results.append({"model": model_name, "variant": v, "step_ms": round(ms, 3),
                            "overhead_pct": round(100 * (ms / 1e3 / dense - 1), 1)})
    header = f"{'model':8} {'variant':12} {'step ms':>9} {'vs dense':>9}"
    lines = [header] + [f"{r['model']:8} {r['variant']:12} {r['step_ms']:9.3f} {r['overhead_pct']:+8.1f}%" for r in results]
    print("\n".join(lines))
    if args.out:
        meta = {"device": args.device if args.device == "cpu" else torch.cuda.get_device_name(), "cpu": platform.processor(),
                "threads": torch.get_num_threads(), "torch": torch.__version__, "batch": args.batch,
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
