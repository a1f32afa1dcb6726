#!/usr/bin/env bash
# GPU checks of issue 7 (CUDA kernels) on a machine with an NVIDIA GPU and the package installed
# with its GPU extra (pip install -e '.[gpu,dev]'):
#   1. pytest -m gpu (kernel vs F.conv2d/F.linear fuzz, CUDA-graph capture) -> junit XML + summary
#   2. sparse-bench (CUDA-graph kernel timing vs cuDNN/cuBLAS/cuSPARSE)     -> JSON + PNG
#   3. (issue 8, appended) Park's performance model: calibrate this GPU (profile JSON), then
#      sparse-bench --model baselines (device-baselines layer set, batches 1/8/32, sparsities
#      0.5-0.98) with the calibrated and the built-in h100 profile; median relative error and
#      Spearman correlation of predicted vs measured sparse-kernel time -> perf/perf_model_check.json.
#      The exit status then covers all three steps.
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

# 3. Performance model (issue 8): calibrate, then predicted vs measured per layer.
perf_rc=0
mkdir -p "$OUT/perf"
"$PY" -m sparse_lightning.perf.calibrate --device cuda --out "$OUT/perf/profile_calibrated.json" 2>&1 | tee "$OUT/perf/calibrate.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || perf_rc=1
for prof in calibrated h100; do
  spec=$([ "$prof" = calibrated ] && echo "$OUT/perf/profile_calibrated.json" || echo h100)
  "$PY" -m sparse_lightning.cli.bench --model baselines --profile "$spec" --batches 1 8 32 \
      --sparsities 0.5 0.7 0.8 0.9 0.95 0.98 --out "$OUT/perf/$prof" 2>&1 | tee "$OUT/perf/bench_$prof.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || perf_rc=1
done
"$PY" - "$OUT/perf" <<'PY' || perf_rc=1
import json, sys, pathlib
root = pathlib.Path(sys.argv[1])
out = {}
for prof in ("calibrated", "h100"):
    path = root / prof / "model_bench_baselines.json"
    if path.exists():
        data = json.loads(path.read_text())
        out[prof] = dict(profile=data["profile"], measured_on=data["measured_on"], **data["summary"])
s = out.get("calibrated", {})
out["acceptance"] = dict(median_rel_err_le_0_30=s.get("median_rel_err_sparse", 1e9) <= 0.30,
                         spearman_ge_0_8=s.get("spearman_sparse", -1) >= 0.8)
(root / "perf_model_check.json").write_text(json.dumps(out, indent=1))
print("perf model check:", json.dumps(out["acceptance"]), {k: v.get("median_rel_err_sparse") for k, v in out.items() if k != "acceptance"})
PY

echo "gpu_check: perf-model rc=$perf_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$perf_rc" -eq 0 ]
status=$?  # the steps above

# 4. DEPrune (issue 9): DEPrune-pruned MobileNetV2 DW-conv and DS-block (PW1 + DW + PW2 convs) times
#    vs dense cuDNN at batch 32, DW PR 78% / PW2 PR 50%: DEPrune, -B (BWT gain), -BH with predicted and
#    measured alpha (HSR gain), and a DW time vs kept-K sweep -> deprune_bench.json + deprune_bench.png
"$PY" scripts/results_deprune.py --bench-gpu "$OUT" --batch 32 2>&1 | tee "$OUT/deprune_bench.log"
deprune_rc=${PIPESTATUS[0]}
echo "gpu_check: deprune bench rc=$deprune_rc"
[ "$status" -eq 0 ] && [ "$deprune_rc" -eq 0 ]
