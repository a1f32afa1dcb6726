"""Shared machinery of the results scripts: run ``train(cfg)`` on composed configs, cache, write docs.

Every number in docs/results.md comes from :func:`sparse_lightning.train.train` on a config composed
with Hydra's compose API from the repo's ``conf/`` tree plus the overrides listed next to it. Runs
go to ``outputs/results/<name>`` and their metrics into ``outputs/results/<name>/metrics.json``, so
a rerun skips finished runs (``--force`` reruns them). Runs execute in worker processes with one
torch thread each: on a 2-core machine two 1-thread runs are far faster than one 2-thread run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "results"
DOCS = ROOT / "docs"
RESULTS_MD = DOCS / "results.md"
QUIET = ["logger=csv", "callbacks.progress=null", "+trainer.enable_model_summary=false",
         "+trainer.enable_progress_bar=false", "+callbacks.monitor.print_table=false"]

log = logging.getLogger("results")


def parse_args(description: str, add_arguments=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    if add_arguments is not None:
        add_arguments(p)
    p.add_argument("--workers", type=int, default=2, help="parallel runs (one torch thread each)")
    p.add_argument("--force", action="store_true", help="rerun runs whose metrics are cached")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds to average over")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    return args


def compose_cfg(overrides: Sequence[str], output_dir: Path):
    from hydra import compose, initialize_config_dir

    from sparse_lightning.resources import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=[f"output_dir={output_dir}", *QUIET, *overrides])


def run_dir(name: str, force: bool) -> tuple[Path, dict | None]:
    """``outputs/results/<name>`` (created) and its cached metrics, or None when missing or ``force``."""
    out = OUT / name
    done = out / "metrics.json"
    if done.exists() and not force:
        return out, json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    return out, None


def _run_one(name: str, overrides: list[str], force: bool) -> dict:
    """Worker: one ``train(cfg)`` with its output (Lightning's chatter included) in ``run.log``."""
    import torch

    torch.set_num_threads(1)
    out, cached = run_dir(name, force)
    if cached is not None:
        return cached
    for stale in (out / "checkpoints").glob("*.ckpt"):
        stale.unlink()
    from sparse_lightning.train import train

    cfg = compose_cfg(overrides, out)
    start = time.time()
    with open(out / "run.log", "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        handler = logging.StreamHandler(f)
        logging.getLogger().addHandler(handler)
        try:
            metrics = train(cfg)
        finally:
            logging.getLogger().removeHandler(handler)
    result = {"name": name, "overrides": overrides, "seconds": round(time.time() - start, 1),
              **{k: float(v) for k, v in metrics.items() if k.startswith(("test/", "val/", "sparsity/global"))}}
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    return result


def run_all(jobs: dict[str, list[str]], args: argparse.Namespace) -> dict[str, dict]:
    """Run ``{name: overrides}`` in parallel worker processes; return ``{name: metrics}``."""
    results: dict[str, dict] = {}
    if not jobs:
        return results
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {name: pool.submit(_run_one, name, list(ov), args.force) for name, ov in jobs.items()}
        for name, fut in futures.items():
            results[name] = fut.result()
            r = results[name]
            log.info("%-40s test/acc=%.4f sparsity=%.4f (%ss)", name, r.get("test/acc", float("nan")),
                     r.get("sparsity/global", float("nan")), r.get("seconds"))
    return results


def checkpoint(name: str) -> Path:
    return OUT / name / "checkpoints" / "last.ckpt"


def load_trained(name: str):
    """The LightningModule of a finished run, rebuilt from its overrides and its last checkpoint."""
    import torch

    from sparse_lightning.masks import attach_masks_from_state_dict
    from sparse_lightning.train import build

    overrides = json.loads((OUT / name / "metrics.json").read_text())["overrides"]
    run = build(compose_cfg([o for o in overrides if not o.startswith("ckpt_path=")], OUT / name / "rebuild"))
    state = torch.load(checkpoint(name), map_location="cpu", weights_only=True)["state_dict"]
    attach_masks_from_state_dict(run.module, state)
    run.module.load_state_dict(state)
    return run.module


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def write_section(key: str, body: str) -> None:
    """Replace (or append) the block between ``<!-- BEGIN key -->`` and ``<!-- END key -->`` in docs/results.md."""
    DOCS.mkdir(exist_ok=True)
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Results\n\nMade by the scripts in `scripts/`; each section names its command.\n"
    block = f"<!-- BEGIN {key} -->\n{body.strip()}\n<!-- END {key} -->"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(key)} -->.*?<!-- END {re.escape(key)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    RESULTS_MD.write_text(text)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def command() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
