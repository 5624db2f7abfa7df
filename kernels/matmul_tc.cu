// The bf16 tensor-core matmul (--precision bf16): the same products and fused epilogues as
// matmul.cu (see there and epilogue.cuh), with bf16 operands, fp32 accumulation through
// mma.sync.m16n8k16, operands through ldmatrix, and global -> shared through a 3-stage cp.async
// pipeline (tile.cuh). C (and aux) are fp32 or bf16 per instance; the residual is fp32.
//   A(i, k): K-major (a[i * lda + k], forward and dX: x or dY) or M-major (a[k * lda + i], dW:
//            dY read transposed);
//   B(k, j): K-major (b[j * ldb + k], forward: W [O, I]) or N-major (b[k * ldb + j], dX: W,
//            dW: X).
// With dbias (weight gradients), the blocks of the first column tile also sum the rows of
// A (db[i] += sum_k A(i, k)), as matmul.cu does.
// Instances, named vitk_mm_tc_<tile>_<A><B>_<out>: tile L = 128 x 128 (8 warps of 64 x 32) for
// wide products, S = 64 x 64 (4 warps of 32 x 32) so that narrow ones still fill the GPU;
// layouts kk (forward), kn (dX), mn (dW, fp32 out, split-K and bias row sums as in matmul.cu).
// Any M, N, K: tiles are zero-filled past the edges (and past the split's K range), stores are
// masked. 16-byte cp.async needs A, B and their leading dimensions 16-byte aligned (`vec_a`,
// `vec_b`, decided by the launcher); otherwise the same tiles load element by element.
// Launch: block 256 (L) or 128 (S) threads; grid (ceil(N/BN), ceil(M/BM), splits); dynamic
//         shared memory 3 stages x (A tile + B tile) bf16 (L: <= 60 KiB, opt-in above 48 KiB).
// Memory traffic: reads A ceil(N/BN) times and B ceil(M/BM) times (mostly L2), writes C once
//         (+ aux, residual, bias as in matmul.cu); 2*M*N*K flops.
#include "epilogue.cuh"
#include "tile.cuh"

#define VITK_TC_BK 32
#define VITK_TC_STAGES 3

