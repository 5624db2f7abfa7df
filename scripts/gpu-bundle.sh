#!/usr/bin/env bash
# Packs everything a GPU machine without a Rust toolchain or network needs to test vitk and
# train it on a data set, into one folder of at most 64 MiB (the limit on what travels to a
# device machine).
#
#   scripts/gpu-bundle.sh [--data PATH] [--out DIR]
#   scripts/gpu-bundle.sh --check-size [--data-budget SIZE] [--out DIR]
#
#   --data PATH         the training data, carried whole (all of it, or the bundle fails):
#                       - a .tar.gz (or .tgz) archive of an ImageFolder tree, e.g. one that
#                         unpacks to train/<class>/*.jpg (optionally with val/<class>/...):
#                         carried as it is and unpacked by run.sh on the device;
#                       - a directory in the CIFAR-10 binary layout (data_batch_1..5.bin,
#                         batches.meta.txt): each batch xz-compressed (the five official
#                         batches do not fit in 64 MiB; a JPEG ImageFolder archive does);
#                       - a directory holding an ImageFolder tree: packed into a .tar.gz.
#                       Without --data the bundle carries no data and run.sh skips training.
#   --out DIR           the bundle folder (default .gpu-bundle; a previous bundle there is
#                       replaced; positional DIR is accepted too)
#   --check-size        for CI: build and pack the binaries, tests and benches, reserve
#                       --data-budget for the data instead of packing any, print the sizes and
#                       stop; fails when the total would exceed 64 MiB. Needs no data; without
#                       --out it works in a temporary folder.
#   --data-budget SIZE  bytes reserved for the data by --check-size: N, NKiB or NMiB
#                       (default 20MiB)
#
# The bundle:
#   bin/vitk     the release binary (kernels compiled by the pinned nvcc: sm_80 + sm_90
#                cubins and compute_80 PTX, embedded)
#   tests/       the test executables (`cargo test --release --no-run`), named by target
#   benches/     the kernel bench executable (benches/kernels.rs)
#   scripts/     bench_pytorch.py, the side-by-side training benchmark against PyTorch
#   data/        the data (archive or compressed batches) and data/manifest describing it
#   run.sh       `bash run.sh LOG_DIR` on the device: every test executable with
#                VITK_TEST_DEVICE=cuda, the kernel benches, vitk side by side with PyTorch
#                on the GPU (when the machine's python has torch with CUDA), and a 1-epoch
#                `vitk train --device cuda --model seed --val-split 5000` on all the bundled
#                data, one log each in LOG_DIR, then a summary table
#                (`bash run.sh --help` for its options).
# Debug info is stripped from every executable. The build uses the release profile and the
# NVCC of scripts/install-cuda-toolchain.sh, as .ci/run does, so after CI's
# `cargo test --release` only the kernel bench is compiled here.
set -euo pipefail

limit=$((64 * 1024 * 1024))
usage() {
  sed -n '6,7p' "${BASH_SOURCE[0]}" | sed 's/^# *//' >&2
  echo "(${BASH_SOURCE[0]} --help for the options)" >&2
}
die() {
  echo "error: $*" >&2
  exit 1
}

# SIZE -> bytes: N, NKiB, NMiB (also NK, NM; case-insensitive units).
parse_size() {
  local s="$1" n unit
  if [[ "$s" =~ ^([0-9]+)([A-Za-z]*)$ ]]; then
    n="${BASH_REMATCH[1]}"
    unit="$(tr '[:upper:]' '[:lower:]' <<<"${BASH_REMATCH[2]}")"
    case "$unit" in
      "" | b) echo "$n" ;;
      k | kib) echo $((n * 1024)) ;;
      m | mib) echo $((n * 1024 * 1024)) ;;
      *) return 1 ;;
    esac
  else
    return 1
  fi
}

mib() { # bytes -> "12.34 MiB"
  awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'
}

