#!/usr/bin/env bash
# Builds everything a GPU machine without Rust or network needs, into .gpu-bundle/:
#   bin/         release binaries (kernels compiled by the pinned nvcc: sm_80 + sm_90 cubins
#                and compute_80 PTX, embedded)
#   tests/       the test executables (`cargo test --release --no-run`), named by target
#   benches/     the kernel bench executable (benches/kernels.rs)
#   data/        CIFAR-10 training batches (built by ../shared/data/make-cifar10-bin.sh or
#                $VITK_CIFAR_BIN, xz-compressed, as many batches as keep the bundle < 64 MiB)
#   run.sh       `bash .gpu-bundle/run.sh LOG_DIR`: runs every test executable with
#                VITK_TEST_DEVICE=cuda, the kernel benches and a 1-epoch
#                `vitk train --device cuda --model seed` on the CIFAR-10 batches, one log each
#                in LOG_DIR, then a summary table
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

bench_json="$(mktemp)"
trap 'rm -f "$json" "$bench_json"' EXIT
cargo bench --bench kernels --no-run --message-format=json >"$bench_json"

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/tests" "$bundle/benches" "$bundle/data"
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

python3 - "$bench_json" "$bundle/benches" <<'PY'
import json, shutil, sys, os
for line in open(sys.argv[1]):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["name"] == "kernels":
        shutil.copy2(msg["executable"], os.path.join(sys.argv[2], "kernels"))
PY

# Debug info (line tables of the release profile) is most of each executable's size; the
# device machine only runs them, so strip it to stay under the 64 MiB carry limit.
strip --strip-debug "$bundle"/bin/* "$bundle"/tests/* "$bundle"/benches/*

# CIFAR-10 batches: as many as fit under the 64 MiB bundle limit (compressed).
cifar="${VITK_CIFAR_BIN:-}"
if [[ -z "$cifar" ]]; then
  cifar="$(mktemp -d)"
  bash "$root/../shared/data/make-cifar10-bin.sh" "$cifar" >&2
fi
limit=$((64 * 1024 * 1024))
for i in 1 2 3 4 5; do
  f="$cifar/data_batch_$i.bin"
  [[ -f "$f" ]] || break
  xz -T0 -6 -c "$f" >"$bundle/data/data_batch_$i.bin.xz"
  if (( $(du -sb "$bundle" | cut -f1) > limit - 4 * 1024 * 1024 )); then
    rm "$bundle/data/data_batch_$i.bin.xz"
    break
  fi
done
[[ -f "$cifar/batches.meta.txt" ]] && cp "$cifar/batches.meta.txt" "$bundle/data/"
echo "bundle size: $(du -sh "$bundle" | cut -f1) ($(ls "$bundle/data" | grep -c xz) CIFAR-10 batches)" >&2

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
# Kernel benches (CUDA events; prints its own table).
echo "running kernel benches" >&2
"$here/benches/kernels" --bench >"$logs/bench-kernels.log" 2>&1
rc=$?
rows+=("$(printf '%-32s %8s %8s %6s' "bench kernels" "-" "-" "$rc")")

# One epoch of the seed model on the bundled CIFAR-10 batches.
data="$(mktemp -d)"
for f in "$here"/data/*.xz; do xz -dc "$f" >"$data/$(basename "${f%.xz}")"; done
cp "$here"/data/batches.meta.txt "$data/" 2>/dev/null || true
echo "running 1-epoch vitk train --device cuda --model seed" >&2
"$here/bin/vitk" train --device cuda --model seed --data "$data" --epochs 1 --val-split 1000 \
  --out "$logs/train-run" >"$logs/train-seed.log" 2>&1
rc=$?
rows+=("$(printf '%-32s %8s %8s %6s' "train seed 1 epoch (cuda)" "-" "-" "$rc")")
[[ $rc -eq 0 ]] || total_failed=$((total_failed + 1))
rm -rf "$data"

{
  printf '\n%-32s %8s %8s %6s\n' "test binary" passed failed exit
  printf '%s\n' "${rows[@]}"
} | tee "$logs/summary.txt"
[[ $total_failed -eq 0 ]]
RUN
chmod +x "$bundle/run.sh"
echo "bundle ready: $bundle (run: bash $bundle/run.sh LOG_DIR)" >&2
