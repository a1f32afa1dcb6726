#!/usr/bin/env bash
# Create .venv and install sparse_lightning into it (editable) with the given extras (default: dev).
# On a machine without an NVIDIA GPU the CPU build of torch is installed first, so pip never pulls CUDA.
#   bash scripts/setup.sh            # package + dev tools
#   bash scripts/setup.sh dev,tune   # + Ray Tune
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-dev}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
PYTHON=${PYTHON:-python3}

stamp=".venv/.installed-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-${EXTRAS//,/_}"
if [ -f "$stamp" ]; then
    exit 0  # nothing changed since the last install
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# pip, minus the local mirror's "Location ... is ignored" noise; fails when pip fails (pipefail).
pip() { .venv/bin/python -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

pip install -q --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip install -q "torch==$TORCH_VERSION"   # CUDA build from the index
    EXTRAS="$EXTRAS,gpu"
else
    pip install -q "torch==$TORCH_VERSION"   # CPU build where the index serves one for this machine
fi
pip install -q -e ".[$EXTRAS]" "torch==$TORCH_VERSION"
.venv/bin/python -c "import torch, sparse_lightning; print('sparse_lightning', sparse_lightning.__version__, 'torch', torch.__version__)"
rm -f .venv/.installed-*
touch "$stamp"
