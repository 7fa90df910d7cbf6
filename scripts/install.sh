#!/usr/bin/env bash
# Install automc (editable) into the current Python environment.
# torch==2.13.0 goes first when no torch is present: an open torch range on a bare machine pulls GBs of CUDA wheels.
# Usage: bash scripts/install.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
extras=""
if [ "${1:-}" = "--test" ]; then extras="[test]"; fi
"$PY" -m pip install -q -e ".${extras}"
