"""GPU kernel benchmarks behind `sparse-bench` (DESIGN.md "Kernels"; METHODS.md 4a, 5).

Kernel time is measured as in the shared H100 baselines (`tools/gpu_graph_baseline.py`): a CUDA
graph of 20 calls, replayed 7 times, median replay / 20, in microseconds; timing single calls with
CUDA events measures launch overhead at batch 1 instead. Every sparse result is checked against
F.conv2d / F.linear (TF32 off) before it is timed, and the error is recorded next to the time.

Layer sets are those of `device-baselines.md`. Sparsity is unstructured, uniformly random with
exactly round(s * numel) zeros (what magnitude pruning of random weights gives).
"""

from __future__ import annotations

import datetime
import fnmatch
import logging
import platform
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from sparse_lightning.kernels import backend
from sparse_lightning.kernels.depthwise import depthwise_conv2d, pruned_depthwise_conv2d
from sparse_lightning.kernels.formats import (
    bwt_mask,
    conv_input_offsets,
    dense_to_balanced_depthwise,
    dense_to_conv_csr,
    dense_to_csr,
)
from sparse_lightning.kernels.sparse_conv import conv_schedule, sparse_conv2d
from sparse_lightning.kernels.sparse_linear import sparse_linear

log = logging.getLogger(__name__)
NOMINAL_BANDWIDTH = 3.0e12  # bytes/s, the bandwidth limit of device-baselines.md


class ConvLayer(NamedTuple):
    name: str
    cin: int
    cout: int
    k: int
    stride: int
    pad: int
    hw: int


class DepthwiseLayer(NamedTuple):
    name: str
    c: int
    k: int
    stride: int
    hw: int


CONV_LAYERS = (
    ConvLayer("alexnet.conv2", 96, 256, 5, 1, 2, 27), ConvLayer("alexnet.conv3", 256, 384, 3, 1, 1, 13),
    ConvLayer("alexnet.conv4", 384, 384, 3, 1, 1, 13), ConvLayer("alexnet.conv5", 384, 256, 3, 1, 1, 13),
    ConvLayer("resnet50.l2.3x3", 128, 128, 3, 1, 1, 28), ConvLayer("resnet50.l3.3x3", 256, 256, 3, 1, 1, 14),
    ConvLayer("resnet50.l4.3x3", 512, 512, 3, 1, 1, 7), ConvLayer("vgg16.conv4_2", 512, 512, 3, 1, 1, 28),
)
DW_LAYERS = (
    DepthwiseLayer("mbv2.dw112", 32, 3, 1, 112), DepthwiseLayer("mbv2.dw56", 144, 3, 1, 56),
    DepthwiseLayer("mbv2.dw28", 192, 3, 1, 28), DepthwiseLayer("mbv2.dw14", 576, 3, 1, 14),
    DepthwiseLayer("mbv2.dw7", 960, 3, 1, 7), DepthwiseLayer("effb0.dw5x5_28", 240, 5, 1, 28),
    DepthwiseLayer("effb0.dw5x5_14", 672, 5, 1, 14), DepthwiseLayer("effb0.dw5x5_7", 1152, 5, 1, 7),
    DepthwiseLayer("mbv2.dw112s2", 96, 3, 2, 112),
)
LINEAR_LAYERS = (("alexnet.fc6", 4096, 9216), ("alexnet.fc7", 4096, 4096), ("gru2560.hh", 7680, 2560))


def graph_time(fn: Callable[[], Any], reps: int = 20) -> float:
    """Microseconds per call: capture `reps` calls in a CUDA graph, median of 7 replays."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(7):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / reps)
    return sorted(ts)[3] * 1e3


def event_time(fn: Callable[[], Any], reps: int = 20) -> float:
    """Microseconds per call from CUDA events around `reps` eager calls, median of 7 (for ops that
    cannot be captured in a graph; includes launch overhead)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(7):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / reps)
    return sorted(ts)[3] * 1e3


def timed(fn: Callable[[], Any]) -> tuple[float, str]:
    """Graph timing, or event timing where capture fails (reported as such)."""
    try:
        return graph_time(fn), "graph"
    except RuntimeError as err:
        torch.cuda.synchronize()
        log.warning("CUDA graph capture failed (%s); timing with events instead", err)
        return event_time(fn), "events"


def prune_random(w: torch.Tensor, sparsity: float, seed: int = 0) -> torch.Tensor:
    """A copy of `w` with exactly round(sparsity * numel) entries zeroed at random."""
    g = torch.Generator(device=w.device).manual_seed(seed)
    order = torch.randperm(w.numel(), device=w.device, generator=g)
    out = w.clone().reshape(-1)
    out[order[: round(sparsity * w.numel())]] = 0
    return out.reshape(w.shape)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30)).item()


