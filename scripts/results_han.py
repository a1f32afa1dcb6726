"""Han et al. (2015) on small data: compression in the relative-index format, and L1 vs L2.

    python scripts/results_han.py --seeds 0 1 2

1. Compression: ``conf/experiment/han_{mlp_digits,mlp_mnist1d,lenet5_digits}.yaml`` over a sweep of
   the quality parameter q; each pruned checkpoint is exported with ``sparse_lightning.export``
   (5-bit indices for FC, 8-bit for conv) and compared with the same recipe left dense (the
   callback with ``dense_steps=1.0``: same regularizer, no prune).
2. L1 vs L2, with and without retraining (Han Fig. 5), MLP on digits: train dense with L1 or L2,
   then from that checkpoint prune once at a sweep of q and either evaluate at once
   (``lr_scale=0``: no retraining) or retrain at lr/10.

Writes docs/results.md (section "han") and docs/han_compression.png, docs/han_l1_l2.png.
"""

from __future__ import annotations

import results_common as rc

EXPERIMENTS = {
    "han_mlp_digits": {"kinds": ["linear"], "q": [0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0, 1.1]},
    "han_mlp_mnist1d": {"kinds": ["linear"], "q": [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]},
    "han_lenet5_digits": {"kinds": ["linear"], "q": [0.6, 0.7, 0.8, 0.9, 1.0, 1.1]},  # conv q fixed at 0.5
}
L1L2_DENSE, L1L2_RETRAIN, L1L2_LAMBDA = 1000, 420, 1.0e-4  # optimizer steps (digits: 21 per epoch)
L1L2_Q = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5]


def compression(name: str) -> tuple[float, float, list]:
    import torch

    from sparse_lightning.export import compress_state_dict, param_ratio, size_report, total_ratio

    state = torch.load(rc.checkpoint(name), map_location="cpu", weights_only=True)["state_dict"]
    rows = size_report(compress_state_dict(state))
    return total_ratio(rows), param_ratio(rows), rows


def main() -> None:
    args = rc.parse_args(__doc__.split("\n\n")[0])
    seeds = args.seeds
    jobs = {}
    for exp, spec in EXPERIMENTS.items():
        for s in seeds:
            jobs[f"{exp}_dense_s{s}"] = [f"experiment={exp}", "sparsity.dense_steps=1.0", f"seed={s}"]
            for q in spec["q"]:
                jobs[f"{exp}_q{q}_s{s}"] = [f"experiment={exp}", f"seed={s}", *[f"sparsity.quality.{k}={q}" for k in spec["kinds"]]]
    results = rc.run_all(jobs, args)
    sections = [HEADER.format(cmd=rc.command())]
    curves = {}
    for exp, spec in EXPERIMENTS.items():
        text, curves[exp] = compression_section(exp, spec, results, seeds)
        sections.append(text)
    sections.append(f"![accuracy loss vs compression]({plot_compression(curves)})")
    sections.append(l1_l2(args))
    rc.write_section("han", "\n\n".join(sections))


HEADER = """## Han et al. (2015): iterative pruning, compression in the relative-index format, L1 vs L2

Made by `{cmd}`. Every run is `train(cfg)` on `conf/experiment/<name>.yaml` plus the overrides in
its `outputs/results/<run>/metrics.json`; compression is measured on the run's last checkpoint with
`sparse_lightning.export` (what `sparse-export` writes): 5-bit relative indices for FC weights,
8-bit for conv, a dummy zero per gap longer than the index range, biases dense, all against the
whole model in dense fp32. "Han rate" is Han's Table 1 measure (all weights / weights kept)."""


def compression_section(exp: str, spec: dict, results: dict, seeds: list[int]) -> tuple[str, list]:
    dense = rc.mean([results[f"{exp}_dense_s{s}"]["test/acc"] for s in seeds])
    rows, curve, best = [], [], None
    for q in spec["q"]:
        names = [f"{exp}_q{q}_s{s}" for s in seeds]
        acc = rc.mean([results[n]["test/acc"] for n in names])
        sp = rc.mean([results[n]["sparsity/global"] for n in names])
        ratios = [compression(n)[:2] for n in names]
        ratio, rate = rc.mean([r[0] for r in ratios]), rc.mean([r[1] for r in ratios])
        loss = 100 * (dense - acc)
        rows.append([q, f"{sp:.1%}", f"{100 * acc:.2f}", f"{-loss:+.2f}", f"{rate:.1f}x", f"{ratio:.1f}x"])
        curve.append((ratio, loss))
        if loss <= 1.0 and (best is None or ratio > best[1]):
            best = (q, ratio, loss, sp, names[0])
    lines = [f"### {exp} (dense: {100 * dense:.2f}%, mean of seeds {seeds})", "",
             rc.table(["q", "sparsity", "test acc (%)", "vs dense (points)", "Han rate", "compression (bytes)"], rows), ""]
    if best is None:
        lines.append("No q in the sweep keeps the loss within 1 point (goal: >= 10x at <= 1 point loss): **not met**.")
    else:
        q, ratio, loss, sp, name = best
        verdict = "met" if ratio >= 10 else "**not met**"
        lines.append(f"Best within 1 point: q = {q}: {ratio:.1f}x smaller than dense fp32 at {sp:.1%} sparsity, "
                     f"{loss:.2f} points lost (goal: >= 10x at <= 1 point loss): {verdict}.")
        from sparse_lightning.export import format_report

        lines += ["", f"Size report of `{name}` (seed {seeds[0]}), as `sparse-export` prints it:", "", "```",
                  format_report(compression(name)[2]), "```"]
    return "\n".join(lines), curve


