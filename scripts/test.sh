#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run the test suite: everything that can run on this machine
# (GPU tests skip themselves without CUDA; benchmarks are never part of it). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,tune,slurm
exec .venv/bin/python -m pytest "$@"
