"""DEPrune on MobileNetV2 and EfficientNet-B0: accuracy vs predicted depthwise-separable speedup,
DEPrune (DCP) vs DEPrune-B (+BWT) vs DEPrune-BH (+BWT+HSR), into docs/results_deprune.md + PNG.

    python scripts/results_deprune.py                       # synthetic 32x32 data, small CPU run
    python scripts/results_deprune.py --cifar10-dir DIR --width 1.0 --dense-epochs 100 \
        --finetune-epochs 100 --trainer gpu                  # the paper's CIFAR-10 setting

Each model is trained dense once (``train(cfg)``, ``sparsity=dense``); every variant starts from
that checkpoint, is pruned one-shot by the ``DEPrune`` callback at step 0 and fine-tuned with the
masks fixed (METHODS.md 5 pipeline). Speedups are *predicted* by the DR tile-count cost model
(``sparse_lightning.deprune.predicted_block_costs``); the GPU measurement is ``scripts/gpu_check.sh``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from results_common import DOCS, OUT, checkpoint, command, compose_cfg, load_trained, run_all, run_dir, table

log = logging.getLogger("results")
MODELS = ("mobilenet_v2", "efficientnet_b0")
VARIANTS = {"DEPrune": (False, False), "DEPrune-B": (True, False), "DEPrune-BH": (True, True)}
PW2 = {"mobilenet_v2": 0.3, "efficientnet_b0": 0.1}  # the paper's CIFAR-10 PW PRs (App. A.5, A.8)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cifar10-dir", default=None, help="cifar-10-batches-py folder; default: synthetic 32x32 data")
    p.add_argument("--width", type=float, default=0.5, help="width multiplier of both nets")
    p.add_argument("--dense-epochs", type=int, default=4)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--prs", type=float, nargs="+", default=[0.5, 0.8], help="depthwise prune ratios")
    p.add_argument("--trainer", default="cpu")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--force", action="store_true")
    p.add_argument("--bench-gpu", metavar="OUTDIR", default=None,
                   help="instead: time DEPrune-pruned MobileNetV2 blocks vs cuDNN on the GPU (JSON + PNG into OUTDIR)")
    p.add_argument("--batch", type=int, default=32, help="--bench-gpu batch size")
    p.add_argument("--weights", default=None, help="--bench-gpu: MobileNetV2 state_dict (a Lightning ckpt works); default random init")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    return args


def data_overrides(args) -> list[str]:
    if args.cifar10_dir:
        return ["data=cifar10", f"data.data_dir={args.cifar10_dir}"]
    return ["data=synthetic", "data.input_shape=[3,32,32]", "data.num_samples=1024", "data.batch_size=64"]


def base(args, model: str) -> list[str]:
    return [f"model={model}", f"model.net.width_mult={args.width}", f"trainer={args.trainer}", *data_overrides(args)]


def _finetune(name: str, overrides: list[str], dense: str, force: bool) -> dict:
    """Worker: build the DEPrune run, load the dense weights, fit (its last.ckpt is kept), test."""
    import torch

    from sparse_lightning.train import build

    torch.set_num_threads(1)
    out, cached = run_dir(name, force)
    if cached is not None:
        return cached
    start = time.time()
    with open(out / "run.log", "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        run = build(compose_cfg(overrides, out))
        state = torch.load(dense, map_location="cpu", weights_only=True)["state_dict"]
        run.module.load_state_dict(state)  # no masks yet: DEPrune attaches them in setup
        run.trainer.fit(run.module, datamodule=run.datamodule)
        test = run.trainer.test(run.module, datamodule=run.datamodule)[0]
    result = {"name": name, "overrides": overrides, "seconds": round(time.time() - start, 1),
              "test/acc": float(test["test/acc"])}
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    return result


def predict(name: str) -> dict:
    """DW sparsity, least-pruned group and predicted speedups of a finished run's final weights."""
    import torch

    from sparse_lightning.deprune import group_kept_counts, predicted_block_costs, predicted_speedups
    from sparse_lightning.masks import get_masks

    module = load_trained(name).cpu().eval()
    speed = predicted_speedups(predicted_block_costs(module, torch.zeros(1, 3, 32, 32)))  # CIFAR/synthetic size
    dw = {n: m for n, m in get_masks(module).items() if ".depthwise." in n}
    kept, total = sum(int(m.sum()) for m in dw.values()), sum(m.numel() for m in dw.values())
    real = [1 - int(group_kept_counts(m).max()) / (32 * m[0].numel()) for m in dw.values() if m.shape[0] >= 32]
    return {"dw_sparsity": 1 - kept / total if total else 0.0,
            "real_dw_sparsity_min": min(real) if real else (None if total else 0.0),
            "predicted_dw_speedup": speed["dw"], "predicted_ds_speedup": speed["ds"]}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MODELS), figsize=(5 * len(MODELS), 3.8))
    for ax, model in zip(axes, MODELS):
        mine = [r for r in rows if r["model"] == model]
        for variant, marker in zip(["dense checkpoint", "dense", *VARIANTS], "x*osD"):
            pts = sorted((r["predicted_ds_speedup"], r["test/acc"], r["pr"]) for r in mine if r["variant"] == variant)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=variant)
                for s, a, pr in pts:
                    if pr:
                        ax.annotate(f"{pr:.0%}", (s, a), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set(title=model, xlabel="predicted DS-block speedup (DR tile model)", ylabel="test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse()
    if args.bench_gpu:
        bench_gpu(Path(args.bench_gpu), args.batch, args.weights)
        return
    dense_jobs = {f"deprune/{m}/dense": [*base(args, m), "sparsity=dense", f"trainer.max_epochs={args.dense_epochs}",
                                         "model.optimizer.lr=0.05"] for m in MODELS}
    dense = run_all(dense_jobs, argparse.Namespace(workers=args.workers, force=args.force))
    jobs = {}
    for m in MODELS:
        ckpt = str(checkpoint(f"deprune/{m}/dense"))
        # The dense baseline gets the same fine-tuning budget (its BN statistics and LR schedule too).
        jobs[(m, "dense", 0.0)] = (f"deprune/{m}/dense_finetuned", [
            *base(args, m), "sparsity=dense", f"trainer.max_epochs={args.finetune_epochs}", "model.optimizer.lr=0.01"], ckpt)
        for pr in args.prs:
            for variant, (bwt, hsr) in VARIANTS.items():
                jobs[(m, variant, pr)] = (f"deprune/{m}/{variant}_pr{pr}", [
                    *base(args, m), "sparsity=deprune", f"sparsity.dw_sparsity={pr}", f"sparsity.pw2_sparsity={PW2[m]}",
                    f"sparsity.bwt={bwt}", f"sparsity.hsr={hsr}", f"trainer.max_epochs={args.finetune_epochs}",
                    "model.optimizer.lr=0.01"], ckpt)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {k: pool.submit(_finetune, *v, args.force) for k, v in jobs.items()}
        results = {k: f.result() for k, f in futures.items()}
    rows = [{"model": m, "variant": "dense checkpoint", "pr": 0.0, "test/acc": dense[f"deprune/{m}/dense"]["test/acc"],
             "dw_sparsity": 0.0, "real_dw_sparsity_min": 0.0, "predicted_dw_speedup": 1.0, "predicted_ds_speedup": 1.0}
            for m in MODELS]
    rows += [{"model": m, "variant": v, "pr": pr, "test/acc": r["test/acc"], **predict(r["name"])}
             for (m, v, pr), r in results.items()]
    for r in rows:
        log.info("%-16s %-10s PR %.1f acc %.4f DW sparsity %.3f pred DW %.2fx DS %.2fx", r["model"], r["variant"], r["pr"],
                 r["test/acc"], r["dw_sparsity"], r["predicted_dw_speedup"], r["predicted_ds_speedup"])
    DOCS.mkdir(exist_ok=True)
    png = DOCS / "deprune_accuracy_vs_speedup.png"
    plot(rows, png)
    (OUT / "deprune" / "summary.json").write_text(json.dumps(rows, indent=1))
    data = f"CIFAR-10 from `{args.cifar10_dir}`" if args.cifar10_dir else (
        "**synthetic** 32x32x3 data (10 class templates + unit Gaussian noise, 1,024 samples, batch 64; "
        "no CIFAR-10 on the machine that made it, so accuracies say little about CIFAR-10)")
    body = table(["model", "variant", "DW PR", "DW sparsity", "real DW PR (min group)", "test acc",
                  "pred. DW speedup", "pred. DS speedup"],
                 [[r["model"], r["variant"], f"{r['pr']:.0%}", f"{r['dw_sparsity']:.3f}",
                   "-" if r["real_dw_sparsity_min"] is None else f"{r['real_dw_sparsity_min']:.3f}", f"{r['test/acc']:.4f}",
                   f"{r['predicted_dw_speedup']:.2f}x", f"{r['predicted_ds_speedup']:.2f}x"] for r in rows])
    (DOCS / "results_deprune.md").write_text(
        f"# DEPrune: accuracy vs depthwise-separable speedup\n\nMade by `{command()}`: {data}; nets at width "
        f"{args.width}, small-image stem; dense {args.dense_epochs} epochs, then one-shot DEPrune and "
        f"{args.finetune_epochs} fine-tuning epochs from the same dense checkpoint. PW-conv2 filter PR: "
        f"{PW2['mobilenet_v2']:.0%} (MobileNetV2), {PW2['efficientnet_b0']:.0%} (EfficientNet-B0). "
        "`dense` is the dense checkpoint fine-tuned with the same budget (the fair baseline); "
        "`dense checkpoint` is before fine-tuning. DW sparsity: pruned / all depthwise weights; real DW PR: "
        "the least-pruned full 32-channel group's PR (what sets a layer's time).\n\n"
        "Speedups are **predicted**, not measured: DR implicit-GEMM cost G*32*T*ceil(max_g K_g/T)*HW per "
        "DW-conv (T = 32, the kernel's K tile) plus nnz*HW per PW-conv, summed over the depthwise-separable "
        "blocks (`sparse_lightning.deprune.predicted_block_costs`). The H100 measurement is in "
        "`scripts/gpu_check.sh` (not run yet).\n\n"
        f"![accuracy vs predicted speedup]({png.name})\n\n{body}\n\n## Reading it\n\n"
        "* One seed and a small test split (204 images with the synthetic default): accuracy differences of a few "
        "points between variants are within noise; no accuracy claim about BWT or HSR follows from this run.\n"
        "* BWT raises the predicted speedup at equal DW sparsity because the slowest group's K falls to the "
        "target (the real DW PR column rises to the target PR), as the paper describes.\n"
        "* HSR's default alpha_l is the tile-count prediction ceil(K/T)/floor(K/T), equal for all layers with "
        "the same K, so ties are broken in model order: the early, high-resolution layers prune eps_l more and "
        "the late ones restore. Total DW sparsity stays about the same, but cost moves, so the predicted HSR "
        "gain here is larger than the paper's measured few percent. With 3x3 kernels at 80% "
        "(K = 58 of 288), eps_l = 26 is almost half the kept weights. Pass measured alphas "
        "(`DEPrune(alpha_table=...)`; `gpu_check.sh` measures them) for the paper's procedure.\n"
        "* `dense checkpoint` scores low because 4 epochs leave BatchNorm running statistics unsettled; the "
        "same-budget `dense` row is the baseline.\n")
    log.info("wrote %s and %s", DOCS / "results_deprune.md", png)


# ---------------------------------------------------------------------------------------------------
# GPU measurement (scripts/gpu_check.sh): DEPrune-pruned MobileNetV2 blocks vs dense cuDNN.

BENCH_PR, BENCH_PW2 = 0.78, 0.5  # the paper's MobileNetV2 ImageNet setting (Table 2)


def _conv_inputs(net, x):
    """Input of every Conv2d of ``net`` on ``x`` (one forward pass)."""
    import torch
    from torch import nn

    inputs, hooks = {}, []
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_pre_hook(lambda mod, a, n=name: inputs.setdefault(n, a[0].detach())))
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return inputs


def _blocks(net):
    """(expand, depthwise, project) conv modules of each inverted-residual block."""
    from sparse_lightning.deprune import find_depthwise_separable

    mods = dict(net.named_modules())
    out = []
    for dw, pw2 in find_depthwise_separable(net):
        exp = dw.replace("depthwise", "expand")
        out.append((exp if exp in mods else None, dw, pw2))
    return out


def _time_dw(conv, x, mask):
    """Microseconds of the pruned kernel on this layer's input with ``mask`` (None: dense cuDNN),
    and the max relative error against F.conv2d on the masked weight."""
    import torch.nn.functional as F

    from sparse_lightning.kernels.benchmark import rel_err, timed
    from sparse_lightning.kernels.depthwise import pruned_depthwise_conv2d
    from sparse_lightning.kernels.formats import dense_to_balanced_depthwise

    w = conv.weight.detach()
    if mask is None:
        return timed(lambda: F.conv2d(x, w, None, conv.stride, conv.padding, groups=conv.groups))[0], 0.0
    fmt = dense_to_balanced_depthwise(w, mask)
    y = pruned_depthwise_conv2d(x, fmt, None, conv.stride, conv.padding)
    err = rel_err(y, F.conv2d(x, w * mask, None, conv.stride, conv.padding, groups=conv.groups))
    return timed(lambda: pruned_depthwise_conv2d(x, fmt, None, conv.stride, conv.padding))[0], err


def _time_pw(conv, x, keep_rows=None):
    """cuDNN 1x1 conv; with ``keep_rows`` only the kept output filters (PW-conv2 filter pruning)."""
    import torch.nn.functional as F

    from sparse_lightning.kernels.benchmark import timed

    w = conv.weight.detach() if keep_rows is None else conv.weight.detach()[keep_rows].contiguous()
    return timed(lambda: F.conv2d(x, w))[0]


def bench_gpu(out: Path, batch: int, weights: str | None) -> None:
    """DW-conv and DS-block (PW1 + DW + PW2 convs) times of MobileNetV2 (ImageNet shapes, fp32 NCHW)
    at ``batch``: dense cuDNN vs DEPrune, -B, -BH (predicted α) and -BH (measured α), plus a K sweep."""
    import platform

    import torch

    from sparse_lightning.deprune import (
        KERNEL_K_TILE,
        align_groups,
        bwt_dw_mask,
        deprune_masks,
        group_kept_counts,
    )
    from sparse_lightning.models.mobilenet import MobileNetV2

    if not torch.cuda.is_available():
        raise SystemExit("--bench-gpu needs a CUDA GPU")
    out.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = True
    net = MobileNetV2((3, 224, 224), 1000, small_input=False)
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if not k.endswith("_mask")})
    net = net.cuda().eval()
    inputs = _conv_inputs(net, torch.randn(batch, 3, 224, 224, device="cuda"))
    mods, blocks = dict(net.named_modules()), _blocks(net)

    # alpha_l measured: time at the BWT K vs aligned down to a multiple of the tile.
    alpha = {}
    for _, dw, _ in blocks:
        conv, x = mods[dw], inputs[dw]
        keep = bwt_dw_mask(conv.weight, BENCH_PR)
        k = int(group_kept_counts(keep).max())
        if k % KERNEL_K_TILE and k >= KERNEL_K_TILE:
            down = align_groups(conv.weight, keep, KERNEL_K_TILE, True, None)
            alpha[f"{dw}.weight"] = _time_dw(conv, x, keep)[0] / _time_dw(conv, x, down)[0]
    variants = {"DEPrune": dict(bwt=False, hsr=False), "DEPrune-B": dict(bwt=True, hsr=False),
                "DEPrune-BH (predicted alpha)": dict(bwt=True, hsr=True),
                "DEPrune-BH (measured alpha)": dict(bwt=True, hsr=True, alpha=alpha)}
    masks = {v: deprune_masks(net, BENCH_PR, BENCH_PW2, **kw)[0] for v, kw in variants.items()}
    layers = []
    for exp, dw, pw2 in blocks:
        row = {"block": dw.rsplit(".depthwise", 1)[0], "channels": mods[dw].out_channels,
               "kernel": mods[dw].kernel_size[0], "stride": mods[dw].stride[0], "hw_in": list(inputs[dw].shape[-2:])}
        pw1_us = _time_pw(mods[exp], inputs[exp]) if exp else 0.0
        row["dense"] = {"dw_us": _time_dw(mods[dw], inputs[dw], None)[0], "pw1_us": pw1_us,
                        "pw2_us": _time_pw(mods[pw2], inputs[pw2])}
        for v, m in masks.items():
            dw_mask = m[f"{dw}.weight"]
            us, err = _time_dw(mods[dw], inputs[dw], dw_mask)
            keep_rows = m[f"{pw2}.weight"].reshape(mods[pw2].out_channels, -1).all(1)
            row[v] = {"dw_us": us, "rel_err": err, "pw1_us": pw1_us, "pw2_us": _time_pw(mods[pw2], inputs[pw2], keep_rows),
                      "kept_per_group": group_kept_counts(dw_mask).tolist()}
        layers.append(row)
    names = ["dense", *variants]
    totals = {v: {"dw_us": sum(r[v]["dw_us"] for r in layers),
                  "ds_us": sum(r[v]["dw_us"] + r[v]["pw1_us"] + r[v]["pw2_us"] for r in layers)} for v in names}
    for v in names:
        totals[v]["dw_speedup"] = totals["dense"]["dw_us"] / totals[v]["dw_us"]
        totals[v]["ds_speedup"] = totals["dense"]["ds_us"] / totals[v]["ds_us"]
    gains = {"bwt_dw": totals["DEPrune"]["dw_us"] / totals["DEPrune-B"]["dw_us"],
             "bwt_ds": totals["DEPrune"]["ds_us"] / totals["DEPrune-B"]["ds_us"],
             "hsr_predicted_dw": totals["DEPrune-B"]["dw_us"] / totals["DEPrune-BH (predicted alpha)"]["dw_us"],
             "hsr_measured_dw": totals["DEPrune-B"]["dw_us"] / totals["DEPrune-BH (measured alpha)"]["dw_us"],
             "hsr_measured_ds": totals["DEPrune-B"]["ds_us"] / totals["DEPrune-BH (measured alpha)"]["ds_us"]}
    # K sweep: one stage-2 layer's DW time against the kept count per group (steps of the tile?).
    sweep_dw = blocks[2][1]
    conv, x = mods[sweep_dw], inputs[sweep_dw]
    per_group = 32 * conv.weight[0].numel()
    sweep = []
    for kept in range(per_group, 7, -8):
        keep = bwt_dw_mask(conv.weight, 1 - kept / per_group)
        sweep.append({"kept_per_group": int(group_kept_counts(keep).max()), "us": _time_dw(conv, x, keep)[0]})
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "model": "MobileNetV2 width 1.0, 224x224, fp32 NCHW, convs only (no BN/activation)",
              "weights": weights or "random init (kaiming); DCP's group imbalance is smaller than on trained weights",
              "batch": batch, "dw_pr": BENCH_PR, "pw2_pr": BENCH_PW2, "tile": KERNEL_K_TILE,
              "timing": "CUDA graph of 20 calls, median of 7 replays (kernels.benchmark.timed)",
              "alpha_measured": alpha, "totals": totals, "gains": gains, "layers": layers,
              "k_sweep": {"layer": sweep_dw, "rows": sweep}, "goal_ds_speedup": 1.5}
    (out / "deprune_bench.json").write_text(json.dumps(result, indent=1))
    _plot_bench(result, out / "deprune_bench.png")
    log.info("DS speedup vs cuDNN: %s; gains %s", {v: round(t["ds_speedup"], 3) for v, t in totals.items()}, gains)


