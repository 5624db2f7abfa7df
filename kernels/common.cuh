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
// Inline PTX may appear only here, each wrapper with an emulated twin (bottom of this file):
// bf16 storage and rounding, ldmatrix, mma.sync (m16n8k16, bf16 in, fp32 accumulate) and
// cp.async with its commit/wait groups.
#pragma once

#if defined(__CUDACC__)  // nvcc and NVRTC
#define VITK_EMU 0
#if !defined(__CUDACC_RTC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif
#define VITK_EXPORT(kernel)
#define VITK_SHARED(type, name, count) __shared__ __align__(16) type name[count]

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
// `#pragma unroll` (and `#pragma unroll n`) for the device compilers only (the host compiler
// warns on it).
#if VITK_EMU
#define VITK_UNROLL
#define VITK_UNROLL_BY(n)
#else
#define VITK_UNROLL _Pragma("unroll")
#define VITK_PRAGMA(x) _Pragma(#x)
#define VITK_UNROLL_BY(n) VITK_PRAGMA(unroll n)
#endif

// ---- bf16 storage -----------------------------------------------------------------------------
// The precision rule of the bf16 path (--precision bf16), as PyTorch's autocast has it: master
// weights, gradients and AdamW moments are fp32; the tensors that feed a matmul (bf16 weight
// copies, patches, LayerNorm outputs, q/k/v, the attention output, fc1's pre-activation and
// GELU output, and the backward's dY) are stored in bf16; everything else stays fp32: the
// residual stream and its gradient, LayerNorm statistics, softmax and probabilities, the loss,
// norms, reductions and split-K partials. Kernels with a bf16 instance take their matmul-side
// tensors as `vitk_bf16` and compute in fp32.
// bf16 values are stored as their 16 bits; arithmetic is always fp32. Rounding is written out
// (round to nearest even, NaN kept quiet) so that the device and the emulator give the same
// bits; it costs a few integer operations per element, nothing next to the memory traffic.
struct vitk_bf16 {
  unsigned short bits;
};

__device__ __forceinline__ unsigned short vitk_f32_to_bf16_bits(float f) {
  unsigned x = __float_as_uint(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return (unsigned short)(x >> 16);
}
__device__ __forceinline__ float vitk_bf16_bits_to_f32(unsigned short b) {
  return __uint_as_float((unsigned)b << 16);
}
// Loads and stores of a tensor element of either storage type, as fp32.
__device__ __forceinline__ float vitk_ld(const float* p) { return *p; }
__device__ __forceinline__ float vitk_ld(const vitk_bf16* p) { return vitk_bf16_bits_to_f32(p->bits); }
__device__ __forceinline__ void vitk_st(float* p, float v) { *p = v; }
__device__ __forceinline__ void vitk_st(vitk_bf16* p, float v) { p->bits = vitk_f32_to_bf16_bits(v); }
// Two bf16 in one 32-bit register, `lo` in the low half (the lower index), as the tensor-core
// fragments hold them.
__device__ __forceinline__ unsigned vitk_pack_bf16x2(float lo, float hi) {
  return (unsigned)vitk_f32_to_bf16_bits(lo) | ((unsigned)vitk_f32_to_bf16_bits(hi) << 16);
}

// ---- tensor-core wrappers ---------------------------------------------------------------------
// vitk_ldmatrix<COUNT, TRANS>(r, row): ldmatrix.sync.aligned.m8n8.x{COUNT}[.trans].shared.b16.
//   COUNT 8x8 matrices of 16-bit elements; lane 8*i + j passes the address of row j of matrix
//   i (16-byte aligned, in shared memory). Lane l receives in r[i], from matrix i, the elements
//   (row l/4, columns 2(l%4), 2(l%4)+1), or with TRANS (rows 2(l%4), 2(l%4)+1, column l/4),
//   the first in the low half.
// vitk_mma_bf16(d, a, b): mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, d += a * b, with
//   g = lane/4, t = lane%4 (PTX ISA, "Matrix fragments for mma.m16n8k16"):
//     a[0] = A(g, 2t..2t+1)   a[1] = A(g+8, 2t..)   a[2] = A(g, 2t+8..)   a[3] = A(g+8, 2t+8..)
//     b[0] = B(2t..2t+1, g)   b[1] = B(2t+8..2t+9, g)
//     d[0..1] = D(g, 2t..2t+1)   d[2..3] = D(g+8, 2t..2t+1)
// vitk_cp_async16(dst, src, src_bytes): cp.async.cg.shared.global of 16 bytes, the last
//   16 - src_bytes of them zero-filled; vitk_cp_async_commit(); vitk_cp_async_wait<N>():
//   wait until at most N committed groups of this thread are still in flight.
#if !VITK_EMU
template <int COUNT, bool TRANS>
__device__ __forceinline__ void vitk_ldmatrix(unsigned (&r)[COUNT], const void* row) {
  static_assert(COUNT == 2 || COUNT == 4, "ldmatrix .x2 or .x4");
  const unsigned a = (unsigned)__cvta_generic_to_shared(row);
  if constexpr (COUNT == 4 && !TRANS)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
  else if constexpr (COUNT == 4 && TRANS)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
  else if constexpr (!TRANS)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(a));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(a));
}

