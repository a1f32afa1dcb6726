"""`sparse-bench`: time the sparse kernels against cuDNN, cuBLAS and cuSPARSE on this GPU.

    sparse-bench --out benchmarks/results                 # full run (a few minutes on an H100)
    sparse-bench --quick --out /tmp/bench                 # smoke run: one batch, two sparsities
    sparse-bench --suite depthwise --layers 'effb0.*'
    sparse-bench --model resnet20 --batches 1 --out /tmp/bench   # Park's model vs measured, per layer

Writes `kernel_bench.json` (device, versions, date and one row per layer/batch/sparsity; rewritten
after each suite) and `conv_speedup.png` / `depthwise.png`. Needs a CUDA GPU and CuPy; without
them it exits with status 2 and one line saying why. With `--model` it writes
`model_bench_<model>.json` and `.png` instead: predicted (Park's roofline, `--profile`) vs measured
time per layer and the useful sparsity range; it runs on a CPU too, measuring the reference kernels
against the CPU profile, or predicting only, and says which.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

SUITES = ("conv", "depthwise", "linear")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sparse-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder")
    p.add_argument("--suite", nargs="+", choices=SUITES, default=list(SUITES))
    p.add_argument("--layers", nargs="+", default=["*"], help="fnmatch patterns on layer names")
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7, 0.8, 0.9, 0.95, 0.98])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32], help="conv and linear")
    p.add_argument("--dw-batches", nargs="+", type=int, default=[1, 32, 128])
    p.add_argument("--dw-sparsities", nargs="+", type=float, default=[0.5, 0.75],
                   help="pruned fraction of depthwise taps (BWT-balanced)")
    p.add_argument("--quick", action="store_true", help="batch 1 and 32, sparsities 0.5 and 0.9")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--model", default=None, help="per-layer model vs measurement: resnet20, lenet5, cnn1d, baselines")
    p.add_argument("--profile", default="auto",
                   help="with --model: h100, a100, cpu, a profile JSON, or auto (calibrate here)")
    p.add_argument("--input-shape", nargs="+", type=int, default=None, help="with --model: (C, H, W) or (C, L)")
    p.add_argument("--no-measure", action="store_true", help="with --model: predictions only")
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.dw_batches = [1, 32], [1, 32]
        args.sparsities, args.dw_sparsities = [0.5, 0.9], [0.5]
    bad = [s for s in args.sparsities + args.dw_sparsities if not 0.0 <= s < 1.0]
    if bad:
        p.error(f"sparsities must be in [0, 1): {bad}")
    return args


def unavailable_reason() -> str | None:
    import torch

    from sparse_lightning.kernels.backend import cupy_available

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False); it times GPU kernels only"
    if not cupy_available():
        return "CuPy is not importable; install the GPU extra: pip install 'sparse-lightning[gpu]'"
    return None


def run_model_bench(args: argparse.Namespace) -> int:
    """`--model`: Park's per-layer prediction next to the measured time (sparse_lightning.perf.bench)."""
    import torch

    from sparse_lightning.errors import ConfigError
    from sparse_lightning.perf import bench as pb
    from sparse_lightning.perf.profiles import get_profile

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        if args.profile == "auto":
            from sparse_lightning.perf.calibrate import calibrate

            on_gpu = torch.cuda.is_available() and unavailable_reason() is None
            profile = calibrate("cuda", quick=True).profile if on_gpu else get_profile("cpu")
        else:
            profile = get_profile(args.profile)
        result = pb.bench_model(args.model, profile, args.batches, args.sparsities, args.input_shape,
                                measure=not args.no_measure)
    except ConfigError as exc:
        print(f"sparse-bench: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    result["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    path = args.out / f"model_bench_{args.model}.json"
    path.write_text(json.dumps(result, indent=1))
    written = [path]
    if not args.no_plot:
        written.append(pb.plot_model_bench(result, args.out / f"model_bench_{args.model}.png"))
    print(pb.format_table(result))
    print("sparse-bench: wrote " + ", ".join(str(p) for p in written))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model:
        return run_model_bench(args)
    reason = unavailable_reason()
    if reason:
        print(f"sparse-bench: {reason}", file=sys.stderr)
        return 2
    from sparse_lightning.kernels import benchmark as bm
    from sparse_lightning.kernels.bench_plot import plot_conv_speedups, plot_depthwise

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "kernel_bench.json"
    result: dict = {"meta": bm.environment(), "conv": [], "depthwise": [], "linear": []}
    result["meta"]["copy_bandwidth_GBps"] = bm.copy_bandwidth() / 1e9
    result["meta"]["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}

    def save() -> None:
        path.write_text(json.dumps(result, indent=1))

    if "conv" in args.suite:
        for batch in args.batches:
            for layer in bm.select(bm.CONV_LAYERS, args.layers):
                result["conv"] += bm.bench_conv(layer, batch, args.sparsities)
        save()
    if "depthwise" in args.suite:
        for batch in args.dw_batches:
            for layer in bm.select(bm.DW_LAYERS, args.layers):
                result["depthwise"].append(bm.bench_depthwise(layer, batch, args.dw_sparsities))
        save()
    if "linear" in args.suite:
        for batch in args.batches:
            for name, n, k in bm.select(bm.LINEAR_LAYERS, args.layers):
                result["linear"] += bm.bench_linear(name, n, k, batch, args.sparsities)
        save()
    save()
    written = [path]
    if not args.no_plot:
        device = result["meta"]["device"]
        if result["conv"]:
            written.append(plot_conv_speedups(result["conv"], args.out / "conv_speedup.png", device))
        if result["depthwise"]:
            written.append(plot_depthwise(result["depthwise"], args.out / "depthwise.png", device))
    print("sparse-bench: wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