def _cudnn(fn: Callable[[], Any], tf32: bool) -> float:
    torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = tf32, True
    return graph_time(fn)


def bench_conv(layer: ConvLayer, batch: int, sparsities: Sequence[float]) -> list[dict]:
    """Direct sparse conv vs cuDNN (TF32 on/off, fp16) and cuSPARSE SpMM on the im2col matrix."""
    name, cin, cout, k, st, pad, hw = layer
    x = torch.randn(batch, cin, hw, hw, device="cuda")
    w = torch.randn(cout, cin, k, k, device="cuda")
    xh, wh = x.half(), w.half()
    dense = dict(us_cudnn_tf32=_cudnn(lambda: F.conv2d(x, w, None, st, pad), True),
                 us_cudnn_fp32=_cudnn(lambda: F.conv2d(x, w, None, st, pad), False),
                 us_cudnn_fp16=_cudnn(lambda: F.conv2d(xh, wh, None, st, pad), False))
    lowered = F.unfold(x, k, padding=pad, stride=st).permute(1, 0, 2).reshape(cin * k * k, -1)  # (CRS, B*L)
    us_im2col = graph_time(lambda: F.unfold(x, k, padding=pad, stride=st))
    us_pad = graph_time(lambda: F.pad(x, (pad,) * 4))
    rows = []
    for s in sparsities:
        ws = prune_random(w, s)
        csr = dense_to_conv_csr(ws)
        offsets = conv_input_offsets(csr, (hw, hw), pad)
        csr16 = csr.to(dtype=torch.float16)
        torch.backends.cudnn.allow_tf32 = False
        err32 = rel_err(sparse_conv2d(x, csr, None, st, pad, offsets=offsets), F.conv2d(x, ws, None, st, pad))
        err16 = rel_err(sparse_conv2d(xh, csr16, None, st, pad, offsets=offsets),
                        F.conv2d(xh.float(), ws.half().float(), None, st, pad))
        w_csr = ws.reshape(cout, -1).to_sparse_csr()
        us_cusparse, how = timed(lambda: torch.mm(w_csr, lowered))
        us32 = graph_time(lambda: sparse_conv2d(x, csr, None, st, pad, offsets=offsets))
        us16 = graph_time(lambda: sparse_conv2d(xh, csr16, None, st, pad, offsets=offsets))
        hout = (hw + 2 * pad - k) // st + 1
        plan = conv_schedule(batch, cout, hout * hout, csr.max_block_nnz,
                             backend.sm_count(torch.cuda.current_device()))
        row = dict(kind="conv", layer=name, batch=batch, sparsity=s, cin=cin, cout=cout, k=k,
                   stride=st, pad=pad, hw=hw, gflop_dense=2 * batch * cout * cin * k * k * hout**2 / 1e9,
                   **dense, us_ours_fp32=us32, us_ours_fp16=us16, us_pad=us_pad,
                   us_cusparse=us_cusparse, cusparse_timing=how, us_im2col=us_im2col,
                   rel_err_fp32=err32, rel_err_fp16=err16,
                   plan=dict(pixels_per_thread=plan.pixels_per_thread,
                             rows_per_cta=plan.rows_per_cta, items_per_cta=plan.items_per_cta))
        row.update(speedup_vs_cudnn_fp32=row["us_cudnn_fp32"] / us32,
                   speedup_vs_cudnn_tf32=row["us_cudnn_tf32"] / us32,
                   speedup_vs_cusparse=us_cusparse / us32,
                   speedup_fp16_vs_cudnn_fp16=row["us_cudnn_fp16"] / us16)
        rows.append(row)
        log.info("conv %-16s b=%-3d s=%.2f ours %8.1f us | cuDNN fp32 %8.1f tf32 %8.1f | cuSPARSE %8.1f"
                 " | x%.2f vs fp32, x%.2f vs tf32 (err %.1e)", name, batch, s, us32,
                 row["us_cudnn_fp32"], row["us_cudnn_tf32"], us_cusparse,
                 row["speedup_vs_cudnn_fp32"], row["speedup_vs_cudnn_tf32"], err32)
    return rows


