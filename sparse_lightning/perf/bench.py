"""`sparse-bench --model NAME`: Park's predicted dense/sparse time per layer next to the measured
time, with each layer's useful sparsity range (DESIGN.md "perf/").

Models: ``resnet20``, ``lenet5``, ``cnn1d`` (the zoo, at ``--input-shape``) and ``baselines``
(the conv layer set of ``device-baselines.md``). Measured times use the same method as the
kernel benchmarks: CUDA-graph replays of the CuPy kernels and cuDNN/cuBLAS (TF32 allowed, the
dense rate the built-in and calibrated GPU profiles use) on a GPU; wall-clock medians of the
pure-torch reference kernels and torch's dense ops on a CPU, against a CPU profile only.
Weights are random, pruned uniformly at random to exactly round(s * numel) zeros.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparse_lightning.errors import ConfigError
from sparse_lightning.perf.model import LayerCost, conv_padding, costs_from_shapes, record_shapes, t_dense, t_sparse, useful_range
from sparse_lightning.perf.profiles import HardwareProfile

log = logging.getLogger(__name__)
DEFAULT_INPUT = {"resnet20": (3, 32, 32), "lenet5": (1, 28, 28), "cnn1d": (1, 40)}
MODELS = (*DEFAULT_INPUT, "baselines")


def build_layers(name: str, input_shape: Sequence[int] | None = None) -> tuple[nn.Module, dict[str, tuple]]:
    """The model and, per modeled module name, its (input shape, output shape) for one input."""
    from sparse_lightning.models import CNN1d, LeNet5, ResNet20

    if name == "baselines":
        from sparse_lightning.kernels.benchmark import CONV_LAYERS

        net = nn.ModuleDict({layer.name.replace(".", "_"): nn.Conv2d(layer.cin, layer.cout, layer.k, layer.stride, layer.pad, bias=False)
                             for layer in CONV_LAYERS})
        shapes = {}
        for layer in CONV_LAYERS:
            out = (layer.hw + 2 * layer.pad - layer.k) // layer.stride + 1
            shapes[layer.name.replace(".", "_")] = ((1, layer.cin, layer.hw, layer.hw), (1, layer.cout, out, out))
        return net, shapes
    if name not in DEFAULT_INPUT:
        raise ConfigError(f"--model: unknown {name!r}; choose one of {', '.join(MODELS)}")
    shape = tuple(input_shape or DEFAULT_INPUT[name])
    net = {"resnet20": ResNet20, "lenet5": LeNet5, "cnn1d": CNN1d}[name](shape, 10)
    return net, record_shapes(net, torch.randn(1, *shape))


def _prune(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(0)
    order = torch.randperm(w.numel(), generator=g).to(w.device)
    out = w.clone().reshape(-1)
    out[order[: round(sparsity * w.numel())]] = 0
    return out.reshape(w.shape)


def _ops(module: nn.Module, in_shape: tuple, batch: int, sparsity: float, device: str
         ) -> tuple[Callable[[], Any], Callable[[], Any], float]:
    """(dense call, sparse-kernel call, actual density) for one layer at ``batch`` inputs."""
    from sparse_lightning.kernels import conv_input_offsets, dense_to_conv_csr, dense_to_csr, sparse_conv2d, sparse_linear

    w = torch.randn_like(module.weight, device=device)
    ws = _prune(w, sparsity)
    density = float((ws != 0).float().mean())
    if isinstance(module, nn.Linear):
        rows = math.prod(in_shape) // in_shape[-1] * batch // in_shape[0]
        x = torch.randn(rows, w.shape[1], device=device)
        csr = dense_to_csr(ws)
        return (lambda: F.linear(x, w)), (lambda: sparse_linear(x, csr)), density
    x = torch.randn(batch, *in_shape[1:], device=device)
    pads = conv_padding(module)
    conv = F.conv1d if isinstance(module, nn.Conv1d) else F.conv2d
    dense = lambda: conv(x, w, None, module.stride, pads, module.dilation, module.groups)  # noqa: E731
    if isinstance(module, nn.Conv1d):  # as a 2-D conv of height 1
        x4, w4 = x.unsqueeze(2), ws.unsqueeze(2)  # (B, C, 1, L), (N, C/g, 1, k)
        stride, dilation, pad4 = (1, module.stride[0]), (1, module.dilation[0]), (0, 0, pads[0], pads[0])
    else:
        x4, w4, stride, dilation = x, ws, module.stride, module.dilation
        pad4 = (pads[0], pads[0], pads[1], pads[1])
    csr = dense_to_conv_csr(w4, groups=module.groups)
    offsets = conv_input_offsets(csr, tuple(x4.shape[-2:]), pad4, dilation)
    return dense, (lambda: sparse_conv2d(x4, csr, None, stride, pad4, dilation, offsets=offsets)), density


def measurement_device(profile: HardwareProfile) -> tuple[str | None, str]:
    """Where measurements match the profile: ("cuda" | "cpu" | None, why)."""
    from sparse_lightning.kernels.backend import cupy_available

    if torch.cuda.is_available() and cupy_available():
        return "cuda", "CuPy kernels and cuDNN/cuBLAS (TF32 allowed), CUDA-graph replay"
    if profile.name == "cpu":
        return "cpu", "pure-torch reference kernels and torch dense ops on this CPU (not the CUDA kernels)"
    return None, f"measurement needs a GPU with CuPy: profile {profile.name!r} describes another device"


def _timer(device: str) -> Callable[[Callable[[], Any]], float]:
    if device == "cuda":
        from sparse_lightning.kernels.benchmark import graph_time

        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        return graph_time
    from sparse_lightning.perf.calibrate import _wall_us

    return lambda fn: _wall_us(fn, reps=3)


def bench_model(name: str, profile: HardwareProfile, batches: Sequence[int], sparsities: Sequence[float],
                input_shape: Sequence[int] | None = None, measure: bool = True) -> dict[str, Any]:
    """Rows of predicted (and, where it makes sense, measured) time per layer x batch x sparsity."""
    net, shapes = build_layers(name, input_shape)
    device, how = measurement_device(profile) if measure else (None, "not requested (--no-measure)")
    timer = _timer(device) if device else None
    rows = []
    for batch in batches:
        costs: dict[str, LayerCost] = costs_from_shapes(net, shapes, batch)
        for module_name, (in_shape, _) in shapes.items():
            module = net.get_submodule(module_name)
            if device:
                module.to(device)
            cost = costs[f"{module_name}.weight"]
            rng = useful_range(cost, profile)
            meas_dense = None
            for s in sparsities:
                x = 1.0 - s
                row = dict(layer=module_name, kind=cost.kind, batch=batch, sparsity=s, flops=cost.flops,
                           act_bytes=cost.act_bytes, weight_bytes=cost.weight_bytes, intensity=cost.intensity,
                           x_up=rng.x_up, x_low=rng.x_low, useful=rng.useful,
                           pred_us_dense=t_dense(cost, profile) * 1e6, pred_us_sparse=t_sparse(cost, profile, x) * 1e6)
                row["pred_speedup"] = row["pred_us_dense"] / row["pred_us_sparse"]
                if timer is not None:
                    dense_fn, sparse_fn, density = _ops(module, in_shape, batch, s, device)
                    meas_dense = meas_dense if meas_dense is not None else timer(dense_fn)
                    pred = t_sparse(cost, profile, density) * 1e6
                    meas = timer(sparse_fn)
                    row.update(density=density, pred_us_sparse=pred, meas_us_dense=meas_dense, meas_us_sparse=meas,
                               meas_speedup=meas_dense / meas, rel_err_sparse=abs(pred - meas) / meas)
                rows.append(row)
            log.info("%s b=%d done", module_name, batch)
    return dict(model=name, input_shape=list(input_shape or DEFAULT_INPUT.get(name, ())), profile=profile.to_dict(),
                measured_on=device, measurement=how, rows=rows, summary=summarize(rows))


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else float("nan")


def summarize(rows: list[dict]) -> dict[str, Any]:
    """Median relative error and Spearman correlation of predicted vs measured sparse time."""
    measured = [r for r in rows if "meas_us_sparse" in r]
    if not measured:
        return {"n": 0}
    pred, meas = [r["pred_us_sparse"] for r in measured], [r["meas_us_sparse"] for r in measured]
    return dict(n=len(measured), median_rel_err_sparse=statistics.median(r["rel_err_sparse"] for r in measured),
                spearman_sparse=spearman(pred, meas),
                spearman_speedup=spearman([r["pred_speedup"] for r in measured], [r["meas_speedup"] for r in measured]),
                median_rel_err_dense=statistics.median(
                    abs(r["pred_us_dense"] - r["meas_us_dense"]) / r["meas_us_dense"] for r in measured))


def format_table(result: dict[str, Any]) -> str:
    """One line per layer x batch: cost, useful sparsity range, then pred/meas sparse us per sparsity."""
    rows = result["rows"]
    sparsities = sorted({r["sparsity"] for r in rows})
    head = f"{'layer':<22}{'b':>4}{'MFLOP':>9}{'AI':>7}{'useful sparsity':>17}{'dense us':>16}" + "".join(
        f"{f's={s:g} us':>18}" for s in sparsities)
    lines = [head, "-" * len(head)]
    for key in dict.fromkeys((r["layer"], r["batch"]) for r in rows):
        group = [r for r in rows if (r["layer"], r["batch"]) == key]
        r0 = group[0]
        rng = f"{1 - r0['x_low']:.3f}-{1 - r0['x_up']:.3f}" if r0["useful"] else "none"

        def pm(pred: float, meas: float | None) -> str:
            return f"{pred:.3g}/{meas:.3g}" if meas is not None else f"{pred:.3g}/-"

        line = f"{key[0][:22]:<22}{key[1]:>4}{r0['flops'] / 1e6:>9.2f}{r0['intensity']:>7.1f}{rng:>17}" \
               f"{pm(r0['pred_us_dense'], r0.get('meas_us_dense')):>16}"
        line += "".join(f"{pm(r['pred_us_sparse'], r.get('meas_us_sparse')):>18}" for r in group)
        lines.append(line)
    s = result["summary"]
    lines.append(f"times: predicted/measured microseconds; measured on: {result['measured_on'] or 'nothing'} "
                 f"({result['measurement']})")
    if s.get("n"):
        lines.append(f"sparse time vs prediction over {s['n']} rows: median relative error "
                     f"{s['median_rel_err_sparse']:.1%}, Spearman {s['spearman_sparse']:.3f}")
    return "\n".join(lines)


def plot_model_bench(result: dict[str, Any], path: Path) -> Path:
    """Left: predicted speedup vs sparsity per layer (measured as markers). Right: predicted vs
    measured sparse time (log-log) when measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    batch = min(r["batch"] for r in rows)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    for i, layer in enumerate(dict.fromkeys(r["layer"] for r in rows)):
        group = [r for r in rows if r["layer"] == layer and r["batch"] == batch]
        color = f"C{i % 10}"
        ax.plot([r["sparsity"] for r in group], [r["pred_speedup"] for r in group], "-", color=color,
                label=layer if i < 12 else None)
        if "meas_speedup" in group[0]:
            ax.plot([r["sparsity"] for r in group], [r["meas_speedup"] for r in group], "o", color=color, ms=3)
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set(xlabel="sparsity", ylabel="speedup over dense", yscale="log",
           title=f"{result['model']}, batch {batch}: predicted (lines), measured (dots)")
    ax.legend(fontsize=6)
    ax = axes[1]
    measured = [r for r in rows if "meas_us_sparse" in r]
    if measured:
        sc = ax.scatter([r["meas_us_sparse"] for r in measured], [r["pred_us_sparse"] for r in measured],
                        c=[r["sparsity"] for r in measured], s=10, cmap="viridis")
        lo = min(min(r["meas_us_sparse"], r["pred_us_sparse"]) for r in measured)
        hi = max(max(r["meas_us_sparse"], r["pred_us_sparse"]) for r in measured)
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.6)
        ax.set(xscale="log", yscale="log", xlabel="measured sparse us", ylabel="predicted sparse us")
        fig.colorbar(sc, ax=ax, label="sparsity")
        s = result["summary"]
        ax.set_title(f"median rel. err {s['median_rel_err_sparse']:.0%}, Spearman {s['spearman_sparse']:.2f}")
    else:
        ax.text(0.5, 0.5, f"not measured:\n{result['measurement']}", ha="center", va="center", wrap=True)
        ax.set_axis_off()
    fig.suptitle(f"Park roofline model, profile {result['profile']['name']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def measure_model(net: nn.Module, input_shape: Sequence[int], batch: int) -> dict[str, Any]:
    """Measured dense and sparse-kernel time of every modeled layer of a trained (pruned) ``net``
    with its own weights, on the GPU (CuPy kernels, CUDA-graph replay). End-to-end speedup over
    the modeled layers: sum dense / sum of each layer's faster option (what ``nn.convert`` keeps)."""
    device, how = measurement_device(HardwareProfile("gpu", 1.0, 1.0, 1.0))
    if device != "cuda":
        raise RuntimeError(f"measure_model needs a GPU with CuPy ({how})")
    from sparse_lightning.kernels import conv_input_offsets, dense_to_conv_csr, dense_to_csr, sparse_conv2d, sparse_linear

    timer = _timer("cuda")
    shapes = record_shapes(net, torch.randn(1, *input_shape, device=next(net.parameters()).device))
    layers = {}
    for module_name, (in_shape, _) in shapes.items():
        module = net.get_submodule(module_name)
        w = module.weight.detach().to("cuda").float()
        if isinstance(module, nn.Linear):
            x = torch.randn(math.prod(in_shape) // in_shape[-1] * batch, w.shape[1], device="cuda")
            csr = dense_to_csr(w)
            dense_us, sparse_us = timer(lambda: F.linear(x, w)), timer(lambda: sparse_linear(x, csr))
        else:
            x = torch.randn(batch, *in_shape[1:], device="cuda")
            pads = conv_padding(module)
            conv = F.conv1d if isinstance(module, nn.Conv1d) else F.conv2d
            dense_us = timer(lambda: conv(x, w, None, module.stride, pads, module.dilation, module.groups))
            x4, w4 = (x.unsqueeze(2), w.unsqueeze(2)) if isinstance(module, nn.Conv1d) else (x, w)
            stride = (1, module.stride[0]) if isinstance(module, nn.Conv1d) else module.stride
            dilation = (1, module.dilation[0]) if isinstance(module, nn.Conv1d) else module.dilation
            pad4 = (0, 0, pads[0], pads[0]) if isinstance(module, nn.Conv1d) else (pads[0], pads[0], pads[1], pads[1])
            csr = dense_to_conv_csr(w4, groups=module.groups)
            offsets = conv_input_offsets(csr, tuple(x4.shape[-2:]), pad4, dilation)
            sparse_us = timer(lambda: sparse_conv2d(x4, csr, None, stride, pad4, dilation, offsets=offsets))
        layers[f"{module_name}.weight"] = dict(dense_us=dense_us, sparse_us=sparse_us,
                                               density=float((w != 0).float().mean()))
    dense = sum(r["dense_us"] for r in layers.values())
    mixed = sum(min(r["dense_us"], r["sparse_us"]) for r in layers.values())
    return dict(layers=layers, dense_us=dense, mixed_us=mixed, speedup=dense / mixed, measurement=how)
