// The fp32 matmul (--precision fp32: the exact path the parity tests hold to 1e-5), with the
// fused epilogues of epilogue.cuh; every linear layer of the model and every backward product:
//   C[i, j] (=|+=) epilogue( sum_k A(i, k) * B(k, j) ),  i < M, j < N
//   A(i, k) = a[i * lda_m + k * lda_k],  B(k, j) = b[k * ldb_k + j * ldb_n]  (any strides, so
//   transposes are free):
//     forward   y = x W^T + b:   A = x [R, I] (I, 1),  B = W [O, I] read as (1, I)
//     backward  dX = dY W:       A = dY [R, O] (O, 1), B = W [O, I] read as (I, 1)
//               dW += dY^T X:    A = dY read as (1, O), B = X [R, I] (I, 1), ACCUMULATE,
//                                and db += the row sums of A (dbias, see below)
// Split-K (gridDim.z = S > 1, dW only): block z sums k in [z*k_chunk, (z+1)*k_chunk) and
// writes its raw partial to ws[z, M, N] (and the bias partial to ws[S*M*N + z*M + i]);
// vitk_splitk_reduce then adds the S partials in order into C and dbias (deterministic: no
// atomics, a fixed summation order for a given S).
// Bias gradient: with dbias, the blocks of the first column tile also sum the rows of their A
// tiles (A(i, k) = dY[k, i]): db[i] += sum_k A(i, k), folded into the same pass over dY.
// Correct for any M, N, K: tiles are bounds-checked on load (zero fill) and on store.
// Launch: block 256 = 16 x 16 threads, each a 4 x 4 sub-tile of a 64 x 64 tile of C (rows
//         ty + 16r, columns tx + 16c: conflict-free shared reads); grid (ceil(N/64),
//         ceil(M/64), S); K advances 16 at a time through shared memory.
// Memory traffic: reads A ceil(N/64) times and B ceil(M/64) times (from L2 mostly), writes C
//         once (read-modify-write with ACCUMULATE; + bias N, residual M*N, aux M*N);
//         2*M*N*K flops. Split-K adds S*M*N partials written and read once.
#include "epilogue.cuh"

#define VITK_MM_BM 64
#define VITK_MM_BN 64
#define VITK_MM_BK 16

extern "C" __global__ void vitk_matmul(float* c, float* aux, float* dbias, float* ws,
                                       const float* a, const float* b, const float* bias,
                                       const float* residual, int m, int n, int k, int lda_m,
                                       int lda_k, int ldb_k, int ldb_n, int k_chunk, int flags,
                                       int qkv_tokens, int qkv_heads) {
  VITK_SHARED(float, as, VITK_MM_BK * VITK_MM_BM);
  VITK_SHARED(float, bs, VITK_MM_BK * VITK_MM_BN);
  VITK_SHARED(float, rowsum, 256);
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int row0 = blockIdx.y * VITK_MM_BM, col0 = blockIdx.x * VITK_MM_BN;
  const int k_begin = blockIdx.z * k_chunk;
  const int k_end = min(k, k_begin + k_chunk);
  const bool split = gridDim.z > 1;
  // Bias row sums: thread t owns row t % 64 and a quarter of each K tile.
  const bool sum_rows = dbias && blockIdx.x == 0;
  float my_rowsum = 0.0f;
  float acc[4][4];
  for (int r = 0; r < 4; r++)
    for (int q = 0; q < 4; q++) acc[r][q] = 0.0f;
  // Load order: the unit-stride dimension fastest, so global reads coalesce.
  const bool a_k_fast = lda_k == 1;
  const bool b_n_fast = ldb_n == 1;
  for (int k0 = k_begin; k0 < k_end; k0 += VITK_MM_BK) {
    for (int l = threadIdx.x; l < VITK_MM_BK * VITK_MM_BM; l += 256) {
      const int kk = a_k_fast ? (l & (VITK_MM_BK - 1)) : (l / VITK_MM_BM);
      const int ii = a_k_fast ? (l / VITK_MM_BK) : (l & (VITK_MM_BM - 1));
      const int gi = row0 + ii, gk = k0 + kk;
      as[kk * VITK_MM_BM + ii] =
          (gi < m && gk < k_end) ? a[(long long)gi * lda_m + (long long)gk * lda_k] : 0.0f;
    }
    for (int l = threadIdx.x; l < VITK_MM_BK * VITK_MM_BN; l += 256) {
      const int kk = b_n_fast ? (l / VITK_MM_BN) : (l & (VITK_MM_BK - 1));
      const int jj = b_n_fast ? (l & (VITK_MM_BN - 1)) : (l / VITK_MM_BK);
      const int gj = col0 + jj, gk = k0 + kk;
      bs[kk * VITK_MM_BN + jj] =
          (gj < n && gk < k_end) ? b[(long long)gk * ldb_k + (long long)gj * ldb_n] : 0.0f;
    }
    __syncthreads();
    if (sum_rows) {
      const int ii = threadIdx.x & (VITK_MM_BM - 1), part = threadIdx.x / VITK_MM_BM;
      for (int kk = part * 4; kk < part * 4 + 4; kk++) my_rowsum += as[kk * VITK_MM_BM + ii];
    }
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
  if (sum_rows) {
    // The four quarters of each row, added in order by the thread of the first quarter.
    rowsum[threadIdx.x] = my_rowsum;
    __syncthreads();
    if (threadIdx.x < VITK_MM_BM && row0 + (int)threadIdx.x < m) {
      const int i = row0 + threadIdx.x;
      const float s = ((rowsum[threadIdx.x] + rowsum[threadIdx.x + 64]) + rowsum[threadIdx.x + 128]) +
                      rowsum[threadIdx.x + 192];
      if (split)
        ws[(long long)gridDim.z * m * n + (long long)blockIdx.z * m + i] = s;
      else
        dbias[i] += s;
    }
  }
  const VitkEpilogue<float> ep{c, aux, bias, residual, m, n, flags, qkv_tokens, qkv_heads};
  for (int r = 0; r < 4; r++) {
    const int i = row0 + ty + 16 * r;
    for (int q = 0; q < 4; q++) {
      const int j = col0 + tx + 16 * q;
      if (split) {
        if (i < m && j < n) ws[((long long)blockIdx.z * m + i) * n + j] = acc[r][q];
      } else {
        ep.apply(i, j, acc[r][q]);
      }
    }
  }
}
VITK_EXPORT(vitk_matmul)

// Split-K reduction: c[i] += sum over z (in order) of ws[z, i], i < M*N; with dbias, also
// dbias[i] += sum over z of ws[S*M*N + z*M + i], i < M. One thread per item, grid-stride.
extern "C" __global__ void vitk_splitk_reduce(float* c, float* dbias, const float* ws, int splits,
                                              int m, int n) {
  const long long mn = (long long)m * n;
  const long long items = mn + (dbias ? m : 0);
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < items;
       i += (long long)gridDim.x * blockDim.x) {
    float s = 0.0f;
    if (i < mn) {
      for (int z = 0; z < splits; z++) s += ws[z * mn + i];
      c[i] += s;
    } else {
      const long long r = i - mn;
      for (int z = 0; z < splits; z++) s += ws[splits * mn + z * m + r];
      dbias[r] += s;
    }
  }
}
VITK_EXPORT(vitk_splitk_reduce)