namespace vitk_tc {

template <int BM, int BN, bool A_KMAJOR, bool B_KMAJOR>
struct Layout {
  using TileA = VitkTile<A_KMAJOR ? BM : VITK_TC_BK, A_KMAJOR ? VITK_TC_BK : BM>;
  using TileB = VitkTile<B_KMAJOR ? BN : VITK_TC_BK, B_KMAJOR ? VITK_TC_BK : BN>;
  static constexpr int STAGE = TileA::ELEMS + TileB::ELEMS;  // bf16 elements per stage
  static constexpr int SHARED_BYTES = VITK_TC_STAGES * STAGE * 2;
};

template <int BM, int BN, int WARPS_M, int WARPS_N, bool A_KMAJOR, bool B_KMAJOR,
          typename OutT>
__device__ __forceinline__ void matmul(OutT* c, OutT* aux, float* dbias, float* ws,
                                       const vitk_bf16* a, const vitk_bf16* b, const float* bias,
                                       const float* residual, int m, int n, int k, int lda,
                                       int ldb, int k_chunk, int flags, int vec_a, int vec_b,
                                       int qkv_tokens, int qkv_heads) {
  using L = Layout<BM, BN, A_KMAJOR, B_KMAJOR>;
  constexpr int THREADS = 32 * WARPS_M * WARPS_N;
  constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;  // warp tile
  constexpr int MI = WM / 16, NI = WN / 8;             // m16 x n8 fragments per warp
  static_assert(NI % 2 == 0, "B fragments are loaded in pairs");
  constexpr int LDA = L::TileA::LD, LDB = L::TileB::LD;
  VITK_SHARED(float, rowsum, THREADS);
  vitk_bf16* smem = vitk_dynamic_shared<vitk_bf16>();

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm0 = (warp / WARPS_N) * WM, wn0 = (warp % WARPS_N) * WN;
  const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
  const int k_begin = blockIdx.z * k_chunk;
  const int k_end = min(k, k_begin + k_chunk);
  const int k_tiles = (max(0, k_end - k_begin) + VITK_TC_BK - 1) / VITK_TC_BK;
  const bool split = gridDim.z > 1;

  // Fills stage `s` with the K tile starting at k0 (A and B, zero past every edge).
  auto load_stage = [&](int s, int k0) {
    vitk_bf16* ta = smem + s * L::STAGE;
    vitk_bf16* tb = ta + L::TileA::ELEMS;
    if constexpr (A_KMAJOR)
      vitk_load_tile<BM, VITK_TC_BK, THREADS>(ta, a, lda, row0, m, k0, k_end, vec_a);
    else
      vitk_load_tile<VITK_TC_BK, BM, THREADS>(ta, a, lda, k0, k_end, row0, m, vec_a);
    if constexpr (B_KMAJOR)
      vitk_load_tile<BN, VITK_TC_BK, THREADS>(tb, b, ldb, col0, n, k0, k_end, vec_b);
    else
      vitk_load_tile<VITK_TC_BK, BN, THREADS>(tb, b, ldb, k0, k_end, col0, n, vec_b);
  };

  float acc[MI][NI][4];
VITK_UNROLL
  for (int i = 0; i < MI; i++)
VITK_UNROLL
    for (int j = 0; j < NI; j++)
VITK_UNROLL
      for (int r = 0; r < 4; r++) acc[i][j][r] = 0.0f;
  // Bias row sums (dW: A(i, k) = dY[k, i]): thread t owns row t % BM and one part of each
  // stage's K columns.
  constexpr int PARTS = THREADS / BM;
  const bool sum_rows = dbias && blockIdx.x == 0;
  float my_rowsum = 0.0f;

  // Prologue: the first STAGES - 1 tiles in flight, one commit group each.
  for (int s = 0; s < VITK_TC_STAGES - 1; s++) {
    if (s < k_tiles) load_stage(s, k_begin + s * VITK_TC_BK);
    vitk_cp_async_commit();
  }
  for (int kt = 0; kt < k_tiles; kt++) {
    vitk_cp_async_wait<VITK_TC_STAGES - 2>();  // tile kt has landed (in this thread)
    __syncthreads();  // ... in every thread; and stage (kt - 1) % STAGES is free to refill
    const int next = kt + VITK_TC_STAGES - 1;
    if (next < k_tiles) load_stage(next % VITK_TC_STAGES, k_begin + next * VITK_TC_BK);
    vitk_cp_async_commit();
    const vitk_bf16* ta = smem + (kt % VITK_TC_STAGES) * L::STAGE;
    const vitk_bf16* tb = ta + L::TileA::ELEMS;
    if (sum_rows) {
      const int i = threadIdx.x % BM, part = threadIdx.x / BM;
      for (int kk = part * (VITK_TC_BK / PARTS); kk < (part + 1) * (VITK_TC_BK / PARTS); kk++)
        my_rowsum += vitk_ld(A_KMAJOR ? ta + i * LDA + kk : ta + kk * LDA + i);
    }
VITK_UNROLL
    for (int kk = 0; kk < VITK_TC_BK; kk += 16) {
      unsigned af[MI][4], bfr[NI][2];
VITK_UNROLL
      for (int i = 0; i < MI; i++) {
        if constexpr (A_KMAJOR)
          vitk_frag_a_kmajor<LDA>(af[i], ta, wm0 + 16 * i, kk);
        else
          vitk_frag_a_mmajor<LDA>(af[i], ta, wm0 + 16 * i, kk);
      }
VITK_UNROLL
      for (int j = 0; j < NI; j += 2) {
        if constexpr (B_KMAJOR)
          vitk_frag_b_kmajor<LDB>(bfr[j], bfr[j + 1], tb, wn0 + 8 * j, kk);
        else
          vitk_frag_b_nmajor<LDB>(bfr[j], bfr[j + 1], tb, wn0 + 8 * j, kk);
      }
VITK_UNROLL
      for (int i = 0; i < MI; i++)
VITK_UNROLL
        for (int j = 0; j < NI; j++) vitk_mma_bf16(acc[i][j], af[i], bfr[j]);
    }
  }
  vitk_cp_async_wait<0>();  // only empty groups can be left; nothing lands after the exit

  if (sum_rows) {
    rowsum[threadIdx.x] = my_rowsum;
    __syncthreads();
    if ((int)threadIdx.x < BM && row0 + (int)threadIdx.x < m) {
      const int i = row0 + threadIdx.x;
      float s = 0.0f;
      for (int p = 0; p < PARTS; p++) s += rowsum[p * BM + threadIdx.x];
      if (split)
        ws[(long long)gridDim.z * m * n + (long long)blockIdx.z * m + i] = s;
      else
        dbias[i] += s;
    }
  }

  const VitkEpilogue<OutT> ep{c, aux, bias, residual, m, n, flags, qkv_tokens, qkv_heads};
  const int g = lane >> 2, t = lane & 3;
VITK_UNROLL
  for (int i = 0; i < MI; i++)
VITK_UNROLL
    for (int j = 0; j < NI; j++)
VITK_UNROLL
      for (int r = 0; r < 4; r++) {
        const int gi = row0 + wm0 + 16 * i + g + (r >= 2 ? 8 : 0);
        const int gj = col0 + wn0 + 8 * j + 2 * t + (r & 1);
        if (split) {
          if (gi < m && gj < n) ws[((long long)blockIdx.z * m + gi) * n + gj] = acc[i][j][r];
        } else {
          ep.apply(gi, gj, acc[i][j][r]);
        }
      }
}

}  // namespace vitk_tc

