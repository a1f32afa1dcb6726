"""Compile every `cuda_kernels/*.cu` without a GPU and check the kernels are really in the output.

* `nvcc_ptx(name, arch)`: nvcc -ptx on a translation unit that includes the .cu and takes the
  address of every `loader.TEMPLATES[name]` instantiation (so nvcc instantiates exactly what
  NVRTC will), then `missing_entries` demangles the PTX `.entry` names and reports any missing.
* `nvrtc_ptx(name, arch)`: the runtime path, NVRTC with the same name expressions and options as
  `loader.load_module` (needs CuPy and the NVRTC wheel, no GPU).

    python -m sparse_lightning.kernels.compile_check      # both archs, every file; exit 1 on failure
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from sparse_lightning.kernels import loader
from sparse_lightning.resources import kernel_dir

ARCHS = ("sm_80", "sm_90")


def kernel_names() -> list[str]:
    return sorted(p.stem for p in kernel_dir().glob("*.cu"))


def nvcc_ptx(name: str, arch: str = "sm_80", nvcc: str | None = None) -> str:
    nvcc = nvcc or shutil.which("nvcc")
    if nvcc is None:
        raise FileNotFoundError("nvcc is not on PATH")
    refs = ", ".join(f"(void*)&{expr}" for expr in loader.TEMPLATES[name])
    unit = (f'#include "{kernel_dir() / name}.cu"\n'
            f"extern void* const sl_instances[];\nvoid* const sl_instances[] = {{{refs}}};\n")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / f"{name}_check.cu", Path(tmp) / f"{name}.ptx"
        src.write_text(unit)
        cmd = [nvcc, "-ptx", f"-arch={arch}", *loader.OPTIONS, "-o", str(out), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc failed on {name}.cu for {arch}:\n{proc.stderr}")
        return out.read_text()


def nvrtc_ptx(name: str, arch: str = "sm_80") -> tuple[str, dict[str, str]]:
    """PTX from NVRTC and the lowered (mangled) name of every name expression."""
    from cupy.cuda import nvrtc

    prog = nvrtc.createProgram(loader.source(name), f"{name}.cu", [], [])
    try:
        for expr in loader.TEMPLATES[name]:
            nvrtc.addNameExpression(prog, expr)
        options = [*loader.OPTIONS, f"-arch=compute_{arch.split('_')[1]}"]
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as err:
            raise RuntimeError(f"NVRTC failed on {name}.cu:\n{nvrtc.getProgramLog(prog)}") from err
        lowered = {expr: nvrtc.getLoweredName(prog, expr) for expr in loader.TEMPLATES[name]}
        return nvrtc.getPTX(prog).decode(), lowered
    finally:
        nvrtc.destroyProgram(prog)


def ptx_entries(ptx: str) -> list[str]:
    return re.findall(r"\.entry\s+([A-Za-z_$][\w$]*)", ptx)


def _normalise(signature: str) -> str:
    return re.sub(r"\s+", "", signature.removeprefix("void "))


def missing_entries(name: str, ptx: str) -> list[str]:
    """Name expressions of TEMPLATES[name] with no `.entry` in the PTX. Demangles with c++filt;
    without it, compares the count of entries per kernel name instead."""
    entries = ptx_entries(ptx)
    expected = loader.TEMPLATES[name]
    cxxfilt = shutil.which("c++filt") or shutil.which("cu++filt")
    if cxxfilt:
        out = subprocess.run([cxxfilt], input="\n".join(entries), capture_output=True, text=True,
                             check=True).stdout.splitlines()
        found = {_normalise(sig).split("(")[0] for sig in out}
        return [e for e in expected if _normalise(e) not in found]
    missing = []
    for base in sorted({e.split("<")[0] for e in expected}):
        want = sum(e.startswith(base + "<") for e in expected)
        have = sum(f"{len(base)}{base}I" in entry for entry in entries)
        missing += [f"{base}<...> ({want - have} of {want})"] if have < want else []
    return missing


def main(argv: list[str] | None = None) -> int:
    failures = 0
    for name in kernel_names():
        for arch in ARCHS:
            try:
                missing = missing_entries(name, nvcc_ptx(name, arch))
            except (RuntimeError, FileNotFoundError) as err:
                print(f"FAIL {name}.cu {arch}: {err}")
                failures += 1
                continue
            status = "ok" if not missing else f"missing {missing}"
            failures += bool(missing)
            print(f"{'ok  ' if not missing else 'FAIL'} {name}.cu {arch}: "
                  f"{len(loader.TEMPLATES[name])} kernels {status}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
