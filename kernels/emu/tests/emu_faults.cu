// Kernels that exercise the emulator itself, most of them deliberately faulty: they are
// compiled into the emulator only (never by nvcc) and launched by the emulator self-tests.
#include "../../common.cuh"

// Threads 0..15 of the block return early; the rest wait at a barrier they never pass.
extern "C" __global__ void vitk_emutest_barrier_exit(int* out) {
  if (threadIdx.x < 16) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}
VITK_EXPORT(vitk_emutest_barrier_exit)

// One thread too many writes: out[n] is past the end of an n-float buffer.
extern "C" __global__ void vitk_emutest_write_past_end(float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) out[i] = 1.0f;
}
VITK_EXPORT(vitk_emutest_write_past_end)

// Reverses each block's slice through dynamic shared memory (blockDim floats).
extern "C" __global__ void vitk_emutest_dynamic_shared(float* out, const float* in) {
  float* s = vitk_dynamic_shared<float>();
  const int t = threadIdx.x, base = blockIdx.x * blockDim.x;
  s[t] = in[base + t];
  __syncthreads();
  out[base + t] = s[blockDim.x - 1 - t];
}
VITK_EXPORT(vitk_emutest_dynamic_shared)

// Lane 3 exits before a full-mask shuffle that names it.
extern "C" __global__ void vitk_emutest_shfl_exited(float* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}
VITK_EXPORT(vitk_emutest_shfl_exited)

// out[warp] = ballot of (lane % 3 == 0); out2[lane] = value of lane (lane + 1) % 32 via
// __shfl_sync, and value from __shfl_up_sync(.., 1).
extern "C" __global__ void vitk_emutest_warp_ops(unsigned* ballots, int* rotated, int* up) {
  const int lane = threadIdx.x & 31;
  const unsigned b = __ballot_sync(0xffffffffu, lane % 3 == 0);
  if (lane == 0) ballots[threadIdx.x >> 5] = b;
  rotated[threadIdx.x] = __shfl_sync(0xffffffffu, (int)threadIdx.x, (lane + 1) % 32);
  up[threadIdx.x] = __shfl_up_sync(0xffffffffu, (int)threadIdx.x, 1);
  __syncwarp();
}
VITK_EXPORT(vitk_emutest_warp_ops)

// Static shared memory is per block: each block counts its threads with a shared atomic.
extern "C" __global__ void vitk_emutest_static_shared(int* out) {
  VITK_SHARED(int, count, 1);
  if (threadIdx.x == 0) count[0] = 0;
  __syncthreads();
  atomicAdd(&count[0], 1);
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = count[0] + (int)blockIdx.x * 1000;
}
VITK_EXPORT(vitk_emutest_static_shared)

// Threads wait at two different __syncthreads() call sites.
extern "C" __global__ void vitk_emutest_divergent_barrier(int* out) {
  if (threadIdx.x & 1) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}
VITK_EXPORT(vitk_emutest_divergent_barrier)

// out[i] = in[i + 1] for i < n: the last thread reads in[n], one float past an n-float buffer.
extern "C" __global__ void vitk_emutest_read_past_end(float* out, const float* in, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i + 1];
}
VITK_EXPORT(vitk_emutest_read_past_end)

// cp.async misuse. One copy issued and never committed.
extern "C" __global__ void vitk_emutest_cp_async_uncommitted(float* out, const float* in) {
  VITK_SHARED(float, s, 4);
  vitk_cp_async16(s, in, 16);
  out[threadIdx.x] = 0.0f;
}
VITK_EXPORT(vitk_emutest_cp_async_uncommitted)

// A copy committed but never waited for, then read after a barrier: on a GPU a race, on the
// emulator the stale (poisoned, NaN) shared memory.
extern "C" __global__ void vitk_emutest_cp_async_no_wait(float* out, const float* in) {
  VITK_SHARED(float, s, 4);
  if (threadIdx.x == 0) vitk_cp_async16(s, in, 16);
  vitk_cp_async_commit();
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x & 3];
}
VITK_EXPORT(vitk_emutest_cp_async_no_wait)

// ldmatrix with a row address 2 bytes off 16-byte alignment.
extern "C" __global__ void vitk_emutest_ldmatrix_misaligned(unsigned* out) {
  VITK_SHARED(vitk_bf16, tile, 16 * 16 + 8);
  for (int i = threadIdx.x; i < 16 * 16 + 8; i += 32) tile[i].bits = (unsigned short)i;
  __syncwarp();
  unsigned r[4];
  vitk_ldmatrix<4, false>(r, tile + 1 + (threadIdx.x & 15) * 16);
  out[threadIdx.x] = r[0];
}
VITK_EXPORT(vitk_emutest_ldmatrix_misaligned)

// mma.sync in a block of 16 threads: the warp is not full.
extern "C" __global__ void vitk_emutest_mma_partial_warp(float* out) {
  unsigned a[4] = {0u, 0u, 0u, 0u}, b[2] = {0u, 0u};
  float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  vitk_mma_bf16(d, a, b);
  out[threadIdx.x] = d[0];
}
VITK_EXPORT(vitk_emutest_mma_partial_warp)
