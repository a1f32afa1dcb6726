"""Measure a :class:`HardwareProfile` on the present device (METHODS.md 4b, "GPU calibration").

    python -m sparse_lightning.perf.calibrate --device cuda --out h100_calibrated.json
    python -m sparse_lightning.perf.calibrate --device cpu --quick

F is the dense baseline's actual throughput, B the measured copy bandwidth (read + write bytes),
and alpha = F / (the sparse conv kernel's FLOP/s on nonzeros at density x ~ 0.45):
  * CPU: F from torch.mm (SGEMM, as Park's Table 1); the sparse kernel is the pure-torch reference
    direct sparse conv (`kernels.reference`), wall-clock medians.
  * CUDA: F = median cuDNN TF32 rate over the conv layer set of `device-baselines.md` at batch 32
    (the dense baseline the sparse kernel must beat); the sparse kernel is the CuPy direct sparse
    conv; times are CUDA-graph replays (`kernels.benchmark.graph_time`).
latency_s is the sparse kernel's time on a 1-channel 1x1 layer (its fixed cost per call).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sparse_lightning.perf.profiles import HardwareProfile

SPARSE_DENSITY = 0.45
CPU_LAYERS = ((64, 64, 3, 16), (128, 128, 3, 8))  # (cin, cout, k, hw), stride 1, pad k // 2
CPU_QUICK_LAYERS = CPU_LAYERS[:1]


@dataclasses.dataclass
class Calibration:
    profile: HardwareProfile
    measurements: dict[str, Any]

    def save(self, path: str | Path) -> Path:
        return self.profile.save(path, self.measurements)


def _wall_us(fn: Callable[[], Any], reps: int = 5) -> float:
    """Median wall-clock microseconds per call (CPU), after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def _sparse_weight(cout: int, cin: int, k: int, density: float, device: str) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(0)
    w = torch.randn(cout, cin, k, k, generator=g)
    keep = torch.randperm(w.numel(), generator=g)[: round(density * w.numel())]
    out = torch.zeros(w.numel())
    out[keep] = w.reshape(-1)[keep]
    return out.reshape(w.shape).to(device)


def _conv_rates(layers, batch: int, device: str, timer: Callable[[Callable[[], Any]], float]) -> list[dict]:
    from sparse_lightning.kernels import conv_input_offsets, dense_to_conv_csr, sparse_conv2d

    rows = []
    for cin, cout, k, hw in layers:
        x = torch.randn(batch, cin, hw, hw, device=device)
        w = _sparse_weight(cout, cin, k, SPARSE_DENSITY, device)
        csr = dense_to_conv_csr(w)
        offsets = conv_input_offsets(csr, (hw, hw), k // 2)
        us_dense = timer(lambda: F.conv2d(x, w, None, 1, k // 2))
        us_sparse = timer(lambda: sparse_conv2d(x, csr, None, 1, k // 2, offsets=offsets))
        flops = 2.0 * batch * cout * cin * k * k * hw * hw
        rows.append(dict(cin=cin, cout=cout, k=k, hw=hw, batch=batch, density=csr.nnz / w.numel(),
                         us_dense=us_dense, us_sparse=us_sparse, dense_flops_per_s=flops / (us_dense * 1e-6),
                         sparse_flops_per_s=flops * csr.nnz / w.numel() / (us_sparse * 1e-6)))
    return rows


def _latency_us(device: str, timer: Callable[[Callable[[], Any]], float]) -> float:
    from sparse_lightning.kernels import conv_input_offsets, dense_to_conv_csr, sparse_conv2d

    x = torch.randn(1, 1, 1, 1, device=device)
    csr = dense_to_conv_csr(torch.ones(1, 1, 1, 1, device=device))
    offsets = conv_input_offsets(csr, (1, 1), 0)  # outside the timed call (and any graph capture)
    return timer(lambda: sparse_conv2d(x, csr, offsets=offsets))


def _calibrate_cpu(quick: bool) -> tuple[float, float, list[dict], float, dict]:
    n = 512 if quick else 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    gemm = 2.0 * n**3 / (_wall_us(lambda: torch.mm(a, b)) * 1e-6)
    src = torch.randn(2**22 if quick else 2**24)
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 4 / (_wall_us(lambda: dst.copy_(src)) * 1e-6)
    rows = _conv_rates(CPU_QUICK_LAYERS if quick else CPU_LAYERS, 1, "cpu", _wall_us)
    extra = dict(gemm_n=n, torch_threads=torch.get_num_threads(), processor=platform.processor() or platform.machine())
    return gemm, bandwidth, rows, _latency_us("cpu", _wall_us), extra


def _calibrate_cuda(quick: bool) -> tuple[float, float, list[dict], float, dict]:
    from sparse_lightning.kernels import benchmark as bm

    layers = [(c.cin, c.cout, c.k, c.hw) for c in bm.CONV_LAYERS if c.stride == 1]
    layers = layers[:2] if quick else layers
    torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = True, True
    rows = _conv_rates(layers, 32, "cuda", bm.graph_time)
    dense = statistics.median(r["dense_flops_per_s"] for r in rows)
    extra = dict(environment=bm.environment(), dense_baseline="cuDNN TF32, batch 32")
    return dense, bm.copy_bandwidth(), rows, _latency_us("cuda", bm.graph_time), extra


def calibrate(device: str = "cpu", path: str | Path | None = None, quick: bool = False) -> Calibration:
    """Measure F, B, alpha (and the sparse kernel's fixed latency) on ``device`` ("cpu" or "cuda");
    save the profile JSON to ``path`` when given."""
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("calibrate('cuda'): no CUDA GPU is visible")
        flops, bandwidth, rows, latency_us, extra = _calibrate_cuda(quick)
        name = torch.cuda.get_device_name().lower().replace(" ", "_")
    elif device == "cpu":
        flops, bandwidth, rows, latency_us, extra = _calibrate_cpu(quick)
        name = "cpu"
    else:
        raise ValueError(f"calibrate: device must be 'cpu' or 'cuda', got {device!r}")
    sparse_rate = statistics.median(r["sparse_flops_per_s"] for r in rows)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    profile = HardwareProfile(
        name, flops=flops, bandwidth=bandwidth, alpha=flops / sparse_rate, beta=2.0, latency_s=latency_us * 1e-6,
        source=f"calibrate('{device}') {date}: F dense rate, B copy bandwidth, alpha = F / sparse conv rate "
               f"at density {SPARSE_DENSITY}, torch {torch.__version__}")
    result = Calibration(profile, dict(date=date, conv=rows, latency_us=latency_us,
                                       sparse_flops_per_s=sparse_rate, **extra))
    if path is not None:
        result.save(path)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparse_lightning.perf.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None, help="profile JSON to write")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    result = calibrate(args.device, args.out, args.quick)
    pr = result.profile
    print(f"{pr.name}: F={pr.flops / 1e9:.1f} GFLOP/s B={pr.bandwidth / 1e9:.1f} GB/s alpha={pr.alpha:.2f} "
          f"latency={pr.latency_s * 1e6:.1f} us" + (f" -> {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
