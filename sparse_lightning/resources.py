"""Where the package's data files live: `conf/` (Hydra) and `cuda_kernels/` (CUDA sources).

A wheel ships them inside the package (`sparse_lightning/conf`, `sparse_lightning/cuda_kernels`,
see pyproject's force-include); an editable install or a source checkout has them at the repo root.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def _locate(name: str) -> Path:
    for candidate in (_PACKAGE_DIR / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"sparse_lightning: cannot find the '{name}' folder next to {_PACKAGE_DIR}")


def config_dir() -> Path:
    """The Hydra config tree (`conf/`)."""
    return _locate("conf")


def kernel_dir() -> Path:
    """The CUDA kernel sources (`cuda_kernels/`)."""
    return _locate("cuda_kernels")
