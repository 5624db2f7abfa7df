// Fused multi-head attention on tensor cores (--precision bf16): softmax(scale Q K^T) V with
// the probabilities never written to global memory, forward and backward.
//   q, k, v   head-major bf16 [B, H, T, hd] (the QKV matmul's scatter), scale = hd^-0.5
//   forward   out [B, T, D] bf16 at columns h*hd.. (the proj input), lse [B, H, T] fp32 =
//             log sum_j exp(scale q_i . k_j), the only statistic kept for backward
//   backward  from dout [B, T, D] bf16 and out: rowdot [B, H, T] = sum_e dout . out (fp32,
//             vitk_attention_rowdot), then P = exp(scale Q K^T - lse) recomputed in tiles:
//             dV = P^T dO, dS = P * (dO V^T - rowdot), dK = scale dS^T Q (one kernel per key
//             tile) and dQ = scale dS K (one kernel per query tile), written into dqkv
//             [B, T, 3D] token-major bf16 (the QKV weight gradient's layout). Two kernels
//             instead of atomics: every output element is summed by one thread in a fixed
//             order (deterministic), at the cost of computing Q K^T twice.
// Tiles: 64 queries (4 warps of 16 rows) x 64 keys; the head dim is padded with zeros to HDP
// (16, 32, 64 or 128; one instance each), T to the tile: any T, any hd <= 128. Scores, the
// running max and sum (online softmax, in registers), and every accumulation are fp32; P and
// dS enter their products as bf16 (as flash attention does), straight from the accumulator
// fragments (the C layout of one mma is the A layout of the next).
// Launch: forward and dQ grid (ceil(T/64), B*H), dK/dV grid (ceil(T/64), B*H), block 128,
//         dynamic shared memory: forward 3, backward 4 tiles of [64, HDP + 8] bf16 (<= 70 KiB
//         at HDP 128, opt-in above 48 KiB); rowdot: one warp per row, blocks of 256.
// Memory traffic: forward reads Q once and K, V once per query tile, writes out and lse;
//         backward reads Q, K, V, dO once per tile of the other side, writes dqkv once.
//         Forward 4*T*T*hd flops per (b, h); backward 10*T*T*hd (S twice, dP twice).
#include "reduce.cuh"
#include "tile.cuh"

#define VITK_FA_TILE 64
#define VITK_FA_THREADS 128
#define VITK_FA_LOG2E 1.4426950408889634f
#define VITK_FA_LN2 0.6931471805599453f
#define VITK_NEG_INF (-__uint_as_float(0x7f800000u))