data=""
out=""
check_size=0
budget=""
while (($#)); do
  case "$1" in
    --data)
      (($# >= 2)) || die "--data needs a path (an ImageFolder .tar.gz, or a data directory)"
      data="$2"
      shift 2
      ;;
    --out)
      (($# >= 2)) || die "--out needs a directory"
      out="$2"
      shift 2
      ;;
    --check-size)
      check_size=1
      shift
      ;;
    --data-budget)
      (($# >= 2)) || die "--data-budget needs a size (N, NKiB or NMiB)"
      budget="$2"
      shift 2
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    -*)
      usage
      die "unknown option '$1'"
      ;;
    *)
      [[ -z "$out" ]] || die "two bundle folders given ('$out' and '$1')"
      out="$1"
      shift
      ;;
  esac
done

if ((check_size)); then
  [[ -z "$data" ]] || die "--check-size reserves --data-budget instead of packing data: drop --data (or --check-size)"
  budget_bytes="$(parse_size "${budget:-20MiB}")" ||
    die "--data-budget '$budget': expected a size such as 16777216, 16384KiB or 20MiB"
else
  [[ -z "$budget" ]] || die "--data-budget only applies with --check-size"
fi

# Paths given relative to the caller's directory, resolved before moving to the repository.
if [[ -n "$data" ]]; then
  [[ -e "$data" ]] || die "--data $data: no such file or directory (expected an ImageFolder .tar.gz archive, or a directory in the CIFAR-10 binary or ImageFolder layout)"
  data="$(realpath "$data")"
fi
tmp_out=""
if [[ -z "$out" && $check_size -eq 1 ]]; then
  tmp_out="$(mktemp -d)"
  out="$tmp_out/bundle"
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle="$(realpath -m "${out:-$root/.gpu-bundle}")"
if [[ -e "$bundle" ]]; then
  [[ -d "$bundle" ]] || die "--out $bundle exists and is not a directory"
  if [[ -n "$(ls -A "$bundle")" && ! -f "$bundle/run.sh" ]]; then
    die "--out $bundle exists, is not empty and holds no run.sh (not a bundle): choose another folder"
  fi
fi
cd "$root"

work="$(mktemp -d)"
cleanup() {
  rm -rf "$work"
  [[ -z "$tmp_out" ]] || rm -rf "$tmp_out"
}
trap cleanup EXIT

# Describes an ImageFolder archive as vitk will read it once unpacked; prints manifest lines
# (root, images, classes, val) or fails naming what is wrong. The layout rules are those of
# src/data/image_folder.rs.
describe_archive() {
  python3 - "$1" <<'PY'
import sys, tarfile
path = sys.argv[1]
exts = {"png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp"}
def fail(msg):
    sys.exit(f"error: {path}: {msg}")
try:
    with tarfile.open(path, "r:gz") as tar:
        members = tar.getmembers()
except (tarfile.TarError, OSError, EOFError) as e:
    fail(f"not a readable .tar.gz archive ({e})")
images = []
for m in members:
    parts = [p for p in m.name.split("/") if p not in ("", ".")]
    if m.name.startswith("/") or ".." in parts:
        fail(f"member '{m.name}' points outside the archive's folder")
    if not m.isfile() or not parts or any(p.startswith(".") for p in parts):
        continue
    if parts[-1].rsplit(".", 1)[-1].lower() in exts and "." in parts[-1]:
        images.append(parts)
if not images:
    fail("holds no image files (expected an ImageFolder tree such as train/<class>/*.jpg, "
         "with extensions " + ", ".join(sorted(exts)) + ")")
# The data root: the deepest folder above every image; when all images share one folder,
# that folder is a class, so the root is its parent.
dirs = [p[:-1] for p in images]
prefix = dirs[0]
for d in dirs[1:]:
    n = 0
    while n < min(len(prefix), len(d)) and prefix[n] == d[n]:
        n += 1
    prefix = prefix[:n]
if all(d == prefix for d in dirs):
    if not prefix:
        fail("all images lie at the archive's top level (expected one folder per class)")
    prefix = prefix[:-1]
def classes_under(base):
    k = len(base)
    return sorted({p[k] for p in images if len(p) > k + 1 and p[:k] == base})
def count_under(base):
    k = len(base)
    return sum(1 for p in images if len(p) > k + 1 and p[:k] == base)
train = prefix + ["train"]
if classes_under(train):
    classes = classes_under(train)
    n_train = count_under(train)
    val = next((prefix + [v] for v in ("val", "test") if classes_under(prefix + [v])), None)
    if val:
        extra = sorted(set(classes_under(val)) - set(classes))
        if extra:
            fail(f"{'/'.join(val)}/ has classes that train/ lacks: {', '.join(extra)}")
        val_desc = f"{'/'.join(val)}/ folder ({count_under(val)} images)"
    else:
        val_desc = "held out of the training images (no val/ or test/ folder)"
    where = "/".join(train) + "/"
else:
    classes = classes_under(prefix)
    n_train = count_under(prefix)
    val_desc = "held out of the training images (no val/ or test/ folder)"
    where = ("/".join(prefix) + "/") if prefix else "the archive's top level"
if len(classes) < 2:
    fail(f"{len(classes)} class folder(s) under {where} (expected one folder per class, at least 2)")
print(f"root={'/'.join(prefix) or '.'}")
print(f"images={n_train}")
print(f"classes={len(classes)}")
print(f"val={val_desc}")
print(f"layout=ImageFolder, {n_train} training images in {len(classes)} classes under {where}",
      file=sys.stderr)
PY
}

# Data: checked before the long build so that a wrong path fails at once.
data_kind=""
if [[ -n "$data" ]]; then
  if [[ -f "$data" ]]; then
    case "$data" in
      *.tar.gz | *.tgz) ;;
      *) die "--data $data: a file must be a .tar.gz or .tgz archive of an ImageFolder tree (or give a directory)" ;;
    esac
    data_kind="imagefolder-tar"
    describe_archive "$data" >"$work/manifest" || exit 1
  elif [[ -d "$data" ]]; then
    if compgen -G "$data/data_batch_[1-5].bin" >/dev/null; then
      data_kind="cifar-bin-xz"
      command -v xz >/dev/null || die "xz is needed to compress the CIFAR-10 batches of $data"
    else
      data_kind="imagefolder-dir"
      echo "packing the ImageFolder $data into a .tar.gz" >&2
      tar -C "$data" -czf "$work/images.tar.gz" . || die "cannot pack $data"
      describe_archive "$work/images.tar.gz" >"$work/manifest" ||
        die "--data $data is neither a CIFAR-10 binary directory (data_batch_1..5.bin) nor an ImageFolder (see above)"
    fi
  else
    die "--data $data is neither a file nor a directory"
  fi
