"""GSL (GESL, Park et al. 2017) vs uniform magnitude pruning on ResNet-20 (width 32), sklearn digits:
test accuracy and the speedup Park's model predicts on the H100 profile; on a GPU with CuPy, also the
measured speedup of the CuPy sparse kernels against cuDNN over the same layers.

    nice -n 10 python scripts/results_gsl.py                 # ~4 min on 2 CPU cores
    python scripts/results_gsl.py --seeds 0 1 --measure      # on a GPU machine: adds measured speedup

Protocol (one seed): a dense phase; from its weights (a) GSL with the settings of
conf/experiment/gsl_resnet20_digits.yaml for `gsl_epochs`, then masks fixed at lr/10 for `ft_epochs`
(Park's retraining step); (b) uniform magnitude pruning (every conv and Linear to the same sparsity,
one shot) then the same gsl_epochs + ft_epochs of training with masks fixed (lr, then lr/10), at
fixed levels and at GSL's global sparsity. Writes outputs/results_gsl/results.json,
docs/results_gsl.md (the table) and docs/gsl_resnet20_digits.png (per-layer sparsity).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from sparse_lightning.callbacks.base import MaskedPruningCallback
from sparse_lightning.callbacks.gsl import DENSE_SUFFIX
from sparse_lightning.criteria import magnitude_masks
from sparse_lightning.masks import get_parameter, select_parameters, set_masks
from sparse_lightning.perf import get_profile, layer_costs, model_speedup, useful_range
from sparse_lightning.resources import config_dir

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "results_gsl"
DOCS = ROOT / "docs"
EXPERIMENT = "gsl_resnet20_digits"
SAME_AS_GSL = "uniform at GSL's global sparsity"
log = logging.getLogger("results_gsl")


def compose_cfg():
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=[f"experiment={EXPERIMENT}", "output_dir=unused"])


def trainer(epochs: int, callbacks) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, callbacks=callbacks)


def module(cfg, datamodule, lr_scale: float = 1.0, state=None):
    net = instantiate(cfg.model.net, input_shape=list(datamodule.input_shape), num_classes=datamodule.num_classes)
    opt = cfg.model.optimizer
    optimizer = functools.partial(torch.optim.SGD, lr=opt.lr * lr_scale, momentum=opt.momentum,
                                  weight_decay=opt.weight_decay)
    m = instantiate(cfg.model, net=net, optimizer=optimizer, scheduler=None)
    if state is not None:
        from sparse_lightning.masks import attach_masks_from_state_dict

        attach_masks_from_state_dict(m, state)
        m.load_state_dict({k: v for k, v in state.items() if not k.endswith(DENSE_SUFFIX)})
    return m


def evaluate(m, datamodule, cfg, measure: bool) -> dict:
    names = select_parameters(m.net)
    acc = trainer(1, []).test(m, datamodule=datamodule, verbose=False)[0]["test/acc"]
    shape = list(datamodule.input_shape)
    costs = layer_costs(m.net, torch.randn(1, *shape), batch=cfg.sparsity.batch)
    h100 = get_profile(cfg.sparsity.profile)
    density = {n: float((get_parameter(m.net, n) != 0).float().mean()) for n in names}
    nnz = sum(density[n] * get_parameter(m.net, n).numel() for n in names)
    total = sum(get_parameter(m.net, n).numel() for n in names)
    row = dict(test_acc=acc, global_sparsity=1 - nnz / total, layer_sparsity={n: 1 - d for n, d in density.items()},
               predicted_speedup=model_speedup(costs, h100, density))
    if measure:
        from sparse_lightning.perf.bench import measure_model

        measured = measure_model(m.net.cuda(), shape, cfg.sparsity.batch)
        row.update(measured_speedup=measured["speedup"], measured=measured)
        m.net.cpu()
    return row


def run_seed(cfg, seed: int, args) -> dict:
    pl.seed_everything(seed, verbose=False)
    datamodule = instantiate(cfg.data, seed=seed)
    datamodule.prepare_data()
    datamodule.setup("fit")
    dense = module(cfg, datamodule)
    trainer(args.dense_epochs, []).fit(dense, datamodule=datamodule)
    state = {k: v.clone() for k, v in dense.state_dict().items()}
    results = {"dense": evaluate(dense, datamodule, cfg, args.measure)}

    t0 = time.time()
    m = module(cfg, datamodule, state=state)
    gsl = instantiate(cfg.sparsity)
    trainer(args.gsl_epochs, [gsl]).fit(m, datamodule=datamodule)
    m = module(cfg, datamodule, lr_scale=0.1, state=m.state_dict())
    trainer(args.ft_epochs, [MaskedPruningCallback()]).fit(m, datamodule=datamodule)
    results["gsl"] = evaluate(m, datamodule, cfg, args.measure)
    results["gsl"].update(decisions=dict(gsl.status), seconds=round(time.time() - t0, 1))
    log.info("seed %d gsl: %s", seed, {k: v for k, v in results["gsl"].items() if k not in ("layer_sparsity", "measured")})

    levels = [*args.uniform, round(results["gsl"]["global_sparsity"], 4)]
    for level in levels:
        m = module(cfg, datamodule, state=state)
        names = select_parameters(m)
        set_masks(m, magnitude_masks({n: get_parameter(m, n) for n in names}, level, "layer"))
        trainer(args.gsl_epochs, [MaskedPruningCallback()]).fit(m, datamodule=datamodule)
        m = module(cfg, datamodule, lr_scale=0.1, state=m.state_dict())
        trainer(args.ft_epochs, [MaskedPruningCallback()]).fit(m, datamodule=datamodule)
        key = SAME_AS_GSL if level == levels[-1] else f"uniform {level:.3f}"
        results[key] = evaluate(m, datamodule, cfg, args.measure)
        log.info("seed %d %s: acc %.4f predicted x%.3f", seed, key, results[key]["test_acc"],
                 results[key]["predicted_speedup"])
    return results


def canonical(key: str) -> str:
    """Result keys of older runs ("uniform 0.826 (= GSL global)") -> the current name."""
    return SAME_AS_GSL if key.endswith("(= GSL global)") else key


def plot(all_results: list[dict], ranges: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = all_results[0]
    names = list(first["gsl"]["layer_sparsity"])
    fig, ax = plt.subplots(figsize=(12, 4.5))
    xs = range(len(names))
    for i, n in enumerate(names):
        rng = ranges.get(n.removeprefix("net."))
        if rng is not None and rng.useful:
            ax.fill_between([i - 0.4, i + 0.4], rng.min_sparsity, rng.max_sparsity, color="g", alpha=0.25, lw=0)
    for key, marker in (("gsl", "o"), (SAME_AS_GSL, "s")):
        ax.plot(xs, [first[key]["layer_sparsity"][n] for n in names], marker, label=key)
    ax.set_xticks(list(xs), [n.removeprefix("net.").removesuffix(".weight") for n in names], rotation=70, fontsize=7)
    ax.set(ylabel="sparsity", title="ResNet-20 (w32), digits: per-layer sparsity; green: useful range (H100, batch 32)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds == seconds else "wall time not recorded in results.json"


def write_markdown(all_results: list[dict], args, cfg, elapsed: float) -> str:
    keys = list(all_results[0])
    measured = "measured_speedup" in all_results[0]["gsl"]

    def stat(key, field):
        values = [r[key][field] for r in all_results]
        mean = statistics.fmean(values)
        return f"{mean:.4f}" + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")

    lines = [
        "## GSL (Park et al. 2017) vs uniform magnitude pruning — ResNet-20 (width 32), sklearn digits",
        "",
        f"`nice -n 10 python scripts/results_gsl.py {' '.join(args.argv)}` (config `conf/experiment/{EXPERIMENT}.yaml`;"
        f" seeds {args.seeds}; {minutes(elapsed)} on this 2-core CPU). Dense phase {args.dense_epochs} epochs, then"
        f" {args.gsl_epochs} epochs of GSL (or of training with a one-shot uniform mask) and {args.ft_epochs} epochs with"
        f" masks fixed at lr/10. Predicted speedup: Park's model with the `{cfg.sparsity.profile}` profile at inference"
        f" batch {cfg.sparsity.batch}, over the conv/Linear layers, each layer using the sparse kernel only where the"
        " model predicts it faster. " + ("Measured: CuPy kernels vs cuDNN TF32, CUDA graphs." if measured else
                                          "**Measured speedup: not run (needs a GPU; rerun with `--measure` there).**"),
        "",
        "| method | test acc | global sparsity | predicted speedup (H100) |" + (" measured speedup |" if measured else ""),
        "|---|---|---|---|" + ("---|" if measured else ""),
    ]
    for key in keys:
        row = f"| {key} | {stat(key, 'test_acc')} | {stat(key, 'global_sparsity')} | {stat(key, 'predicted_speedup')} |"
        lines.append(row + (f" {stat(key, 'measured_speedup')} |" if measured else ""))
    decisions = all_results[0]["gsl"]["decisions"]
    counts = {d: sum(v == d for v in decisions.values()) for d in ("dropped", "frozen", "pruning", "restored")}
    lines += ["", f"GSL decisions (seed {args.seeds[0]}): {counts}; dropped: "
              + ", ".join(n.removeprefix("net.").removesuffix(".weight") for n, d in decisions.items() if d == "dropped"),
              "", "![per-layer sparsity](gsl_resnet20_digits.png)", ""]
    return "\n".join(lines)


BEGIN, END = "<!-- results_gsl.py: begin -->", "<!-- results_gsl.py: end -->"


def write_section(path: Path, text: str) -> None:
    """Replace the generated block of ``path`` (between BEGIN and END), keeping the hand-written rest."""
    block = f"{BEGIN}\n{text}\n{END}"
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END):]
    else:
        new = (old + "\n" if old else "") + block + "\n"
    path.write_text(new)


def main() -> None:
    import sys

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--dense-epochs", type=int, default=10)
    p.add_argument("--gsl-epochs", type=int, default=8)
    p.add_argument("--ft-epochs", type=int, default=4)
    p.add_argument("--uniform", type=float, nargs="+", default=[0.5, 0.9])
    p.add_argument("--measure", action="store_true", help="also measure the speedup (GPU with CuPy)")
    p.add_argument("--render-only", action="store_true", help="rewrite the docs from the saved results.json")
    args = p.parse_args()
    args.argv = sys.argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    cfg = compose_cfg()
    if args.render_only:
        saved = json.loads((OUT / "results.json").read_text())
        all_results = [{canonical(k): v for k, v in r.items()} for r in saved["results"]]
        for key in ("seeds", "dense_epochs", "gsl_epochs", "ft_epochs", "uniform", "argv"):
            setattr(args, key, saved["args"][key])
        elapsed = saved.get("seconds", float("nan"))
    else:
        start = time.time()
        all_results = [run_seed(cfg, seed, args) for seed in args.seeds]
        elapsed = time.time() - start
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "results.json").write_text(json.dumps(dict(args=vars(args), seconds=elapsed, results=all_results),
                                                     indent=1, default=str))
    dm = instantiate(cfg.data)
    net = instantiate(cfg.model.net, input_shape=list(dm.input_shape), num_classes=dm.num_classes)
    profile = get_profile(cfg.sparsity.profile)
    ranges = {n: useful_range(c, profile) for n, c in layer_costs(net, torch.randn(1, *dm.input_shape),
                                                                  batch=cfg.sparsity.batch).items()}
    plot(all_results, ranges, DOCS / "gsl_resnet20_digits.png")
    write_section(DOCS / "results_gsl.md", write_markdown(all_results, args, cfg, elapsed))
    log.info("wrote %s%s", DOCS / "results_gsl.md", "" if args.render_only else f", {OUT / 'results.json'}")


if __name__ == "__main__":
    main()
