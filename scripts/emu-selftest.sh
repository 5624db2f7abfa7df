#!/usr/bin/env bash
# Builds the CUDA emulator with every kernel plus its self-test program using the host C++
# compiler, and runs it. Output: one line per check, then "N passed, M failed".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/target/emu-selftest"
mkdir -p "$out"
cxx="${CXX:-g++}"
flags=(-std=c++17 -O1 -g -Wall -Wextra -Werror -I"$root/kernels")
objs=()
# Compile each translation unit separately (and only when it changed) to keep rebuilds cheap.
for src in "$root"/kernels/emu/*.cpp "$root"/kernels/emu/tests/*.cpp "$root"/kernels/*.cu \
  "$root"/kernels/emu/tests/*.cu; do
  obj="$out/$(basename "$src").o"
  if [[ ! -f "$obj" || "$src" -nt "$obj" || -n "$(find "$root/kernels" -name '*.h' -newer "$obj" -o -name '*.cuh' -newer "$obj")" ]]; then
    "$cxx" "${flags[@]}" -x c++ -c "$src" -o "$obj"
  fi
  objs+=("$obj")
done
"$cxx" -o "$out/selftest" "${objs[@]}"
exec "$out/selftest"
