#!/usr/bin/env bash
# GPU checks of issue 7 (CUDA kernels) on a machine with an NVIDIA GPU and the package installed
# with its GPU extra (pip install -e '.[gpu,dev]'):
#   1. pytest -m gpu (kernel vs F.conv2d/F.linear fuzz, CUDA-graph capture) -> junit XML + summary
#   2. sparse-bench (CUDA-graph kernel timing vs cuDNN/cuBLAS/cuSPARSE)     -> JSON + PNG
# Usage: scripts/gpu_check.sh OUTDIR        (PYTHON=... to pick the interpreter)
# Exit status: 0 when both steps pass, 1 when either fails, 2 when there is no GPU/CuPy.
set -uo pipefail

OUT=${1:?usage: scripts/gpu_check.sh OUTDIR}
PY=${PYTHON:-python}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"

"$PY" - <<'PY' || exit 2
import importlib.util, sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA GPU visible to torch")
if importlib.util.find_spec("cupy") is None:
    sys.exit("gpu_check: CuPy missing: pip install -e '.[gpu]'")
PY

{ nvidia-smi || true; "$PY" -c "import torch, cupy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cupy', cupy.__version__)"; } > "$OUT/environment.txt" 2>&1

if command -v nvcc >/dev/null; then
  "$PY" -m sparse_lightning.kernels.compile_check 2>&1 | tee "$OUT/compile_check.txt"
else
  echo "nvcc not on PATH: PTX check skipped (the kernels are compiled by NVRTC in the tests)" | tee "$OUT/compile_check.txt"
fi

"$PY" -m pytest -m gpu -p no:cacheprovider -q -rfE --junitxml "$OUT/pytest_gpu.xml" 2>&1 | tee "$OUT/pytest_gpu.txt"
tests_rc=${PIPESTATUS[0]}
"$PY" - "$OUT/pytest_gpu.xml" "$OUT/pytest_gpu.json" <<'PY'
import json, sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suite = root if root.tag == "testsuite" else root.find("testsuite")
cases = []
for case in suite.iter("testcase"):
    status = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
    cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "status": status,
                  "seconds": float(case.get("time", 0))})
summary = {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped", "time")}
json.dump({"summary": summary, "cases": cases}, open(sys.argv[2], "w"), indent=1)
print("pytest -m gpu:", summary)
PY

"$PY" -m sparse_lightning.cli.bench --out "$OUT" 2>&1 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}

echo "gpu_check: pytest rc=$tests_rc, sparse-bench rc=$bench_rc; results in $OUT"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
