# Sourced by the comparison wrappers: sets PY to a python that has the reference packages
# (torch, timm, safetensors, numpy), or exits with a message saying what is missing.
if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
else
    PY=python3
fi
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "error: no python found ('$PY'); set PYTHON=/path/to/python with torch and timm" >&2
    exit 2
fi
missing=$("$PY" - <<'PYEOF'
import importlib.util
print(" ".join(m for m in ("torch", "timm", "safetensors", "numpy")
               if importlib.util.find_spec(m) is None))
PYEOF
)
if [[ -n "$missing" ]]; then
    echo "error: $PY lacks: $missing" >&2
    echo "  these comparison scripts need the PyTorch reference (not a vitk dependency):" >&2
    echo "  python3 -m venv VENV && VENV/bin/pip install torch timm safetensors numpy" >&2
    echo "  (VENV: a new folder of your choice), then run with PYTHON=VENV/bin/python" >&2
    exit 2
fi