__device__ __forceinline__ void vitk_mma_bf16(float (&d)[4], const unsigned (&a)[4],
                                              const unsigned (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void vitk_cp_async16(void* dst, const void* src, int src_bytes) {
  const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void vitk_cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void vitk_cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

#else  // the emulated twins: warp-wide instructions are warp collectives that follow the
       // documented fragment layouts element by element

namespace vitk_emu {
struct LdmatrixLane {
  const unsigned short* row;
  unsigned* out;
};
template <int COUNT, bool TRANS>
void ldmatrix_all(void* const* lanes) {
  auto lane = [&](int l) { return static_cast<LdmatrixLane*>(lanes[l]); };
  unsigned result[32][4];
  for (int l = 0; l < 32; l++)
    for (int i = 0; i < COUNT; i++) {
      unsigned short lo, hi;
      if (!TRANS) {
        const unsigned short* row = lane(8 * i + l / 4)->row;
        lo = row[2 * (l % 4)];
        hi = row[2 * (l % 4) + 1];
      } else {
        lo = lane(8 * i + 2 * (l % 4))->row[l / 4];
        hi = lane(8 * i + 2 * (l % 4) + 1)->row[l / 4];
      }
      result[l][i] = (unsigned)lo | ((unsigned)hi << 16);
    }
  for (int l = 0; l < 32; l++)
    for (int i = 0; i < COUNT; i++) lane(l)->out[i] = result[l][i];
}

struct MmaLane {
  const unsigned* a;
  const unsigned* b;
  float* d;
};
inline float bf16_lo(unsigned v) { return vitk_bf16_bits_to_f32((unsigned short)(v & 0xffffu)); }
inline float bf16_hi(unsigned v) { return vitk_bf16_bits_to_f32((unsigned short)(v >> 16)); }
inline void mma_all(void* const* lanes) {
  float a[16][16], b[16][8], c[16][8];
  for (int l = 0; l < 32; l++) {
    const MmaLane* x = static_cast<const MmaLane*>(lanes[l]);
    const int g = l / 4, t = l % 4;
    for (int h = 0; h < 2; h++) {  // h: the k half (a[2], a[3]; b[1])
      a[g][2 * t + 8 * h] = bf16_lo(x->a[2 * h]);
      a[g][2 * t + 8 * h + 1] = bf16_hi(x->a[2 * h]);
      a[g + 8][2 * t + 8 * h] = bf16_lo(x->a[2 * h + 1]);
      a[g + 8][2 * t + 8 * h + 1] = bf16_hi(x->a[2 * h + 1]);
      b[2 * t + 8 * h][g] = bf16_lo(x->b[h]);
      b[2 * t + 8 * h + 1][g] = bf16_hi(x->b[h]);
    }
    c[g][2 * t] = x->d[0];
    c[g][2 * t + 1] = x->d[1];
    c[g + 8][2 * t] = x->d[2];
    c[g + 8][2 * t + 1] = x->d[3];
  }
  for (int m = 0; m < 16; m++)
    for (int n = 0; n < 8; n++)
      for (int k = 0; k < 16; k++) c[m][n] = std::fma(a[m][k], b[k][n], c[m][n]);
  for (int l = 0; l < 32; l++) {
    float* d = static_cast<const MmaLane*>(lanes[l])->d;
    const int g = l / 4, t = l % 4;
    d[0] = c[g][2 * t];
    d[1] = c[g][2 * t + 1];
    d[2] = c[g + 8][2 * t];
    d[3] = c[g + 8][2 * t + 1];
  }
}
}  // namespace vitk_emu

template <int COUNT, bool TRANS>
inline void vitk_ldmatrix(unsigned (&r)[COUNT], const void* row,
                          const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  static_assert(COUNT == 2 || COUNT == 4, "ldmatrix .x2 or .x4");
  const int lane = (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) & 31;
  if (lane < 8 * COUNT) {  // the lanes whose addresses the instruction reads
    if (reinterpret_cast<std::uintptr_t>(row) % 16 != 0 || !::vitk_emu::in_shared(row, 16))
      ::vitk_emu::misuse("ldmatrix row address not a 16-byte aligned shared-memory row", file,
                         line);
  }
  unsigned out[4];
  ::vitk_emu::LdmatrixLane me{static_cast<const unsigned short*>(row), out};
  ::vitk_emu::warp_instruction(&me, &::vitk_emu::ldmatrix_all<COUNT, TRANS>,
                               TRANS ? "ldmatrix.trans" : "ldmatrix", file, line);
  for (int i = 0; i < COUNT; i++) r[i] = out[i];
}

inline void vitk_mma_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                          const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::vitk_emu::MmaLane me{a, b, d};
  ::vitk_emu::warp_instruction(&me, &::vitk_emu::mma_all, "mma.sync.m16n8k16", file, line);
}

inline void vitk_cp_async16(void* dst, const void* src, int src_bytes,
                            const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::vitk_emu::cp_async(dst, src, 16, std::size_t(src_bytes), file, line);
}
inline void vitk_cp_async_commit() { ::vitk_emu::cp_async_commit(); }
template <int N>
inline void vitk_cp_async_wait(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::vitk_emu::cp_async_wait(N, file, line);
}
#endif
