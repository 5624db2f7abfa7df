#!/usr/bin/env bash
# Builds the CUDA emulator with every kernel plus its self-test program using the host C++
# compiler, and runs it twice: with the hand-written x86-64 fiber switch and with the portable
# ucontext fallback. Output: one line per check, then "N passed, M failed" per variant.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cxx="${CXX:-g++}"

build_and_run() { # build_and_run NAME [EXTRA_FLAGS...]
  local out="$root/target/emu-selftest/$1"
  shift
  mkdir -p "$out"
  local flags=(-std=c++17 -O1 -g -Wall -Wextra -Werror -I"$root/kernels" "$@")
  local objs=() src obj
  # One object per translation unit, rebuilt only when it or any header changed.
  for src in "$root"/kernels/emu/*.cpp "$root"/kernels/emu/tests/*.cpp "$root"/kernels/*.cu \
    "$root"/kernels/emu/tests/*.cu; do
    obj="$out/$(basename "$src").o"
    if [[ ! -f "$obj" || "$src" -nt "$obj" ||
      -n "$(find "$root/kernels" \( -name '*.h' -o -name '*.cuh' \) -newer "$obj")" ]]; then
      "$cxx" "${flags[@]}" -x c++ -c "$src" -o "$obj"
    fi
    objs+=("$obj")
  done
  "$cxx" -o "$out/selftest" "${objs[@]}"
  echo "== emulator self-test ($(basename "$out"))"
  "$out/selftest"
}

rc=0
if [[ "$(uname -m)" == "x86_64" ]]; then
  build_and_run asm-fibers || rc=1
fi
build_and_run ucontext-fibers -DVITK_EMU_UCONTEXT || rc=1
exit $rc
