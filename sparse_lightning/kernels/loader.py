"""CuPy loader for the CUDA sources in `cuda_kernels/`: one `RawModule` per file, compiled by NVRTC
once per process and device architecture (CuPy also caches the binary on disk).

`TEMPLATES` lists the template instantiations each file provides; it is the single list both NVRTC
(`name_expressions`) and the nvcc PTX check (`compile_check.py`) instantiate. CuPy is imported
lazily so that CPU-only installs import this module fine.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from sparse_lightning.resources import kernel_dir

if TYPE_CHECKING:
    import cupy

CTYPES = {"float32": "float", "float16": "f16"}  # torch dtype name -> kernel element type
_TYPES = tuple(CTYPES.values())

TEMPLATES: dict[str, tuple[str, ...]] = {
    "sparse_conv": tuple(f"sparse_conv2d<{t}, {p}>" for t in _TYPES for p in (1, 2, 4, 8)),
    "sparse_linear": tuple(f"spmm_rowvec<{t}, {m}>" for t in _TYPES for m in (1, 2, 4, 8))
    + tuple(f"spmm_tile<{t}, {p}>" for t in _TYPES for p in (1, 2, 4)),
    "depthwise": tuple(
        f"dw_dense_{layout}<{t}, {k}, {s}>"
        for layout in ("nchw", "nhwc") for t in _TYPES for k in (3, 5, 7) for s in (1, 2)
    )
    + tuple(f"dw_generic<{t}>" for t in _TYPES)
    + tuple(f"dw_pruned_nchw<{t}, {p}>" for t in _TYPES for p in (1, 2, 4, 8)),
}
# -I: the .cu files include common.cuh from their own folder.
OPTIONS = ("-std=c++17", f"-I{kernel_dir()}")


def source(name: str) -> str:
    """The .cu text, prefixed with a #line directive so compiler errors cite the file's own lines."""
    path = kernel_dir() / f"{name}.cu"
    return f'#line 1 "{path}"\n' + path.read_text()


@functools.cache
def load_module(name: str) -> cupy.RawModule:
    import cupy as cp  # lazy: CPU installs import fine

    return cp.RawModule(code=source(name), options=OPTIONS, name_expressions=TEMPLATES[name])


@functools.cache
def get_kernel(name: str, expr: str, device_index: int) -> cupy.RawKernel:
    """The compiled kernel `expr` (one of TEMPLATES[name]) for a device, looked up once."""
    import cupy as cp

    with cp.cuda.Device(device_index):
        return load_module(name).get_function(expr)


def torch_stream(device_index: int) -> cupy.cuda.Stream:
    """torch's current stream as a CuPy stream (`Stream.from_external` on CuPy >= 14, where
    `ExternalStream` is deprecated)."""
    import cupy as cp
    import torch

    stream = torch.cuda.current_stream(device_index)
    if hasattr(cp.cuda.Stream, "from_external") and hasattr(stream, "__cuda_stream__"):
        return cp.cuda.Stream.from_external(stream)
    return cp.cuda.ExternalStream(stream.cuda_stream, device_index)


def launch(name: str, expr: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple[Any, ...],
           device_index: int, shared_mem: int = 0) -> None:
    """Launch `expr` on torch's current stream of `device_index` (CuPy order: grid, block, args)."""
    import cupy as cp

    kernel = get_kernel(name, expr, device_index)
    with cp.cuda.Device(device_index), torch_stream(device_index):
        kernel(grid, block, args, shared_mem=shared_mem)
