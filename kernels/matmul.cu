// Tiled shared-memory fp32 matmul with fused epilogues; every linear layer of the model and
// every backward product goes through it:
//   C[i, j] (=|+=) epilogue( sum_k A(i, k) * B(k, j) ),  i < M, j < N
//   A(i, k) = a[i * lda_m + k * lda_k],  B(k, j) = b[k * ldb_k + j * ldb_n]  (any strides, so
//   transposes are free):
//     forward   y = x W^T + b:   A = x [R, I] (I, 1),  B = W [O, I] read as (1, I)
//     backward  dX = dY W:       A = dY [R, O] (O, 1), B = W [O, I] read as (I, 1)
//               dW += dY^T X:    A = dY read as (1, O), B = X [R, I] (I, 1), ACCUMULATE
//   epilogue, in this order: v = acc (+ bias[j]); aux[i, j] = v (when aux); v = gelu(v) when
//   GELU; v += residual[i, j] (when residual); C = v, or C += v with ACCUMULATE.
//   QKV: C is the head-major q | k | v buffer [3, B, H, T, hd] instead of row-major [M, N]:
//   row i = b*T + t, column j = s*D + h*hd + e goes to ((s*B + b)*H + h)*T*hd + t*hd + e.
// Correct for any M, N, K: tiles are bounds-checked on load (zero fill) and on store.
// Bias gradients (column sums) are vitk_colsum_partial + vitk_colsum_reduce: fixed row chunks
// per block, then the partials added in chunk order (deterministic, no atomics).
// Launch: matmul: block 256 = 16 x 16 threads, each a 4 x 4 sub-tile of a 64 x 64 tile of C
//         (rows ty + 16r, columns tx + 16c: conflict-free shared reads); grid (ceil(N/64),
//         ceil(M/64)); K advances 16 at a time through shared memory. colsum_partial: block
//         256 over columns, grid (ceil(N/256), chunks); colsum_reduce: one thread per column.
// Memory traffic: matmul reads A ceil(N/64) times and B ceil(M/64) times (from L2 mostly),
//         writes C once (read-modify-write with ACCUMULATE; + bias N, residual M*N, aux M*N);
//         2*M*N*K flops. colsum: reads M*N once, writes chunks*N partials, reads them once.
#include "common.cuh"

#define VITK_MM_BM 64
#define VITK_MM_BN 64
#define VITK_MM_BK 16
#define VITK_MM_ACCUMULATE 1
#define VITK_MM_GELU 2
#define VITK_MM_QKV 4

namespace vitk_matmul_detail {
__device__ __forceinline__ float gelu(float v) {
  return 0.5f * v * erfcf(-v * 0.70710678118654752440f);
}
}  // namespace vitk_matmul_detail

extern "C" __global__ void vitk_matmul(float* c, float* aux, const float* a, const float* b,
                                       const float* bias, const float* residual, int m, int n,
                                       int k, int lda_m, int lda_k, int ldb_k, int ldb_n,
                                       int flags, int qkv_tokens, int qkv_heads) {
  VITK_SHARED(float, as, VITK_MM_BK * VITK_MM_BM);
  VITK_SHARED(float, bs, VITK_MM_BK * VITK_MM_BN);
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int row0 = blockIdx.y * VITK_MM_BM, col0 = blockIdx.x * VITK_MM_BN;
  float acc[4][4];
  for (int r = 0; r < 4; r++)
    for (int q = 0; q < 4; q++) acc[r][q] = 0.0f;
  // Load order: the unit-stride dimension fastest, so global reads coalesce.
  const bool a_k_fast = lda_k == 1;
  const bool b_n_fast = ldb_n == 1;
  for (int k0 = 0; k0 < k; k0 += VITK_MM_BK) {
    for (int l = threadIdx.x; l < VITK_MM_BK * VITK_MM_BM; l += 256) {
      const int kk = a_k_fast ? (l & (VITK_MM_BK - 1)) : (l / VITK_MM_BM);
      const int ii = a_k_fast ? (l / VITK_MM_BK) : (l & (VITK_MM_BM - 1));
      const int gi = row0 + ii, gk = k0 + kk;
      as[kk * VITK_MM_BM + ii] =
          (gi < m && gk < k) ? a[(long long)gi * lda_m + (long long)gk * lda_k] : 0.0f;
    }
    for (int l = threadIdx.x; l < VITK_MM_BK * VITK_MM_BN; l += 256) {
      const int kk = b_n_fast ? (l / VITK_MM_BN) : (l & (VITK_MM_BK - 1));
      const int jj = b_n_fast ? (l & (VITK_MM_BN - 1)) : (l / VITK_MM_BK);
      const int gj = col0 + jj, gk = k0 + kk;
      bs[kk * VITK_MM_BN + jj] =
          (gj < n && gk < k) ? b[(long long)gk * ldb_k + (long long)gj * ldb_n] : 0.0f;
    }
    __syncthreads();
VITK_UNROLL
    for (int kk = 0; kk < VITK_MM_BK; kk++) {
      float av[4], bv[4];
      for (int r = 0; r < 4; r++) av[r] = as[kk * VITK_MM_BM + ty + 16 * r];
      for (int q = 0; q < 4; q++) bv[q] = bs[kk * VITK_MM_BN + tx + 16 * q];
      for (int r = 0; r < 4; r++)
        for (int q = 0; q < 4; q++) acc[r][q] += av[r] * bv[q];
    }
    __syncthreads();
  }
  for (int r = 0; r < 4; r++) {
    const int i = row0 + ty + 16 * r;
    if (i >= m) continue;
    for (int q = 0; q < 4; q++) {
      const int j = col0 + tx + 16 * q;
      if (j >= n) continue;
      float v = acc[r][q];
      if (bias) v += bias[j];
      const long long rowmajor = (long long)i * n + j;
      if (aux) aux[rowmajor] = v;
      if (flags & VITK_MM_GELU) v = vitk_matmul_detail::gelu(v);
      if (residual) v += residual[rowmajor];
      long long dst = rowmajor;
      if (flags & VITK_MM_QKV) {
        const int d = n / 3, hd = d / qkv_heads;
        const int s = j / d, h = (j - s * d) / hd, e = j - s * d - h * hd;
        const int bi = i / qkv_tokens, t = i - bi * qkv_tokens;
        const long long batch = m / qkv_tokens;
        dst = (((long long)s * batch + bi) * qkv_heads + h) * (long long)qkv_tokens * hd +
              (long long)t * hd + e;
      }
      if (flags & VITK_MM_ACCUMULATE)
        c[dst] += v;
      else
        c[dst] = v;
    }
  }
}
VITK_EXPORT(vitk_matmul)

// partial[chunk, j] = sum of rows [chunk*rows_per_chunk, ...) of column j of x [M, N].
extern "C" __global__ void vitk_colsum_partial(float* partial, const float* x, int m, int n,
                                               int rows_per_chunk) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  const int r0 = blockIdx.y * rows_per_chunk;
  const int r1 = min(m, r0 + rows_per_chunk);
  float s = 0.0f;
  for (int r = r0; r < r1; r++) s += x[(long long)r * n + j];
  partial[(long long)blockIdx.y * n + j] = s;
}
VITK_EXPORT(vitk_colsum_partial)

// acc[j] += sum over chunks (in order) of partial[chunk, j].
extern "C" __global__ void vitk_colsum_reduce(float* acc, const float* partial, int chunks,
                                              int n) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  float s = 0.0f;
  for (int c = 0; c < chunks; c++) s += partial[(long long)c * n + j];
  acc[j] += s;
}
VITK_EXPORT(vitk_colsum_reduce)