fi

nvcc="$(scripts/install-cuda-toolchain.sh | tail -n 1)"
export NVCC="$nvcc"
unset VITK_NO_NVCC

echo "building release binaries, tests and the kernel bench with $NVCC" >&2
cargo build --release --bins
cargo test --release --no-run --message-format=json >"$work/tests.json"
cargo bench --bench kernels --no-run --message-format=json >"$work/bench.json"

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/tests" "$bundle/benches" "$bundle/scripts" "$bundle/data"
cp target/release/vitk "$bundle/bin/"
cp scripts/bench_pytorch.py "$bundle/scripts/"
# The test executables that exercise the device (the others test the CPU engine, the data
# layer and the repository, which a GPU machine adds nothing to), named after their targets.
python3 - "$work/tests.json" "$bundle/tests" <<'PY'
import json, shutil, sys, os
src, dst = sys.argv[1], sys.argv[2]
DEVICE_TESTS = {"kernels_parity", "matmul_parity", "tensor_core_wrappers", "gpu_engine", "gpu_runtime", "step_pipeline"}
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
    name = t["name"]
    if t["kind"][0] != "test" or name not in DEVICE_TESTS or name in seen:
        continue
    seen.add(name)
    shutil.copy2(msg["executable"], os.path.join(dst, name))
    print(f"  tests/{name}", file=sys.stderr)