// One extern "C" instance per (tile, layouts, output type): the launcher picks by name.
#define VITK_TC_INSTANCE(NAME, BM, BN, WARPS_M, WARPS_N, AK, BK_, OUT)                         \
  extern "C" __global__ void __launch_bounds__(32 * WARPS_M * WARPS_N)                        \
      NAME(OUT* c, OUT* aux, float* dbias, float* ws, const vitk_bf16* a, const vitk_bf16* b, \
           const float* bias, const float* residual, int m, int n, int k, int lda, int ldb,   \
           int k_chunk, int flags, int vec_a, int vec_b, int qkv_tokens, int qkv_heads) {     \
    vitk_tc::matmul<BM, BN, WARPS_M, WARPS_N, AK, BK_, OUT>(c, aux, dbias, ws, a, b, bias,     \
                                                             residual, m, n, k, lda, ldb,      \
                                                             k_chunk, flags, vec_a, vec_b,     \
                                                             qkv_tokens, qkv_heads);           \
  }                                                                                           \
  VITK_EXPORT(NAME)

VITK_TC_INSTANCE(vitk_mm_tc_L_kk_f32, 128, 128, 2, 4, true, true, float)
VITK_TC_INSTANCE(vitk_mm_tc_L_kk_bf16, 128, 128, 2, 4, true, true, vitk_bf16)
VITK_TC_INSTANCE(vitk_mm_tc_S_kk_f32, 64, 64, 2, 2, true, true, float)
VITK_TC_INSTANCE(vitk_mm_tc_S_kk_bf16, 64, 64, 2, 2, true, true, vitk_bf16)
VITK_TC_INSTANCE(vitk_mm_tc_L_kn_f32, 128, 128, 2, 4, true, false, float)
VITK_TC_INSTANCE(vitk_mm_tc_L_kn_bf16, 128, 128, 2, 4, true, false, vitk_bf16)
VITK_TC_INSTANCE(vitk_mm_tc_S_kn_f32, 64, 64, 2, 2, true, false, float)
VITK_TC_INSTANCE(vitk_mm_tc_S_kn_bf16, 64, 64, 2, 2, true, false, vitk_bf16)
VITK_TC_INSTANCE(vitk_mm_tc_L_mn_f32, 128, 128, 2, 4, false, false, float)
VITK_TC_INSTANCE(vitk_mm_tc_S_mn_f32, 64, 64, 2, 2, false, false, float)
