#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run sparse-train; arguments are Hydra overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
exec .venv/bin/sparse-train "$@"
