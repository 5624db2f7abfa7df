#!/usr/bin/env bash
# Builds everything a GPU machine without Rust or network needs, into .gpu-bundle/:
#   bin/         release binaries (kernels compiled by the pinned nvcc: sm_80 + sm_90 cubins
#                and compute_80 PTX, embedded)
#   tests/       the test executables (`cargo test --release --no-run`), named by target
#   run.sh       `bash .gpu-bundle/run.sh LOG_DIR`: runs every test executable with
#                VITK_TEST_DEVICE=cuda, one log per executable in LOG_DIR, then a summary table
# Usage: scripts/gpu-bundle.sh [BUNDLE_DIR]   (default .gpu-bundle)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle="${1:-$root/.gpu-bundle}"
cd "$root"

nvcc="$(scripts/install-cuda-toolchain.sh | tail -n 1)"
export NVCC="$nvcc"
unset VITK_NO_NVCC

echo "building release binaries with $NVCC" >&2
cargo build --release --bins
json="$(mktemp)"
trap 'rm -f "$json"' EXIT
cargo test --release --no-run --message-format=json >"$json"

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/tests"
for exe in target/release/vitk; do
  [[ -x "$exe" ]] && cp "$exe" "$bundle/bin/"
done
# Each test executable once, named after its target (lib/bin unit tests get a prefix so
# that `vitk` the library and `vitk` the binary do not collide).
python3 - "$json" "$bundle/tests" <<'PY'
import json, shutil, sys, os
src, dst = sys.argv[1], sys.argv[2]
seen = set()
for line in open(src):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    if not msg.get("profile", {}).get("test"):
        continue
    t = msg["target"]
    kind = t["kind"][0]
    name = t["name"] if kind == "test" else f"unit-{kind}-{t['name']}"
    if name in seen:
        continue
    seen.add(name)
    shutil.copy2(msg["executable"], os.path.join(dst, name))
    print(f"  tests/{name}", file=sys.stderr)
PY

cat >"$bundle/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs every bundled test executable on the GPU (VITK_TEST_DEVICE=cuda); logs go to LOG_DIR.
# Usage: bash run.sh LOG_DIR
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
logs="${1:?usage: run.sh LOG_DIR}"
mkdir -p "$logs"
logs="$(cd "$logs" && pwd)"
export VITK_TEST_DEVICE=cuda
{
  echo "bundle: $here"
  date -u
  nvidia-smi 2>&1 || echo "nvidia-smi not available"
} >"$logs/environment.log"
rows=()
total_failed=0
for exe in "$here"/tests/*; do
  name="$(basename "$exe")"
  log="$logs/$name.log"
  echo "running $name" >&2
  (cd "$here" && "$exe" --nocapture) >"$log" 2>&1
  rc=$?
  # Sum the "test result:" lines (one per executable).
  passed=$(grep '^test result:' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
  failed=$(grep '^test result:' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
  if [[ $rc -ne 0 && $failed -eq 0 ]]; then failed=1; fi  # crashed or could not start
  total_failed=$((total_failed + failed))
  rows+=("$(printf '%-32s %8s %8s %6s' "$name" "$passed" "$failed" "$rc")")
done
{
  printf '\n%-32s %8s %8s %6s\n' "test binary" passed failed exit
  printf '%s\n' "${rows[@]}"
} | tee "$logs/summary.txt"
[[ $total_failed -eq 0 ]]
RUN
chmod +x "$bundle/run.sh"
echo "bundle ready: $bundle (run: bash $bundle/run.sh LOG_DIR)" >&2
