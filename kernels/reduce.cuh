// Warp-wide and block-wide fp32 sums, used by the row-wise kernels (layernorm, softmax).
// Both are deterministic: a fixed tree inside a warp, then the per-warp partials are added in
// warp order by every thread. Block sums work for any 1-D block size up to 1024, including
// sizes that are not a multiple of 32 (the last warp is then partial).
#pragma once
#include "common.cuh"

// Sum of v over the 32 lanes of a full warp; every lane receives the total.
__device__ __forceinline__ float vitk_warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(VITK_FULL_MASK, v, offset);
  return v;
}

// Sum of v over the first `lanes` lanes (1..32) of a warp whose other lanes do not exist or
// do not take part; the total is valid on lane 0 only.
__device__ __forceinline__ float vitk_warp_sum_partial(float v, int lanes) {
  const unsigned mask = lanes >= 32 ? VITK_FULL_MASK : (1u << lanes) - 1u;
  const int lane = threadIdx.x & 31;
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other = __shfl_down_sync(mask, v, offset);
    if (lane + offset < lanes) v += other;  // lanes past the end would read undefined values
  }
  return v;
}

// Sum of v over all threads of a 1-D block; every thread receives the total.
// `scratch` is shared memory of at least 32 floats; it may be reused right after the call
// (the trailing barrier protects it). Every thread of the block must call this.
__device__ __forceinline__ float vitk_block_sum(float v, float* scratch) {
  const int tid = threadIdx.x;
  const int n = blockDim.x;
  const int warp = tid >> 5;
  const int nwarps = (n + 31) >> 5;
  v = vitk_warp_sum_partial(v, min(32, n - (warp << 5)));
  if ((tid & 31) == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < nwarps; w++) total += scratch[w];
  __syncthreads();
  return total;
}
