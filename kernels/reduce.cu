// Test kernels for reduce.cuh, so the reductions are checked on their own.
//   vitk_test_warp_sum:  one warp (block 32), out[lane] = sum(in[0..32)) on every lane.
//   vitk_test_block_sum: grid R, any 1-D block; out[r] = sum(in[r*n .. r*n+n)).
// Memory traffic: reads the input once, writes 32 floats (warp) or R floats (block).
#include "reduce.cuh"

extern "C" __global__ void vitk_test_warp_sum(float* out, const float* in) {
  const int lane = threadIdx.x;
  out[lane] = vitk_warp_sum(in[lane]);
}
VITK_EXPORT(vitk_test_warp_sum)

extern "C" __global__ void vitk_test_block_sum(float* out, const float* in, int n) {
  VITK_SHARED(float, scratch, 32);
  const float* row = in + (long long)blockIdx.x * n;
  float v = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += row[i];
  v = vitk_block_sum(v, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = v;
}
VITK_EXPORT(vitk_test_block_sum)
