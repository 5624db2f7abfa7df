#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler (nvcc, ptxas, cicc, fatbinary, headers) and the
# cuobjdump / nvdisasm disassemblers from PyPI into a project-local folder, so kernels build
# the same everywhere without root or a system CUDA.
# Usage: scripts/install-cuda-toolchain.sh [DIR]   (default: .cuda-toolchain)
# The last line printed is the absolute path of nvcc; cuobjdump and nvdisasm are beside it
# (DIR/cuda/bin). Re-running is a fast no-op.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$repo_root/.cuda-toolchain}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

# The exact pins: nvcc drives cicc (nvvm) and ptxas; crt and cccl headers are needed by every
# translation unit; the runtime package carries cuda_runtime.h and friends. cuobjdump (which
# runs nvdisasm for -sass) serves scripts/kernel-report.sh: PyPI has no 13.0 or 13.1 release
# of either, 13.2.86 is the newest of the oldest series there; it reads 13.0's cubins.
pins=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-cuobjdump==13.2.86
  nvidia-cuda-nvdisasm==13.2.86
)
stamp="$dir/.installed"
home="$dir/cuda" # stable CUDA_HOME-like path, a symlink into the wheel layout
nvcc="$home/bin/nvcc"
cuobjdump="$home/bin/cuobjdump"

want="$(printf '%s\n' "${pins[@]}")"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$nvcc" && -x "$cuobjdump" && -x "$home/bin/nvdisasm" ]] &&
  "$nvcc" --version >/dev/null 2>&1; then
  echo "pinned CUDA toolchain already installed in $dir" >&2
  echo "$nvcc"
  exit 0
fi

python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "error: $python not found (needed to run pip)" >&2; exit 1; }

echo "installing ${pins[*]} into $dir/site" >&2
rm -rf "$dir/site" "$home" "$stamp"
"$python" -m pip install --quiet --no-deps --no-compile --disable-pip-version-check --root-user-action=ignore \
  --target "$dir/site" "${pins[@]}" >&2

# CUDA 13 wheels unpack into nvidia/cu13 (bin, include, lib, nvvm); older wheel generations
# used one folder per package. Find the folder that holds bin/nvcc.
root=""
for cand in "$dir/site/nvidia/cu13" "$dir/site/nvidia/cuda_nvcc"; do
  [[ -x "$cand/bin/nvcc" || -f "$cand/bin/nvcc" ]] && { root="$cand"; break; }
done
[[ -n "$root" ]] || { echo "error: no bin/nvcc under $dir/site/nvidia" >&2; exit 1; }
ln -sfn "$root" "$home"

# Fix-ups for what nvcc expects next to itself (nvcc.profile: TOP = bin/..):
#  - executables keep their mode bit (some pip versions drop it);
chmod +x "$home"/bin/* "$home"/nvvm/bin/* 2>/dev/null || true
#  - cicc and libdevice under TOP/nvvm; crt and cccl headers under TOP/include. When a package
#    unpacked them into a sibling folder (split-wheel layout), link them into place.
link_into() { # link_into TARGET_SUBPATH  -- search the other package folders for it
  local sub="$1" src
  [[ -e "$home/$sub" ]] && return 0
  for src in "$dir"/site/nvidia/*/"$sub"; do
    if [[ -e "$src" ]]; then mkdir -p "$(dirname "$home/$sub")"; ln -sfn "$src" "$home/$sub"; return 0; fi
  done
  echo "error: $sub not found in any installed package" >&2
  return 1
}
link_into nvvm/bin
link_into nvvm/libdevice
link_into include/crt
link_into include/cccl
link_into include/cuda_runtime.h
link_into bin/cuobjdump
link_into bin/nvdisasm

# Prove it works: one translation unit to a fatbin for the architectures build.rs uses.
probe="$(mktemp -d)"
trap 'rm -rf "$probe"' EXIT
cat >"$probe/probe.cu" <<'CU'
#include <cuda_bf16.h>
extern "C" __global__ void probe(float* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = erff(x[i]) + __shfl_xor_sync(0xffffffffu, x[i], 1);
}
CU
"$nvcc" -fatbin -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
  -gencode arch=compute_80,code=compute_80 -Werror all-warnings \
  -o "$probe/probe.fatbin" "$probe/probe.cu" >&2
[[ -s "$probe/probe.fatbin" ]] || { echo "error: nvcc produced no fatbin" >&2; exit 1; }
# ... and that cuobjdump disassembles it (through nvdisasm, found beside it on PATH).
PATH="$home/bin:$PATH" "$cuobjdump" -sass "$probe/probe.fatbin" >"$probe/probe.sass"
grep -q 'Function : probe' "$probe/probe.sass" ||
  { echo "error: cuobjdump -sass did not disassemble the probe" >&2; exit 1; }

echo "$want" >"$stamp"
"$nvcc" --version | tail -n 2 >&2
echo "cuobjdump: $cuobjdump" >&2
echo "$nvcc"
