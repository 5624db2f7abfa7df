// Test kernels for the tensor-core wrappers of common.cuh, so that each is checked on its own
// against plain loops (tests/tensor_core_wrappers.rs), on the emulator and on a GPU:
//   vitk_test_ldmatrix:  one warp; in [32 rows of 8] bf16 (four 8x8 matrices, matrix i = rows
//                        8i..8i+7) staged in shared memory, then ldmatrix .x4 (trans = 0/1) or
//                        .x2 (matrices 0 and 1); out[lane * 4 + i] = register i of the lane.
//   vitk_test_mma:       one warp; a [16, 16], b [16, 8] (k x n) bf16 and c [16, 8] fp32, row-major;
//                        fragments built with plain indexing from the documented layout, one
//                        mma, d [16, 8] = c + a b written back through the same layout.
//   vitk_test_cp_async:  one block of 64 threads copies `n` floats (n <= 1024) through a
//                        two-stage shared buffer of 16-byte cp.async chunks, chunk by chunk
//                        (src-size = the bytes left, zero fill past n); out [ceil(n/4)*4].
// Launch: grid 1; block 32 (ldmatrix, mma) or 64 (cp_async).
#include "common.cuh"

extern "C" __global__ void vitk_test_ldmatrix(unsigned* out, const vitk_bf16* in, int trans,
                                              int count) {
  VITK_SHARED(vitk_bf16, tile, 32 * 8);
  const int lane = threadIdx.x;
  for (int i = lane; i < 32 * 8; i += 32) tile[i] = in[i];
  __syncwarp();
  // Lane 8i + j gives row j of matrix i: rows are 8 elements = 16 bytes apart.
  const vitk_bf16* row = tile + lane * 8;
  unsigned r4[4] = {0u, 0u, 0u, 0u};
  if (count == 4) {
    if (trans)
      vitk_ldmatrix<4, true>(r4, row);
    else
      vitk_ldmatrix<4, false>(r4, row);
  } else {
    unsigned r2[2];
    if (trans)
      vitk_ldmatrix<2, true>(r2, row);
    else
      vitk_ldmatrix<2, false>(r2, row);
    r4[0] = r2[0];
    r4[1] = r2[1];
  }
  for (int i = 0; i < 4; i++) out[lane * 4 + i] = r4[i];
}
VITK_EXPORT(vitk_test_ldmatrix)

extern "C" __global__ void vitk_test_mma(float* d, const vitk_bf16* a, const vitk_bf16* b,
                                         const float* c) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  auto pair = [](const vitk_bf16* p, int i0, int i1) {
    return (unsigned)p[i0].bits | ((unsigned)p[i1].bits << 16);
  };
  unsigned af[4], bf[2];
  af[0] = pair(a, g * 16 + 2 * t, g * 16 + 2 * t + 1);
  af[1] = pair(a, (g + 8) * 16 + 2 * t, (g + 8) * 16 + 2 * t + 1);
  af[2] = pair(a, g * 16 + 2 * t + 8, g * 16 + 2 * t + 9);
  af[3] = pair(a, (g + 8) * 16 + 2 * t + 8, (g + 8) * 16 + 2 * t + 9);
  bf[0] = pair(b, (2 * t) * 8 + g, (2 * t + 1) * 8 + g);
  bf[1] = pair(b, (2 * t + 8) * 8 + g, (2 * t + 9) * 8 + g);
  float acc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t],
                  c[(g + 8) * 8 + 2 * t + 1]};
  vitk_mma_bf16(acc, af, bf);
  d[g * 8 + 2 * t] = acc[0];
  d[g * 8 + 2 * t + 1] = acc[1];
  d[(g + 8) * 8 + 2 * t] = acc[2];
  d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}
VITK_EXPORT(vitk_test_mma)

extern "C" __global__ void vitk_test_cp_async(float* out, const float* in, int n) {
  // Two stages of 64 chunks of 4 floats: a chunk per thread per stage.
  VITK_SHARED(float, stage, 2 * 64 * 4);
  const int tid = threadIdx.x;
  const int chunks = (n + 3) / 4, rounds = (chunks + 63) / 64;
  auto issue = [&](int round) {
    const int chunk = round * 64 + tid;
    if (chunk < chunks) {
      const int left = n - chunk * 4;
      const int bytes = (left >= 4 ? 4 : left) * 4;
      vitk_cp_async16(stage + (round % 2) * 256 + tid * 4, in + chunk * 4, bytes);
    }
    vitk_cp_async_commit();  // possibly empty: keeps the group count per round
  };
  issue(0);
  for (int r = 0; r < rounds; r++) {
    issue(r + 1);                // prefetch the next round into the other stage
    vitk_cp_async_wait<1>();     // round r has landed (round r + 1 may be in flight)
    __syncthreads();
    const int chunk = r * 64 + tid;
    if (chunk < chunks)
      for (int e = 0; e < 4; e++) out[chunk * 4 + e] = stage[(r % 2) * 256 + tid * 4 + e];
    __syncthreads();             // stage r % 2 is free for round r + 2
  }
  vitk_cp_async_wait<0>();
}
VITK_EXPORT(vitk_test_cp_async)
