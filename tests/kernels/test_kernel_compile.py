"""Every cuda_kernels/*.cu compiles to PTX for sm_80 and sm_90 with nvcc, with every template
instantiation the loader asks NVRTC for present as a PTX `.entry`; and NVRTC itself (the runtime
compiler, no GPU needed) compiles them with the loader's options and name expressions."""

from __future__ import annotations

import importlib.util
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from sparse_lightning.kernels import compile_check, loader

NAMES = compile_check.kernel_names()


def test_every_source_has_templates():
    assert set(NAMES) == set(loader.TEMPLATES) == {"sparse_conv", "sparse_linear", "depthwise"}


@pytest.fixture(scope="module")
def nvcc_ptx():
    """All (file, arch) PTX, compiled concurrently (nvcc runs as a subprocess)."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH: install the CUDA toolkit to check PTX compilation")
    jobs = [(name, arch) for name in NAMES for arch in compile_check.ARCHS]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(jobs, pool.map(lambda j: compile_check.nvcc_ptx(*j), jobs)))


@pytest.mark.parametrize("arch", compile_check.ARCHS)
@pytest.mark.parametrize("name", NAMES)
def test_nvcc_ptx_has_every_entry(nvcc_ptx, name, arch):
    ptx = nvcc_ptx[(name, arch)]
    assert f".target {arch}" in ptx
    assert compile_check.missing_entries(name, ptx) == []
    assert len(compile_check.ptx_entries(ptx)) == len(loader.TEMPLATES[name])


def _nvrtc_available() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _nvrtc_available(), reason="needs CuPy and the NVRTC wheel "
                    "(pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12)")
@pytest.mark.parametrize("name", NAMES)
def test_nvrtc_compiles_every_name_expression(name):
    ptx, lowered = compile_check.nvrtc_ptx(name, "sm_90")
    assert set(lowered) == set(loader.TEMPLATES[name])
    assert set(lowered.values()) == set(compile_check.ptx_entries(ptx))
