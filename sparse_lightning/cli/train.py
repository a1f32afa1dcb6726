"""``sparse-train``: the Hydra app around :func:`sparse_lightning.train.train`.

    sparse-train                                   # MNIST-1D, 1-D CNN, 90% magnitude pruning, CPU, wandb offline
    sparse-train model=gru sparsity.target=0.9     # any override
    sparse-train -m sparsity.target=0.8,0.9        # a sweep

Before Hydra runs, the command line is composed once with Hydra's compose API and validated,
so a wrong group option, key or value prints one line and exits with status 2.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from sparse_lightning.config import first_line
from sparse_lightning.errors import ConfigError
from sparse_lightning.resources import config_dir

log = logging.getLogger("sparse_lightning")
CONFIG_NAME = "train"
EXIT_CONFIG = 2


def fail(message: str, prog: str = "sparse-train") -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(EXIT_CONFIG)


def checked_main(prog: str, check: Callable[[list[str]], None], run: Callable[[], object]) -> None:
    """Pre-check a single run's overrides (a config error: one line, exit 2), then hand over to Hydra's ``run``."""
    overrides = _overrides(sys.argv[1:])
    if overrides is not None:
        try:
            check(overrides)
        except ConfigError as exc:
            fail(str(exc), prog)
    run()


def _overrides(argv: list[str]) -> list[str] | None:
    """The plain overrides of a single run, or None when Hydra flags make a pre-check moot."""
    if any(a.startswith("-") for a in argv):  # --multirun, --help, --cfg, -c ...: Hydra's business
        return None
    return [a for a in argv if not a.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))]


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with overrides, outside a Hydra run; ConfigError on failure."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            return compose(config_name, overrides=overrides + ["output_dir=precheck"])
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_hydra_message(exc)) from None


def precheck(overrides: list[str]) -> None:
    """Compose and validate the config this command line asks for; raise ConfigError."""
    from sparse_lightning.config import validate

    validate(compose_config(CONFIG_NAME, overrides))


def _hydra_message(exc: BaseException) -> str:
    text = str(exc)
    if "Could not find" in text and "Available options" in text:
        listing = text.split("Available options", 1)[1].splitlines()[1:]
        options = [line.strip() for line in listing if line.startswith("\t") and "=" not in line]
        return f"{first_line(exc).removeprefix('In ').split(': ', 1)[-1]}; available: {', '.join(options)}"
    if text.startswith("Could not override"):
        return f"{first_line(exc)} It is not in the config (check the spelling; `+key=value` adds a new key)."
    return first_line(exc)


@hydra.main(config_path=str(config_dir()), config_name=CONFIG_NAME, version_base="1.3")
def _run(cfg: DictConfig) -> float | None:
    from sparse_lightning.train import train

    try:
        metrics = train(cfg)
    except (ConfigError, FloatingPointError) as exc:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # One job of a sweep: raise, so the launcher records this job as failed and the sweep reports
            # it (sys.exit in a submitit job leaves no result, and the driver waits for it).
            log.error("sparse-train: error: %s", exc)
            raise
        fail(str(exc))
    return metrics.get("test/acc")  # the objective Hydra sweepers optimize


def main() -> None:
    checked_main("sparse-train", precheck, _run)


if __name__ == "__main__":
    main()