namespace vitk_fa {

template <int HDP>
using Tile = VitkTile<VITK_FA_TILE, HDP>;

// Fills a [64, HDP] tile with rows row0.. of a [rows, hd] matrix of row stride ld (zero past
// `rows` and past hd).
template <int HDP>
__device__ __forceinline__ void load(vitk_bf16* tile, const vitk_bf16* g, long long ld, int row0,
                                     int rows, int hd, bool vec) {
  vitk_load_tile<VITK_FA_TILE, HDP, VITK_FA_THREADS>(tile, g, ld, row0, rows, 0, hd, vec);
}

// S [16 x 64] += A (16 x HDP, fragments) . B^T where B is a K-major [64][HDP] tile (rows are
// the 64 columns of S).
template <int HDP>
__device__ __forceinline__ void scores(float (&s)[8][4], const unsigned (&a)[HDP / 16][4],
                                       const vitk_bf16* b_tile) {
VITK_UNROLL
  for (int c = 0; c < HDP / 16; c++)
VITK_UNROLL
    for (int j = 0; j < 8; j += 2) {
      unsigned b0[2], b1[2];
      vitk_frag_b_kmajor<Tile<HDP>::LD>(b0, b1, b_tile, 8 * j, 16 * c);
      vitk_mma_bf16(s[j], a[c], b0);
      vitk_mma_bf16(s[j + 1], a[c], b1);
    }
}

// acc [16 x HDP] += P (16 x 64, accumulator fragments, as bf16) . B where B is an N-major
// [64][HDP] tile (rows are P's 64 columns).
template <int HDP>
__device__ __forceinline__ void accumulate(float (&acc)[HDP / 8][4], const float (&p)[8][4],
                                           const vitk_bf16* b_tile) {
VITK_UNROLL
  for (int kc = 0; kc < 4; kc++) {
    // The C fragments of columns 16kc.. are the A fragment of k-chunk kc.
    const unsigned a[4] = {vitk_pack_bf16x2(p[2 * kc][0], p[2 * kc][1]),
                           vitk_pack_bf16x2(p[2 * kc][2], p[2 * kc][3]),
                           vitk_pack_bf16x2(p[2 * kc + 1][0], p[2 * kc + 1][1]),
                           vitk_pack_bf16x2(p[2 * kc + 1][2], p[2 * kc + 1][3])};
VITK_UNROLL
    for (int n = 0; n < HDP / 8; n += 2) {
      unsigned b0[2], b1[2];
      vitk_frag_b_nmajor<Tile<HDP>::LD>(b0, b1, b_tile, 8 * n, 16 * kc);
      vitk_mma_bf16(acc[n], a, b0);
      vitk_mma_bf16(acc[n + 1], a, b1);
    }
  }
}

// The 16-row A fragments of a warp from a K-major [64][HDP] tile, rows 16w...
template <int HDP>
__device__ __forceinline__ void fragments(unsigned (&a)[HDP / 16][4], const vitk_bf16* tile,
                                          int row0) {
VITK_UNROLL
  for (int c = 0; c < HDP / 16; c++) vitk_frag_a_kmajor<Tile<HDP>::LD>(a[c], tile, row0, 16 * c);
}

// Column (within the 64) of accumulator element r of n-tile j, and its row (0..15).
__device__ __forceinline__ int col_of(int j, int r) { return 8 * j + 2 * (threadIdx.x & 3) + (r & 1); }
__device__ __forceinline__ int row_of(int r) { return ((threadIdx.x & 31) >> 2) + (r >= 2 ? 8 : 0); }

// Max and sum over the 4 lanes of a quad (the lanes holding one accumulator row).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(VITK_FULL_MASK, v, 1));
  return fmaxf(v, __shfl_xor_sync(VITK_FULL_MASK, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(VITK_FULL_MASK, v, 1);
  return v + __shfl_xor_sync(VITK_FULL_MASK, v, 2);
}

template <int HDP>
__device__ __forceinline__ void forward(vitk_bf16* out, float* lse, const vitk_bf16* q,
                                        const vitk_bf16* k, const vitk_bf16* v, int heads, int t,
                                        int hd, float scale, int vec) {
  vitk_bf16* qs = vitk_dynamic_shared<vitk_bf16>();
  vitk_bf16* ks = qs + Tile<HDP>::ELEMS;
  vitk_bf16* vs = ks + Tile<HDP>::ELEMS;
  const int bh = blockIdx.y, b = bh / heads, h = bh - b * heads;
  const int q0 = blockIdx.x * VITK_FA_TILE, warp = threadIdx.x >> 5;
  const long long base = (long long)bh * t * hd;
  load<HDP>(qs, q + base, hd, q0, t, hd, vec);
  vitk_cp_async_commit();

  const float c = scale * VITK_FA_LOG2E;  // scores in log2 units: exp2 instead of exp
  float o[HDP / 8][4], m[2] = {VITK_NEG_INF, VITK_NEG_INF}, l[2] = {0.0f, 0.0f};
  unsigned qf[HDP / 16][4];
VITK_UNROLL
  for (int n = 0; n < HDP / 8; n++)
VITK_UNROLL
    for (int r = 0; r < 4; r++) o[n][r] = 0.0f;
  for (int k0 = 0; k0 < t; k0 += VITK_FA_TILE) {
    __syncthreads();  // the previous K, V tiles are no longer read
    load<HDP>(ks, k + base, hd, k0, t, hd, vec);
    load<HDP>(vs, v + base, hd, k0, t, hd, vec);
    vitk_cp_async_commit();
    vitk_cp_async_wait<0>();
    __syncthreads();
    if (k0 == 0) fragments<HDP>(qf, qs, 16 * warp);
    float s[8][4];
VITK_UNROLL
    for (int j = 0; j < 8; j++)
VITK_UNROLL
      for (int r = 0; r < 4; r++) s[j][r] = 0.0f;
    scores<HDP>(s, qf, ks);
    float mx[2] = {VITK_NEG_INF, VITK_NEG_INF};
VITK_UNROLL
    for (int j = 0; j < 8; j++)
VITK_UNROLL
      for (int r = 0; r < 4; r++) {
        const float x = k0 + col_of(j, r) < t ? s[j][r] * c : VITK_NEG_INF;
        s[j][r] = x;
        mx[r >> 1] = fmaxf(mx[r >> 1], x);
      }
    float corr[2];
VITK_UNROLL
    for (int i = 0; i < 2; i++) {
      const float m_new = fmaxf(m[i], quad_max(mx[i]));  // finite: key k0 < t exists
      corr[i] = exp2f(m[i] - m_new);
      m[i] = m_new;
      l[i] *= corr[i];
    }
VITK_UNROLL
    for (int j = 0; j < 8; j++)
VITK_UNROLL
      for (int r = 0; r < 4; r++) {
        const float p = exp2f(s[j][r] - m[r >> 1]);
        s[j][r] = p;
        l[r >> 1] += p;
      }
VITK_UNROLL
    for (int n = 0; n < HDP / 8; n++)
VITK_UNROLL
      for (int r = 0; r < 4; r++) o[n][r] *= corr[r >> 1];
    accumulate<HDP>(o, s, vs);
  }
  const int d = heads * hd;
VITK_UNROLL
  for (int i = 0; i < 2; i++) l[i] = quad_sum(l[i]);
VITK_UNROLL
  for (int n = 0; n < HDP / 8; n++)
VITK_UNROLL
    for (int r = 0; r < 4; r++) {
      const int row = q0 + 16 * warp + row_of(r), col = col_of(n, r);
      if (row < t && col < hd)
        vitk_st(out + ((long long)b * t + row) * d + h * hd + col, o[n][r] / l[r >> 1]);
    }
  if ((threadIdx.x & 3) == 0)
VITK_UNROLL
    for (int i = 0; i < 2; i++) {
      const int row = q0 + 16 * warp + row_of(2 * i);
      if (row < t) lse[(long long)bh * t + row] = (m[i] + log2f(l[i])) * VITK_FA_LN2;
    }
}

// dK and dV of the 64 keys of this block: for each query tile, P^T = exp(scale K Q^T - lse),
// dV += P^T dO, dP^T = V dO^T, dS^T = P^T * (dP^T - rowdot), dK += dS^T Q.
template <int HDP>
__device__ __forceinline__ void backward_kv(vitk_bf16* dqkv, const vitk_bf16* dout,
                                            const float* lse, const float* rowdot,
                                            const vitk_bf16* q, const vitk_bf16* k,
                                            const vitk_bf16* v, int heads, int t, int hd,
                                            float scale, int vec) {
  VITK_SHARED(float, lse_s, VITK_FA_TILE);
  VITK_SHARED(float, dot_s, VITK_FA_TILE);
  vitk_bf16* ks = vitk_dynamic_shared<vitk_bf16>();
  vitk_bf16* vs = ks + Tile<HDP>::ELEMS;
  vitk_bf16* qs = vs + Tile<HDP>::ELEMS;
  vitk_bf16* ds = qs + Tile<HDP>::ELEMS;  // the dO tile
  const int bh = blockIdx.y, b = bh / heads, h = bh - b * heads;
  const int k0 = blockIdx.x * VITK_FA_TILE, warp = threadIdx.x >> 5;
  const int d = heads * hd;
  const long long base = (long long)bh * t * hd;
  const vitk_bf16* dog = dout + (long long)b * t * d + h * hd;  // row stride d
  load<HDP>(ks, k + base, hd, k0, t, hd, vec);
  load<HDP>(vs, v + base, hd, k0, t, hd, vec);
  vitk_cp_async_commit();
  const float c = scale * VITK_FA_LOG2E;
  float dk[HDP / 8][4], dv[HDP / 8][4];
VITK_UNROLL
  for (int n = 0; n < HDP / 8; n++)
VITK_UNROLL
    for (int r = 0; r < 4; r++) dk[n][r] = dv[n][r] = 0.0f;
  for (int q0 = 0; q0 < t; q0 += VITK_FA_TILE) {
    __syncthreads();  // the previous query tiles are no longer read
    load<HDP>(qs, q + base, hd, q0, t, hd, vec);
    load<HDP>(ds, dog, d, q0, t, hd, vec);
    for (int i = threadIdx.x; i < VITK_FA_TILE; i += VITK_FA_THREADS) {
      const bool in = q0 + i < t;
      lse_s[i] = in ? lse[(long long)bh * t + q0 + i] * VITK_FA_LOG2E : 0.0f;
      dot_s[i] = in ? rowdot[(long long)bh * t + q0 + i] : 0.0f;
    }
    vitk_cp_async_commit();
    vitk_cp_async_wait<0>();
    __syncthreads();
    float p[8][4], dp[8][4];
VITK_UNROLL
    for (int j = 0; j < 8; j++)
VITK_UNROLL
      for (int r = 0; r < 4; r++) p[j][r] = dp[j][r] = 0.0f;
    {
      // The K and V fragments are read again each pass (ldmatrix is cheap): holding them
      // with both accumulators would exceed the registers at HDP 128.
      unsigned f[HDP / 16][4];
      fragments<HDP>(f, ks, 16 * warp);
      scores<HDP>(p, f, qs);  // S^T: keys (rows) x queries (columns)
      fragments<HDP>(f, vs, 16 * warp);
      scores<HDP>(dp, f, ds);  // dP^T = V dO^T
    }
VITK_UNROLL
    for (int j = 0; j < 8; j++)
VITK_UNROLL
      for (int r = 0; r < 4; r++) {
        const int col = col_of(j, r);
        const float pr = q0 + col < t ? exp2f(p[j][r] * c - lse_s[col]) : 0.0f;
        p[j][r] = pr;
        dp[j][r] = pr * (dp[j][r] - dot_s[col]);  // dS^T
      }
    accumulate<HDP>(dv, p, ds);
    accumulate<HDP>(dk, dp, qs);
  }
  vitk_cp_async_wait<0>();
  const long long row3 = 3LL * d;
VITK_UNROLL
  for (int n = 0; n < HDP / 8; n++)
VITK_UNROLL
    for (int r = 0; r < 4; r++) {
      const int key = k0 + 16 * warp + row_of(r), col = col_of(n, r);
      if (key < t && col < hd) {
        vitk_bf16* dst = dqkv + ((long long)b * t + key) * row3 + h * hd + col;
        vitk_st(dst + d, scale * dk[n][r]);
        vitk_st(dst + 2 * d, dv[n][r]);
      }
    }
}

// dQ of the 64 queries of this block: for each key tile, P = exp(scale Q K^T - lse),
// dS = P * (dO V^T - rowdot), dQ += dS K.
template <int HDP>
__device__ __forceinline__ void backward_q(vitk_bf16* dqkv, const vitk_bf16* dout,
                                           const float* lse, const float* rowdot,
                                           const vitk_bf16* q, const vitk_bf16* k,
                                           const vitk_bf16* v, int heads, int t, int hd,
                                           float scale, int vec) {
  vitk_bf16* qs = vitk_dynamic_shared<vitk_bf16>();
  vitk_bf16* ds = qs + Tile<HDP>::ELEMS;  // the dO tile
  vitk_bf16* ks = ds + Tile<HDP>::ELEMS;
  vitk_bf16* vs = ks + Tile<HDP>::ELEMS;
  const int bh = blockIdx.y, b = bh / heads, h = bh - b * heads;
  const int q0 = blockIdx.x * VITK_FA_TILE, warp = threadIdx.x >> 5;
  const int d = heads * hd;
  const long long base = (long long)bh * t * hd;
  load<HDP>(qs, q + base, hd, q0, t, hd, vec);
  load<HDP>(ds, dout + (long long)b * t * d + h * hd, d, q0, t, hd, vec);
  vitk_cp_async_commit();
  const float c = scale * VITK_FA_LOG2E;
  float my_lse[2], my_dot[2];
VITK_UNROLL
  for (int i = 0; i < 2; i++) {
    const int row = q0 + 16 * warp + row_of(2 * i);
    my_lse[i] = row < t ? lse[(long long)bh * t + row] * VITK_FA_LOG2E : 0.0f;
    my_dot[i] = row < t ? rowdot[(long long)bh * t + row] : 0.0f;
  }
  unsigned qf[HDP / 16][4], df[HDP / 16][4];
  float dq[HDP / 8][4];
VITK_UNROLL
  for (int n = 0; n < HDP / 8; n++)
VITK_UNROLL
    for (int r = 0; r < 4; r++) dq[n][r] = 0.0f;
  for (int k0 = 0; k0 < t; k0 += VITK_FA_TILE) {
    __syncthreads();
    load<HDP>(ks, k + base, hd, k0, t, hd, vec);
    load<HDP>(vs, v + base, hd, k0, t, hd, vec);
    vitk_cp_async_commit();
    vitk_cp_async_wait<0>();
    __syncthreads();
    if (k0 == 0) {
      fragments<HDP>(qf, qs, 16 * warp);
      fragments<HDP>(df, ds, 16 * warp);
    }
    float p[8][4], dp[8][4];
VITK_UNROLL
    for (int j = 0; j < 8; j++)
VITK_UNROLL
      for (int r = 0; r < 4; r++) p[j][r] = dp[j][r] = 0.0f;
    scores<HDP>(p, qf, ks);   // S
    scores<HDP>(dp, df, vs);  // dP = dO V^T
VITK_UNROLL
    for (int j = 0; j < 8; j++)
VITK_UNROLL
      for (int r = 0; r < 4; r++) {
        const float pr = k0 + col_of(j, r) < t ? exp2f(p[j][r] * c - my_lse[r >> 1]) : 0.0f;
        dp[j][r] = pr * (dp[j][r] - my_dot[r >> 1]);  // dS
      }
    accumulate<HDP>(dq, dp, ks);
  }
  const long long row3 = 3LL * d;
VITK_UNROLL
  for (int n = 0; n < HDP / 8; n++)
VITK_UNROLL
    for (int r = 0; r < 4; r++) {
      const int row = q0 + 16 * warp + row_of(r), col = col_of(n, r);
      if (row < t && col < hd)
        vitk_st(dqkv + ((long long)b * t + row) * row3 + h * hd + col, scale * dq[n][r]);
    }
}

}  // namespace vitk_fa

#define VITK_FA_INSTANCES(HDP)                                                                  \
  extern "C" __global__ void __launch_bounds__(VITK_FA_THREADS)                                 \
      vitk_attention_forward_tc##HDP(vitk_bf16* out, float* lse, const vitk_bf16* q,            \
                                     const vitk_bf16* k, const vitk_bf16* v, int heads, int t, \
                                     int hd, float scale, int vec) {                            \
    vitk_fa::forward<HDP>(out, lse, q, k, v, heads, t, hd, scale, vec);                         \
  }                                                                                             \
  VITK_EXPORT(vitk_attention_forward_tc##HDP)                                                   \
  extern "C" __global__ void __launch_bounds__(VITK_FA_THREADS)                                 \
      vitk_attention_backward_kv_tc##HDP(vitk_bf16* dqkv, const vitk_bf16* dout,                \
                                         const float* lse, const float* rowdot,                \
                                         const vitk_bf16* q, const vitk_bf16* k,                \
                                         const vitk_bf16* v, int heads, int t, int hd,          \
                                         float scale, int vec) {                                \
    vitk_fa::backward_kv<HDP>(dqkv, dout, lse, rowdot, q, k, v, heads, t, hd, scale, vec);      \
  }                                                                                             \
  VITK_EXPORT(vitk_attention_backward_kv_tc##HDP)                                               \
  extern "C" __global__ void __launch_bounds__(VITK_FA_THREADS)                                 \
      vitk_attention_backward_q_tc##HDP(vitk_bf16* dqkv, const vitk_bf16* dout,                 \
                                        const float* lse, const float* rowdot,                 \
                                        const vitk_bf16* q, const vitk_bf16* k,                 \
                                        const vitk_bf16* v, int heads, int t, int hd,           \
                                        float scale, int vec) {                                 \
    vitk_fa::backward_q<HDP>(dqkv, dout, lse, rowdot, q, k, v, heads, t, hd, scale, vec);       \
  }                                                                                             \
  VITK_EXPORT(vitk_attention_backward_q_tc##HDP)

VITK_FA_INSTANCES(16)
VITK_FA_INSTANCES(32)
VITK_FA_INSTANCES(64)
VITK_FA_INSTANCES(128)

// rowdot[b, h, i] = sum_e dout[b, i, h*hd + e] * out[b, i, h*hd + e] (fp32): the D_i of the
// softmax backward. One warp per (b, h, i) row; T, D any size.
template <typename T>
__device__ __forceinline__ void vitk_rowdot(float* rowdot, const T* dout, const T* out, int batch,
                                            int heads, int t, int hd) {
  const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  const long long rows = (long long)batch * heads * t;
  if (row >= rows) return;  // whole warps leave together: rows are per warp
  const int i = (int)(row % t), bh = (int)(row / t), b = bh / heads, h = bh - b * heads;
  const long long at = ((long long)b * t + i) * heads * hd + (long long)h * hd;
  float s = 0.0f;
  for (int e = lane; e < hd; e += 32) s += vitk_ld(dout + at + e) * vitk_ld(out + at + e);
  s = vitk_warp_sum(s);
  if (lane == 0) rowdot[row] = s;
}

#define VITK_ROWDOT(NAME, T)                                                                 \
  extern "C" __global__ void NAME(float* rowdot, const T* dout, const T* out, int batch,     \
                                  int heads, int t, int hd) {                                \
    vitk_rowdot<T>(rowdot, dout, out, batch, heads, t, hd);                                  \
  }                                                                                          \
  VITK_EXPORT(NAME)
VITK_ROWDOT(vitk_attention_rowdot_f32, float)
VITK_ROWDOT(vitk_attention_rowdot_bf16, vitk_bf16)
