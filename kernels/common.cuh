// common.cuh: included first by every kernel file. Three compilers read it:
//   nvcc      -> the embedded fatbin (build.rs);
//   NVRTC     -> run-time compilation of the embedded sources when nvcc was missing;
//   host C++  -> the CPU emulator (kernels/emu), which runs the same sources with CUDA
//                semantics for tests on machines without a GPU.
// Everything that differs between them lives here (and in emu/cuda_emu.h), so kernel files
// are plain CUDA plus three macros:
//   VITK_EXPORT(kernel)            after each extern "C" __global__ kernel: registers it with
//                                  the emulator so it can be launched by name (no-op on GPU);
//   VITK_SHARED(type, name, count) static shared memory (`__shared__ type name[count]`);
//   vitk_dynamic_shared<T>()       the dynamic shared memory of the launch.
// Inline PTX may appear only here, each wrapper with an emulated twin.
#pragma once

#if defined(__CUDACC__)  // nvcc and NVRTC
#define VITK_EMU 0
#if !defined(__CUDACC_RTC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif
#define VITK_EXPORT(kernel)
#define VITK_SHARED(type, name, count) __shared__ type name[count]

template <typename T>
__device__ __forceinline__ T* vitk_dynamic_shared() {
  extern __shared__ __align__(16) unsigned char vitk_dynamic_smem[];
  return reinterpret_cast<T*>(vitk_dynamic_smem);
}

#else  // host compiler: the emulator
#define VITK_EMU 1
#include "emu/cuda_emu.h"
#define VITK_EXPORT(kernel) VITK_EMU_REGISTER(kernel)
// The lambda's static is unique to this declaration site: every thread of a block that
// executes it gets the same per-block storage.
#define VITK_SHARED(type, name, count)                                  \
  type* name = ::vitk_emu::shared_static_typed<type>((count), []() {    \
    static const char vitk_site = 0;                                    \
    return static_cast<const void*>(&vitk_site);                        \
  }())

template <typename T>
inline T* vitk_dynamic_shared() {
  return static_cast<T*>(::vitk_emu::shared_dynamic());
}
#endif

#define VITK_FULL_MASK 0xffffffffu
// `#pragma unroll` for the device compilers only (the host compiler warns on it).
#if VITK_EMU
#define VITK_UNROLL
#else
#define VITK_UNROLL _Pragma("unroll")
#endif