def _plot_bench(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["totals"])
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4))
    idx = range(len(result["layers"]))
    for i, v in enumerate(names):
        a.bar([j + 0.15 * i for j in idx], [r[v]["dw_us"] for r in result["layers"]], 0.15, label=v)
    a.set(title=f"DW-conv time per block, batch {result['batch']}", xlabel="block", ylabel="us")
    a.legend(fontsize=7)
    b.bar(range(len(names)), [result["totals"][v]["ds_speedup"] for v in names], color="C1", label="DS block")
    b.bar(range(len(names)), [result["totals"][v]["dw_speedup"] for v in names], 0.4, color="C0", label="DW only")
    b.axhline(result["goal_ds_speedup"], ls="--", c="k", lw=0.8)
    b.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=7)
    b.set(title=f"speedup vs cuDNN ({result['device']})", ylabel="x")
    b.legend(fontsize=7)
    rows = result["k_sweep"]["rows"]
    c.plot([r["kept_per_group"] for r in rows], [r["us"] for r in rows], marker=".")
    for k in range(result["tile"], max(r["kept_per_group"] for r in rows) + 1, result["tile"]):
        c.axvline(k, c="grey", lw=0.5)
    c.set(title=f"{result['k_sweep']['layer']}: time vs kept K per group", xlabel="K (kept per 32-channel group)", ylabel="us")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