missing = DEVICE_TESTS - seen
if missing:
    sys.exit(f"error: cargo built no test executable for {sorted(missing)}")
PY

python3 - "$work/bench.json" "$bundle/benches" <<'PY'
import json, shutil, sys, os
found = False
for line in open(sys.argv[1]):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["name"] == "kernels":
        shutil.copy2(msg["executable"], os.path.join(sys.argv[2], "kernels"))
        found = True
if not found:
    sys.exit("error: cargo bench produced no 'kernels' executable")
PY

# Debug info (line tables of the release profile) is most of each executable's size; the
# device machine only runs them. Each executable embeds the kernels' fatbin, which xz shrinks
# about 4x: run.sh unpacks them before running anything.
strip --strip-debug "$bundle"/bin/* "$bundle"/tests/* "$bundle"/benches/*
command -v xz >/dev/null || die "xz is needed to compress the bundle's executables"
xz -T0 -9 "$bundle"/bin/* "$bundle"/tests/* "$bundle"/benches/*

case "$data_kind" in
  imagefolder-tar)
    cp "$data" "$bundle/data/images.tar.gz"
    chmod 644 "$bundle/data/images.tar.gz"
    ;;
  imagefolder-dir)
    mv "$work/images.tar.gz" "$bundle/data/images.tar.gz"
    ;;
  cifar-bin-xz)
    n=0
    bytes=0
    for f in "$data"/data_batch_[1-5].bin; do
      echo "compressing $(basename "$f")" >&2
      xz -T0 -6 -c "$f" >"$bundle/data/$(basename "$f").xz"
      n=$((n + 1))
      bytes=$((bytes + $(stat -c %s "$f")))
    done
    classes=10
    if [[ -f "$data/batches.meta.txt" ]]; then
      cp "$data/batches.meta.txt" "$bundle/data/"
      classes="$(grep -c . "$data/batches.meta.txt")"
    fi
    {
      echo "root=."
      echo "images=$((bytes / 3073))" # 1 label byte + 32 x 32 x 3 pixels per record
      echo "batches=$n"                  # fewer than 5: run.sh passes --allow-partial
      echo "classes=$classes"
      echo "val=held out of the training records (test_batch.bin is not carried)"
    } >"$work/manifest"
    echo "layout=CIFAR-10 binary, $n batch(es), $((bytes / 3073)) records" >&2
    ;;
esac
if [[ -n "$data_kind" ]]; then
  {
    echo "kind=$data_kind"
    echo "source=$(basename "$data")"
    cat "$work/manifest"
  } >"$bundle/data/manifest"
fi

cat >"$bundle/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs the bundle on a GPU machine; every log goes to LOG_DIR, then a summary table.
#   bash run.sh [--train-only] [--device DEV] [--steps N] [--bench-args "ARGS"] LOG_DIR
# 1. every device test with VITK_TEST_DEVICE=cuda, one process per test (skipped by
#    --train-only), then the kernel tests under compute-sanitizer (memcheck, racecheck,
#    synccheck) when the machine has it;
# 2. the kernel benches (skipped by --train-only);
# 3. vitk side by side with PyTorch on the GPU: scripts/bench_pytorch.py --device cuda
#    (img/s of vitk bf16/fp32 and PyTorch eager fp32, eager bf16, torch.compile bf16, and
#    their ratios; --bench-args adds options, e.g. "--models seed,small --steps 100") with
#    $PYTHON (default python3); skipped by --train-only, and skipped, not failed, when that
#    python has no torch with CUDA. Log: LOG_DIR/bench-vs-pytorch.log;
# 4. `vitk train --model seed --epochs 1 --val-split 5000` on all the bundled data (a tenth
#    of a set smaller than 50,000 images is held out instead)
#    (data/manifest says what it is), on --device (default cuda), stopped after --steps N
#    optimizer steps when given. A bundle built without data skips this and says so.
# Exits non-zero when anything failed.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
train_only=0
device=cuda
steps=""
bench_args=""
logs=""
while (($#)); do
  case "$1" in
    --train-only) train_only=1; shift ;;
    --device) device="${2:?--device needs a value (cuda, cuda:N, cpu)}"; shift 2 ;;
    --steps) steps="${2:?--steps needs a number}"; shift 2 ;;
    --bench-args) bench_args="${2?--bench-args needs a value (options of bench_pytorch.py)}"; shift 2 ;;
    -h | --help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "error: unknown option '$1' (see bash run.sh --help)" >&2; exit 2 ;;
    *) logs="$1"; shift ;;
  esac
done
[[ -n "$logs" ]] || { echo "usage: bash run.sh [--train-only] [--device DEV] [--steps N] [--bench-args \"ARGS\"] LOG_DIR" >&2; exit 2; }
mkdir -p "$logs" || exit 1
logs="$(cd "$logs" && pwd)"
export VITK_TEST_DEVICE="${VITK_TEST_DEVICE:-cuda}" # the emulator with VITK_TEST_DEVICE=emu
# The executables travel xz-compressed: unpack them into a scratch folder first.
exes="$(mktemp -d "${TMPDIR:-/tmp}/vitk-bundle.XXXXXX")" || exit 1
trap 'rm -rf "$exes"' EXIT
for f in "$here"/bin/*.xz "$here"/tests/*.xz "$here"/benches/*.xz; do
  sub="$(basename "$(dirname "$f")")"
  mkdir -p "$exes/$sub"
  xz -dc "$f" >"$exes/$sub/$(basename "${f%.xz}")" && chmod +x "$exes/$sub/$(basename "${f%.xz}")" ||
    { echo "error: cannot unpack $f" >&2; exit 1; }
done
# The CLI-driven tests run this binary instead of the build machine's path.
export VITK_BIN="$exes/bin/vitk"
{
  echo "bundle: $here"
  date -u
  nvidia-smi 2>&1 || echo "nvidia-smi not available"
} >"$logs/environment.log"
rows=()
total_failed=0
row() { rows+=("$(printf '%-36s %8s %8s %8s' "$@")"); }

if ((!train_only)); then
  # One process per test: a kernel that faults poisons its CUDA context, which would fail
  # every later test of the same process.
  for exe in "$exes"/tests/*; do
    name="$(basename "$exe")"
    log="$logs/$name.log"
    echo "running $name" >&2
    : >"$log"
    passed=0 failed=0
    mapfile -t cases < <("$exe" --list --format terse 2>>"$log" | sed -n 's/: test$//p')
    ((${#cases[@]})) || failed=1 # could not list: crashed or could not start
    for case in "${cases[@]}"; do
      echo "=== $case" >>"$log"
      (cd "$here" && "$exe" --exact "$case" --nocapture) >>"$log" 2>&1
      if (($? == 0)); then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $case" >&2; fi
    done
    total_failed=$((total_failed + failed))
    row "$name" "$passed" "$failed" "$((failed > 0))"
  done
  # The kernel parity tests under compute-sanitizer (memory errors, shared-memory races,
  # barrier misuse) where the machine has it; findings are reported, the run goes on.
  if command -v compute-sanitizer >/dev/null 2>&1; then
    for tool in memcheck racecheck synccheck; do
      for t in kernels_parity matmul_parity tensor_core_wrappers; do
        log="$logs/sanitizer-$tool-$t.log"
        echo "running $t under compute-sanitizer --tool $tool" >&2
        (cd "$here" && compute-sanitizer --tool "$tool" --error-exitcode 99 "$exes/tests/$t" \
          --test-threads 1) >"$log" 2>&1
        rc=$?
        errors="$(grep -Eo 'ERROR SUMMARY: [0-9]+' "$log" | awk '{s+=$3} END {print s+0}')"
        row "sanitizer $tool $t" "-" "$errors" "$rc"
        [[ $rc -eq 0 ]] || total_failed=$((total_failed + 1))
      done
    done
  else
    echo "compute-sanitizer not found: memcheck/racecheck/synccheck skipped" | tee "$logs/sanitizer.log" >&2
    row "compute-sanitizer" "-" "-" "skipped"
  fi
  # Kernel benches (CUDA events; prints its own table).
  echo "running kernel benches" >&2
  "$exes/benches/kernels" --bench >"$logs/bench-kernels.log" 2>&1
  rc=$?
  row "bench kernels" "-" "-" "$rc"
  [[ $rc -eq 0 ]] || total_failed=$((total_failed + 1))

  # vitk side by side with PyTorch on the GPU. The side-by-side runs on CUDA whatever
  # --device says (cuda:N is passed on). PyTorch is not part of the bundle: without torch
  # built with CUDA this step is skipped, not failed; timm is used when present, else the
  # script's plain-PyTorch twin of its VisionTransformer.
  bench_log="$logs/bench-vs-pytorch.log"
  bench_dev=cuda
  [[ $device != cuda:* ]] || bench_dev="$device"
  py="${PYTHON:-python3}"
  torch_probe="$("$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>&1 | tail -n 1)"
  if [[ "$torch_probe" != "torch "*" cuda True" ]]; then
    if [[ "$torch_probe" == "torch "* ]]; then
      reason="$py has $torch_probe (no CUDA device for PyTorch)"
    else
      reason="$py cannot import torch: $torch_probe"
    fi
    echo "PyTorch not available, vitk vs PyTorch skipped: $reason" | tee "$bench_log" >&2
    row "bench vs PyTorch ($bench_dev)" "-" "-" "skipped"
  else
    read -r -a extra <<<"$bench_args"
    echo "running vitk vs PyTorch on $bench_dev (${torch_probe% cuda True})" >&2
    "$py" -u "$here/scripts/bench_pytorch.py" --device "$bench_dev" --vitk "$exes/bin/vitk" \
      ${extra[@]+"${extra[@]}"} >"$bench_log" 2>&1
    rc=$?
    # The tables, from their heading to the end.
    sed -n '/^img\/s side by side/,$p' "$bench_log" >&2
    [[ $rc -eq 0 ]] || tail -n 20 "$bench_log" >&2
    row "bench vs PyTorch ($bench_dev)" "-" "-" "$rc"
    [[ $rc -eq 0 ]] || total_failed=$((total_failed + 1))
  fi
fi

# Training on the bundled data.
train_name="train seed 1 epoch ($device)"
[[ -z "$steps" ]] || train_name="train seed $steps steps ($device)"
manifest="$here/data/manifest"
val_line=""
if [[ ! -f "$manifest" ]]; then
  echo "no training data in this bundle (built without --data): training skipped" | tee "$logs/train-seed.log" >&2
  row "$train_name" "-" "-" "skipped"
else
  declare -A m=()
  while IFS='=' read -r k v; do [[ -n "$k" ]] && m[$k]="$v"; done <"$manifest"
  data_dir="$(mktemp -d "${TMPDIR:-/tmp}/vitk-data.XXXXXX")" || exit 1
  trap 'rm -rf "$exes" "$data_dir"' EXIT
  rc=0
  case "${m[kind]:-}" in
    imagefolder-tar | imagefolder-dir)
      echo "unpacking ${m[source]} (${m[images]} training images, ${m[classes]} classes)" >&2
      tar -xzf "$here/data/images.tar.gz" -C "$data_dir" || rc=$?
      data="$data_dir/${m[root]}"
      ;;
    cifar-bin-xz)
      echo "decompressing the CIFAR-10 batches of ${m[source]}" >&2
      for f in "$here"/data/*.bin.xz; do
        xz -dc "$f" >"$data_dir/$(basename "${f%.xz}")" || rc=$?
      done
      cp "$here"/data/batches.meta.txt "$data_dir/" 2>/dev/null
      data="$data_dir"
      ;;
    *)
      echo "error: $manifest: unknown data kind '${m[kind]:-}'" >&2
      rc=1
      ;;
  esac
  if [[ $rc -ne 0 ]]; then
    echo "error: could not unpack the bundled data" | tee "$logs/train-seed.log" >&2
  else
    # 5000 held out (CIFAR-10's usual 45,000 / 5,000), at most a tenth of a smaller set.
    val_split=$(( ${m[images]:-0} / 10 < 5000 ? ${m[images]:-0} / 10 : 5000 ))
    echo "running vitk train --device $device --model seed on $data (validation: ${m[val]}; --val-split $val_split when held out)" >&2
    args=(train --device "$device" --model seed --data "$data" --epochs 1 --val-split "$val_split"
      --out "$logs/train-run")
    [[ -z "$steps" ]] || args+=(--steps "$steps")
    # Some of the five CIFAR-10 batches, chosen at bundling time (vitk refuses that unasked).
    [[ "${m[batches]:-5}" -ge 5 ]] || args+=(--allow-partial)
    rm -rf "$logs/train-run"
    "$exes/bin/vitk" "${args[@]}" >"$logs/train-seed.log" 2>&1
    rc=$?
    # vitk's first line: "model ... ; train N images, validation M (where from); run DIR".
    val_line="$(sed -n 's/^model .*; \(train [0-9]* images, validation .*\); run .*/\1/p' "$logs/train-seed.log" | head -n 1)"
    [[ -z "$val_line" ]] || echo "data: $val_line" >&2
    grep '^final:' "$logs/train-seed.log" >&2
  fi
  row "$train_name" "-" "-" "$rc"
  [[ $rc -eq 0 ]] || total_failed=$((total_failed + 1))
