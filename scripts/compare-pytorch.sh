#!/usr/bin/env bash
# Numerical side-by-side check of vitk training against the PyTorch/timm reference
# (scripts/compare_pytorch.py). The reference is only needed here, never by vitk itself.
#
#   scripts/compare-pytorch.sh [compare_pytorch.py options]    e.g. --cases micro-cls --steps 20
#
# Python: $PYTHON if set, else python3 on PATH.
# It needs torch, timm, safetensors and numpy. vitk is built first (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/find-torch-python.sh
cargo build --release --quiet
exec "$PY" scripts/compare_pytorch.py "$@"
