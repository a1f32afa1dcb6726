"""Which implementation runs an op: the CUDA kernel (tensor on a GPU and CuPy importable) or the
pure-torch reference. `SPARSE_LIGHTNING_BACKEND=reference` forces the reference, `=cuda` makes a
missing GPU/CuPy an error instead of a fallback; the default `auto` falls back and says so once
per process.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from typing import Any

import torch

from sparse_lightning.errors import ConfigError

log = logging.getLogger(__name__)
BACKEND_ENV = "SPARSE_LIGHTNING_BACKEND"
_BACKENDS = ("auto", "cuda", "reference")


@functools.cache
def cupy_available() -> bool:
    """True when CuPy imports and sees a CUDA device (never imports CuPy when it is not installed)."""
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return bool(cupy.is_available())
    except Exception:  # a broken CUDA/NVRTC install is a fallback, not a crash
        return False


def _fallback_reason(x: torch.Tensor) -> str:
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    if not x.is_cuda:
        return f"the input is on {x.device}"
    return "CuPy is not importable (pip install 'sparse-lightning[gpu]')"


@functools.cache
def warn_fallback_once(reason: str) -> None:
    """Log the fallback once per process (cached on nothing but the first reason seen)."""
    log.warning("sparse_lightning kernels: %s; running the pure-torch reference implementations "
                "(correct, but slow).", reason)


def use_cuda_kernel(x: torch.Tensor) -> bool:
    """Decide the backend for an op whose main input is `x`."""
    choice = os.environ.get(BACKEND_ENV, "auto")
    if choice not in _BACKENDS:
        raise ConfigError(f"{BACKEND_ENV}={choice!r}: allowed values are {', '.join(_BACKENDS)}")
    if choice == "reference":
        return False
    if x.is_cuda and cupy_available():
        return True
    if choice == "cuda":
        raise RuntimeError(f"{BACKEND_ENV}=cuda but {_fallback_reason(x)}")
    if warn_fallback_once.cache_info().currsize == 0:
        warn_fallback_once(_fallback_reason(x))
    return False


@functools.cache
def sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def kernel_args(*args: Any) -> tuple[Any, ...]:
    """Kernel arguments: a tensor is passed as its device pointer (zero copy, like DLPack, but with
    no CuPy array built and no CUDA API call per launch, so the launch is also capturable in a
    CUDA graph); None -> a NULL pointer; Python ints -> int32 (a `long long` parameter must be
    passed as `numpy.int64` explicitly)."""
    import numpy as np

    out: list[Any] = []
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    for a in args:
        if isinstance(a, torch.Tensor):
            if a.device != device or not a.is_contiguous():
                raise ValueError(f"kernel tensor arguments must be contiguous and on {device}, "
                                 f"got one on {a.device} (contiguous={a.is_contiguous()})")
            out.append(np.uint64(a.data_ptr()))
        elif a is None:
            out.append(np.uint64(0))
        elif isinstance(a, np.generic):
            out.append(a)
        elif isinstance(a, int):
            check_int32(abs(a))
            out.append(np.int32(a))
        else:
            raise TypeError(f"unsupported kernel argument {type(a).__name__}")
    return tuple(out)


def check_int32(*sizes: int) -> None:
    """The kernels index within one image/matrix with int32; refuse sizes that would overflow."""
    for s in sizes:
        if s >= 2**31:
            raise ValueError(f"size {s} exceeds the int32 indexing of the CUDA kernels")
