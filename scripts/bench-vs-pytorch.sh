#!/usr/bin/env bash
# Training speed and peak memory of vitk side by side with the PyTorch/timm reference
# (scripts/bench_pytorch.py). The reference is only needed here, never by vitk itself.
#
#   scripts/bench-vs-pytorch.sh [bench_pytorch.py options]    e.g. --steps 8 --reps 2
#
# On the CPU by default; `--device cuda` compares training on the GPU instead (vitk bf16/fp32
# against PyTorch eager fp32, eager bf16 and torch.compile bf16; the GPU bundle's run.sh runs
# it on machines without Rust). `--check-twin` checks the script's plain-PyTorch twin of the
# reference model against timm on the CPU.
#
# Python: $PYTHON if set, else python3 on PATH.
# Peak RSS comes from GNU time (/usr/bin/time -v), installed with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/find-torch-python.sh
if [[ ! -x /usr/bin/time ]]; then
    echo "/usr/bin/time (GNU time) is missing; installing it with apt-get" >&2
    if [[ $(id -u) -eq 0 ]]; then
        apt-get install -y time >/dev/null || { apt-get update >/dev/null && apt-get install -y time >/dev/null; }
    elif command -v sudo >/dev/null 2>&1; then
        sudo apt-get install -y time >/dev/null
    fi
    [[ -x /usr/bin/time ]] || { echo "error: cannot install GNU time; install the 'time' package" >&2; exit 2; }
fi
cargo build --release --quiet
exec "$PY" scripts/bench_pytorch.py "$@"