def plot_compression(curves: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for exp, points in curves.items():
        points = sorted(points)
        ax.plot([r for r, _ in points], [loss for _, loss in points], marker="o", label=exp.removeprefix("han_"))
    ax.axhline(1.0, color="gray", ls=":", lw=1)
    ax.axvline(10.0, color="gray", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xticks([1.5, 2, 3, 5, 10, 20])
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("compression vs dense fp32 (relative-index format)")
    ax.set_ylabel("accuracy loss vs dense (points)")
    ax.set_title("Han iterative pruning: accuracy loss vs compression")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(rc.DOCS / "han_compression.png", dpi=120)
    plt.close(fig)
    return "han_compression.png"


def l1_l2(args) -> str:
    def base(reg: str) -> list[str]:
        return ["experiment=han_mlp_digits", "~sparsity.regularization", f"+sparsity.regularization={{{reg}:{L1L2_LAMBDA}}}",
                f"sparsity.dense_steps={L1L2_DENSE}", "sparsity.rounds=1"]

    # the dense runs stop at the prune step; their checkpoints start every pruned run
    dense = rc.run_all({f"l1l2_{reg}_dense": [*base(reg), f"sparsity.retrain_steps={L1L2_RETRAIN}",
                                              f"trainer.max_steps={L1L2_DENSE}"] for reg in ("l1", "l2")}, args)
    jobs = {}
    for reg in ("l1", "l2"):
        for retrain in (False, True):
            steps = L1L2_RETRAIN if retrain else 1
            for q in L1L2_Q:
                jobs[f"l1l2_{reg}_{'retrain' if retrain else 'prune'}_q{q}"] = [
                    *base(reg), f"sparsity.retrain_steps={steps}", f"trainer.max_steps={L1L2_DENSE + steps}",
                    f"sparsity.quality.linear={q}", f"sparsity.lr_scale={0.1 if retrain else 0.0}",
                    f"ckpt_path={rc.checkpoint(f'l1l2_{reg}_dense')}"]
    results = rc.run_all(jobs, args)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    rows = []
    for reg in ("l1", "l2"):
        base = dense[f"l1l2_{reg}_dense"]["test/acc"]
        for mode, style in (("prune", "--"), ("retrain", "-")):
            pts = sorted((results[f"l1l2_{reg}_{mode}_q{q}"]["sparsity/global"],
                          100 * (results[f"l1l2_{reg}_{mode}_q{q}"]["test/acc"] - base), q) for q in L1L2_Q)
            label = f"{reg.upper()} regularization {'w/o' if mode == 'prune' else 'w/'} retrain"
            ax.plot([100 * s for s, _, _ in pts], [d for _, d, _ in pts], style, marker="o", label=label)
            rows += [[reg.upper(), "no" if mode == "prune" else "yes", q, f"{s:.1%}", f"{d:+.2f}"] for s, d, q in pts]
    ax.set_xlabel("parameters pruned away (%)")
    ax.set_ylabel("accuracy change vs its dense model (points)")
    ax.set_title("MLP on digits: L1 vs L2, with and without retraining")
    ax.set_ylim(bottom=max(ax.get_ylim()[0], -60))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(rc.DOCS / "han_l1_l2.png", dpi=120)
    plt.close(fig)
    d1, d2 = (100 * dense[f"l1l2_{r}_dense"]["test/acc"] for r in ("l1", "l2"))
    return "\n".join([
        "### L1 vs L2, with and without retraining (Han Fig. 5), MLP on digits", "",
        f"Dense training for {L1L2_DENSE} steps with L1 or L2 ({L1L2_LAMBDA:g}) added by the callback "
        f"(dense test accuracy: L1 {d1:.2f}%, L2 {d2:.2f}%), then one prune at q and either no retraining "
        f"(`lr_scale=0`) or {L1L2_RETRAIN} steps of retraining at lr/10 with the same regularizer. Seed 0.", "",
        rc.table(["reg.", "retrain", "q", "sparsity", "vs its dense (points)"], rows), "",
        "![L1 vs L2](han_l1_l2.png)"])


if __name__ == "__main__":
    main()
