#!/usr/bin/env bash
# Every GPU check of the project in one command, for a machine with an NVIDIA GPU and the package
# installed with its GPU extra (`bash scripts/setup.sh dev,gpu`, or `pip install -e '.[gpu,dev]'`):
#   1. kernels (issue 7): nvcc PTX check; pytest -m gpu (fuzz vs F.conv2d/F.linear, CUDA-graph
#      capture) -> pytest_gpu.xml, pytest_gpu.json
#   2. kernels (issue 7): sparse-bench, CUDA-graph timing vs cuDNN TF32/FP32 and cuSPARSE -> JSON + PNG
#   3. perf model (issue 8): calibrate this GPU, then sparse-bench --model baselines with the
#      calibrated and the built-in h100 profile -> perf/perf_model_check.json (median relative
#      error and Spearman of predicted vs measured sparse-kernel time)
#   4. DEPrune (issue 9): pruned MobileNetV2 DW / DS blocks vs cuDNN at batch 32, BWT and HSR gains
#      separately, DW time vs kept K -> deprune_bench.json, deprune_bench.png
# Usage: scripts/gpu_check.sh OUTDIR   (interpreter: $PYTHON, else .venv/bin/python, else python)
# Exit status: 0 when every step passes, 1 when any fails, 2 when there is no GPU or CuPy.
set -uo pipefail

OUT=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # absolute: the script changes directory
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
mkdir -p "$OUT"
failed=()
# run NAME LOG CMD...: run a step, tee its output to LOG, remember it when it fails.
run() {
  local name=$1 log=$2; shift 2
  "$@" 2>&1 | tee "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("$name")
}

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

run "pytest -m gpu" "$OUT/pytest_gpu.txt" "$PY" -m pytest -m gpu -p no:cacheprovider -q -rfE --junitxml "$OUT/pytest_gpu.xml"
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

run "sparse-bench" "$OUT/bench.log" "$PY" -m sparse_lightning.cli.bench --out "$OUT"

# 3. Performance model (issue 8): calibrate, then predicted vs measured per layer.
mkdir -p "$OUT/perf"
run "calibrate" "$OUT/perf/calibrate.log" \
    "$PY" -m sparse_lightning.perf.calibrate --device cuda --out "$OUT/perf/profile_calibrated.json"
for prof in calibrated h100; do
  spec=$([ "$prof" = calibrated ] && echo "$OUT/perf/profile_calibrated.json" || echo h100)
  run "sparse-bench --model ($prof)" "$OUT/perf/bench_$prof.log" \
      "$PY" -m sparse_lightning.cli.bench --model baselines --profile "$spec" --batches 1 8 32 \
      --sparsities 0.5 0.7 0.8 0.9 0.95 0.98 --out "$OUT/perf/$prof"
done
"$PY" - "$OUT/perf" <<'PY' || failed+=("perf model summary")
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


# 4. DEPrune (issue 9): DW PR 78% / PW2 PR 50%: DEPrune, -B (BWT gain), -BH with predicted and
#    measured alpha (HSR gain), and a DW time vs kept-K sweep.
run "deprune bench" "$OUT/deprune_bench.log" "$PY" scripts/results_deprune.py --bench-gpu "$OUT" --batch 32

if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu_check: FAILED: ${failed[*]}; results in $OUT"
  exit 1
fi
echo "gpu_check: all steps passed; results in $OUT"