def bench_depthwise(layer: DepthwiseLayer, batch: int, sparsities: Sequence[float]) -> dict:
    """Dense and pruned depthwise kernels vs cuDNN NCHW and channels_last, and the bandwidth limit
    (input + output bytes at the nominal 3.0 TB/s)."""
    name, c, k, st, hw = layer
    x = torch.randn(batch, c, hw, hw, device="cuda")
    xcl = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, 1, k, k, device="cuda")
    torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = False, True
    ref = F.conv2d(x, w, None, st, k // 2, groups=c)
    row = dict(kind="dw", layer=name, batch=batch, c=c, k=k, stride=st, hw=hw,
               us_cudnn_nchw=graph_time(lambda: F.conv2d(x, w, None, st, k // 2, groups=c)),
               us_cudnn_cl=graph_time(lambda: F.conv2d(xcl, w, None, st, k // 2, groups=c)),
               us_ours_nchw=graph_time(lambda: depthwise_conv2d(x, w, None, st, k // 2)),
               us_ours_cl=graph_time(lambda: depthwise_conv2d(xcl, w, None, st, k // 2)),
               us_bw_limit=4 * (x.numel() + ref.numel()) / NOMINAL_BANDWIDTH * 1e6,
               rel_err_nchw=rel_err(depthwise_conv2d(x, w, None, st, k // 2), ref),
               rel_err_cl=rel_err(depthwise_conv2d(xcl, w, None, st, k // 2), ref))
    row["bw_fraction_nchw"] = row["us_bw_limit"] / row["us_ours_nchw"]
    row["bw_fraction_cl"] = row["us_bw_limit"] / row["us_ours_cl"]
    for s in sparsities:
        keep = bwt_mask(w, s)
        fmt = dense_to_balanced_depthwise(w, keep)
        tag = f"pruned{round(s * 100)}"
        row[f"us_ours_{tag}"] = graph_time(lambda: pruned_depthwise_conv2d(x, fmt, None, st, k // 2))
        row[f"rel_err_{tag}"] = rel_err(pruned_depthwise_conv2d(x, fmt, None, st, k // 2),
                                        F.conv2d(x, w * keep, None, st, k // 2, groups=c))
        row[f"speedup_{tag}_vs_cudnn_cl"] = row["us_cudnn_cl"] / row[f"us_ours_{tag}"]
    log.info("dw   %-16s b=%-3d ours nchw %7.1f cl %7.1f | cuDNN nchw %7.1f cl %7.1f | limit %6.1f us",
             name, batch, row["us_ours_nchw"], row["us_ours_cl"], row["us_cudnn_nchw"],
             row["us_cudnn_cl"], row["us_bw_limit"])
    return row


def bench_linear(name: str, n: int, k: int, batch: int, sparsities: Sequence[float]) -> list[dict]:
    """Sparse linear vs cuBLAS (TF32 on/off) and cuSPARSE SpMM."""
    x = torch.randn(batch, k, device="cuda")
    w = torch.randn(n, k, device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    us_tf32 = graph_time(lambda: F.linear(x, w))
    torch.backends.cuda.matmul.allow_tf32 = False
    us_fp32 = graph_time(lambda: F.linear(x, w))
    rows = []
    for s in sparsities:
        ws = prune_random(w, s)
        csr, w_csr, xt = dense_to_csr(ws), ws.to_sparse_csr(), x.t().contiguous()
        us_cusparse, how = timed(lambda: torch.mm(w_csr, xt))
        us = graph_time(lambda: sparse_linear(x, csr))
        rows.append(dict(kind="linear", layer=name, batch=batch, sparsity=s, n=n, k=k,
                         us_cublas_tf32=us_tf32, us_cublas_fp32=us_fp32, us_ours_fp32=us,
                         us_cusparse=us_cusparse, cusparse_timing=how,
                         rel_err_fp32=rel_err(sparse_linear(x, csr), F.linear(x, ws)),
                         speedup_vs_cublas_fp32=us_fp32 / us, speedup_vs_cublas_tf32=us_tf32 / us))
        log.info("fc   %-16s b=%-3d s=%.2f ours %8.1f us | cuBLAS fp32 %8.1f tf32 %8.1f | cuSPARSE %8.1f",
                 name, batch, s, us, us_fp32, us_tf32, us_cusparse)
    return rows


def copy_bandwidth() -> float:
    """Measured device-to-device copy bandwidth (bytes/s, read + write) on a 1 GiB buffer."""
    src = torch.empty(2**28, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / (graph_time(lambda: dst.copy_(src), reps=5) * 1e-6)


def environment() -> dict:
    import cupy

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return dict(device=props.name, sm_count=props.multi_processor_count,
                capability=f"{props.major}.{props.minor}", torch=torch.__version__,
                cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), cupy=cupy.__version__,
                python=platform.python_version(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                method="CUDA graph of 20 calls, median of 7 replays, us per call")


def select(layers: Sequence[NamedTuple] | Sequence[tuple], patterns: Sequence[str]) -> list:
    return [layer for layer in layers if any(fnmatch.fnmatchcase(layer[0], p) for p in patterns)]