fi

{
  printf '\n%-36s %8s %8s %8s\n' "step" passed failed exit
  printf '%s\n' "${rows[@]}"
  [[ -z "$val_line" ]] || echo "data: $val_line"
} | tee "$logs/summary.txt"
[[ $total_failed -eq 0 ]]
RUN
chmod +x "$bundle/run.sh"

# Sizes: what travels is the sum of the files.
size_of() { find "$1" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}'; }
echo "bundle: $bundle" >&2
for part in bin tests benches scripts data; do
  [[ $part != data || $check_size -eq 0 ]] || continue
  printf '  %-8s %12s\n' "$part/" "$(mib "$(size_of "$bundle/$part")")" >&2
done
total="$(size_of "$bundle")" # with run.sh
code=$((total - $(size_of "$bundle/data")))
if ((check_size)); then
  total=$((total + budget_bytes))
  printf '  %-8s %12s  (reserved by --data-budget)\n' "data" "$(mib "$budget_bytes")" >&2
fi
printf '  %-8s %12s  (%d bytes; the limit is %d bytes)\n' "total" "$(mib "$total")" "$total" "$limit" >&2
if ((total > limit)); then
  die "the bundle is $(mib "$total"), $(mib $((total - limit))) over the 64 MiB limit (binaries, tests, benches and run.sh: $(mib "$code"); data: $(mib $((total - code))))"
fi
if ((check_size)); then
  echo "size check passed: binaries, tests and benches leave $(mib $((limit - code))) for data" >&2
  exit 0
fi
if [[ -z "$data_kind" ]]; then
  echo "no --data given: the bundle carries no data and run.sh will skip training" >&2
fi
echo "bundle ready: $bundle (run: bash $bundle/run.sh LOG_DIR)" >&2
