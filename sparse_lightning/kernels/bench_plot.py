"""Plots of `sparse-bench` results (matplotlib, imported lazily: it is only needed here)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path


def plot_conv_speedups(rows: list[dict], path: Path, device: str) -> Path:
    """One panel per conv layer: speedup of the direct sparse conv vs sparsity, against cuDNN
    FP32 (solid) and TF32 (dashed) per batch, and against cuSPARSE on the im2col matrix (dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_layer: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_layer[r["layer"]].append(r)
    n = len(by_layer)
    cols = min(4, n)
    fig, axes = plt.subplots(-(-n // cols), cols, figsize=(4.2 * cols, 3.4 * -(-n // cols)),
                             squeeze=False, sharex=True)
    for ax, (layer, lrows) in zip(axes.flat, by_layer.items()):
        batches = sorted({r["batch"] for r in lrows})
        for i, batch in enumerate(batches):
            pts = sorted((r for r in lrows if r["batch"] == batch), key=lambda r: r["sparsity"])
            xs = [r["sparsity"] for r in pts]
            color = f"C{i}"
            ax.plot(xs, [r["speedup_vs_cudnn_fp32"] for r in pts], "-o", color=color, ms=3,
                    label=f"b={batch} vs cuDNN FP32")
            ax.plot(xs, [r["speedup_vs_cudnn_tf32"] for r in pts], "--", color=color,
                    label=f"b={batch} vs cuDNN TF32")
            ax.plot(xs, [r["speedup_vs_cusparse"] for r in pts], ":", color=color,
                    label=f"b={batch} vs cuSPARSE")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.axhline(3.0, color="grey", lw=0.5, ls="--")
        ax.set_yscale("log")
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("sparsity")
        ax.set_ylabel("speedup (x)")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7)
    fig.suptitle(f"Direct sparse conv speedup, kernel time by CUDA-graph replay ({device})", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_depthwise(rows: list[dict], path: Path, device: str) -> Path:
    """Per depthwise layer and batch: kernel time relative to the bandwidth limit (1.0 = at it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("us_cudnn_nchw", "cuDNN NCHW"), ("us_cudnn_cl", "cuDNN CL"), ("us_ours_nchw", "ours NCHW"),
            ("us_ours_cl", "ours CL")]
    pruned = sorted({k for r in rows for k in r if k.startswith("us_ours_pruned")})
    keys += [(k, "ours " + k[8:]) for k in pruned]
    labels = [f"{r['layer']} b{r['batch']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(rows)), 4.5))
    width = 0.8 / len(keys)
    for i, (key, label) in enumerate(keys):
        ax.bar([j + i * width for j in range(len(rows))], [r[key] / r["us_bw_limit"] for r in rows],
               width, label=label)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks([j + 0.4 for j in range(len(rows))], labels, rotation=70, fontsize=7)
    ax.set_ylabel("time / bandwidth limit")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title(f"Depthwise kernels vs the memory-bandwidth limit ({device})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
