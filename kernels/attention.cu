// Fused multi-head attention in fp32 (--precision fp32, the exact path): the same function as
// attention_tc.cu (see there: out and lse forward; rowdot, then dK/dV per key chunk and dQ per
// query chunk backward, P recomputed, never in global memory) with fp32 arithmetic throughout.
//   q, k, v head-major fp32 [B, H, T, hd], out / dout [B, T, D], lse / rowdot [B, H, T],
//   dqkv [B, T, 3D] token-major (overwritten).
// One warp per row (query row forward and for dQ, key row for dK/dV): a block of 8 warps owns a
// chunk of 64 rows (8 per warp) and streams the other side in tiles of 32 rows through shared
// memory (rows padded to hd + 1: no bank conflicts), one row per lane; softmax is online
// (running max and sum per row). Lane e owns output columns e, e + 32, ... (hd <= 128). Every
// output element is summed by one lane in a fixed order: deterministic.
// Launch: grid (ceil(T/64), B*H), block 256, dynamic shared memory 2 (forward) or 4
//         (backward) x 32 x (hd + 1) x 4 bytes (<= 66 KiB at hd 128).
// Memory traffic: forward reads Q once and K, V once per chunk of 64 queries, writes out and
//         lse; backward reads each side once per chunk of the other and writes dqkv once.
#include "reduce.cuh"

#define VITK_ATT_ROWS 64   // rows per block
#define VITK_ATT_TILE 32   // rows of the streamed side per tile (one per lane)
#define VITK_ATT_WARPS 8
#define VITK_ATT_PER_WARP (VITK_ATT_ROWS / VITK_ATT_WARPS)
#define VITK_ATT_COLS 4    // output columns per lane: hd <= 128

namespace vitk_attention_detail {
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(VITK_FULL_MASK, v, o));
  return v;
}

// Copies rows [r0, r0 + 32) of a [t, hd] matrix (row stride ld) into shared rows of stride
// hd + 1, zero past t.
__device__ __forceinline__ void stage(float* dst, const float* src, int r0, int t, int hd,
                                      long long ld) {
  for (int l = threadIdx.x; l < VITK_ATT_TILE * hd; l += blockDim.x) {
    const int r = l / hd, e = l - r * hd;
    dst[r * (hd + 1) + e] = r0 + r < t ? src[(long long)(r0 + r) * ld + e] : 0.0f;
  }
}

// x . tile[lane] where x is spread over the warp (x[e] in lane e % 32, register e / 32).
__device__ __forceinline__ float dot_row(const float (&x)[VITK_ATT_COLS], const float* tile,
                                         int hd) {
  const int lane = threadIdx.x & 31;
  const float* row = tile + lane * (hd + 1);
  float s = 0.0f;
VITK_UNROLL
  for (int c = 0; c < VITK_ATT_COLS; c++)  // constant register index: no local memory
VITK_UNROLL_BY(4)
    for (int e = 0; e < 32 && 32 * c + e < hd; e++)
      s += __shfl_sync(VITK_FULL_MASK, x[c], e) * row[32 * c + e];
  return s;
}

// acc[c] += sum_j w_j tile[j][lane + 32c], w_j held by lane j.
__device__ __forceinline__ void gather(float (&acc)[VITK_ATT_COLS], float w, const float* tile,
                                       int hd) {
  const int lane = threadIdx.x & 31;
VITK_UNROLL_BY(4)
  for (int j = 0; j < VITK_ATT_TILE; j++) {
    const float wj = __shfl_sync(VITK_FULL_MASK, w, j);
VITK_UNROLL
    for (int c = 0; c < VITK_ATT_COLS; c++)
      if (lane + 32 * c < hd) acc[c] += wj * tile[j * (hd + 1) + lane + 32 * c];
  }
}

// Loads row `row` (< t) of x [t, hd] (stride ld) spread over the warp, zero past hd.
__device__ __forceinline__ void load_row(float (&x)[VITK_ATT_COLS], const float* src, int row,
                                         int hd, long long ld) {
  const int lane = threadIdx.x & 31;
VITK_UNROLL
  for (int c = 0; c < VITK_ATT_COLS; c++)
    x[c] = lane + 32 * c < hd ? src[(long long)row * ld + lane + 32 * c] : 0.0f;
}
}  // namespace vitk_attention_detail

extern "C" __global__ void vitk_attention_forward_f32(float* out, float* lse, const float* q,
                                                      const float* k, const float* v, int heads,
                                                      int t, int hd, float scale) {
  using namespace vitk_attention_detail;
  float* ks = vitk_dynamic_shared<float>();
  float* vs = ks + VITK_ATT_TILE * (hd + 1);
  const int bh = blockIdx.y, b = bh / heads, h = bh - b * heads, d = heads * hd;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int q0 = blockIdx.x * VITK_ATT_ROWS;
  const long long base = (long long)bh * t * hd;
  float m[VITK_ATT_PER_WARP], l[VITK_ATT_PER_WARP], o[VITK_ATT_PER_WARP][VITK_ATT_COLS];
VITK_UNROLL
  for (int i = 0; i < VITK_ATT_PER_WARP; i++) {
    m[i] = -3.402823466e38f;
    l[i] = 0.0f;
VITK_UNROLL
    for (int c = 0; c < VITK_ATT_COLS; c++) o[i][c] = 0.0f;
  }
  for (int k0 = 0; k0 < t; k0 += VITK_ATT_TILE) {
    __syncthreads();
    stage(ks, k + base, k0, t, hd, hd);
    stage(vs, v + base, k0, t, hd, hd);
    __syncthreads();
VITK_UNROLL
    for (int i = 0; i < VITK_ATT_PER_WARP; i++) {
      const int row = q0 + warp + VITK_ATT_WARPS * i;
      if (row >= t) continue;  // uniform across the warp
      float qr[VITK_ATT_COLS];
      load_row(qr, q + base, row, hd, hd);
      // Every lane takes part in the shuffles of dot_row; lanes past T are masked after.
      const bool key = k0 + lane < t;
      const float sd = dot_row(qr, ks, hd);
      const float s = key ? sd * scale : -3.402823466e38f;
      const float m_new = fmaxf(m[i], warp_max(s));
      const float corr = expf(m[i] - m_new);
      const float p = key ? expf(s - m_new) : 0.0f;
      m[i] = m_new;
      l[i] = l[i] * corr + vitk_warp_sum(p);
VITK_UNROLL
      for (int c = 0; c < VITK_ATT_COLS; c++) o[i][c] *= corr;
      gather(o[i], p, vs, hd);
    }
  }
VITK_UNROLL
  for (int i = 0; i < VITK_ATT_PER_WARP; i++) {
    const int row = q0 + warp + VITK_ATT_WARPS * i;
    if (row >= t) continue;
    float* orow = out + ((long long)b * t + row) * d + h * hd;
VITK_UNROLL
    for (int c = 0; c < VITK_ATT_COLS; c++)
      if (lane + 32 * c < hd) orow[lane + 32 * c] = o[i][c] / l[i];
    if (lane == 0) lse[(long long)bh * t + row] = m[i] + logf(l[i]);
  }
}
VITK_EXPORT(vitk_attention_forward_f32)

// dQ of this block's 64 queries: per key tile, p = exp(scale q.k - lse), dp = dO.v,
// ds = p (dp - rowdot), dQ += ds k; scaled at the end.
extern "C" __global__ void vitk_attention_backward_q_f32(float* dqkv, const float* dout,
                                                         const float* lse, const float* rowdot,
                                                         const float* q, const float* k,
                                                         const float* v, int heads, int t,
                                                         int hd, float scale) {
  using namespace vitk_attention_detail;
  float* ks = vitk_dynamic_shared<float>();
  float* vs = ks + VITK_ATT_TILE * (hd + 1);
  const int bh = blockIdx.y, b = bh / heads, h = bh - b * heads, d = heads * hd;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int q0 = blockIdx.x * VITK_ATT_ROWS;
  const long long base = (long long)bh * t * hd;
  const float* dog = dout + (long long)b * t * d + h * hd;  // row stride d
  float dq[VITK_ATT_PER_WARP][VITK_ATT_COLS];
VITK_UNROLL
  for (int i = 0; i < VITK_ATT_PER_WARP; i++)
VITK_UNROLL
    for (int c = 0; c < VITK_ATT_COLS; c++) dq[i][c] = 0.0f;
  for (int k0 = 0; k0 < t; k0 += VITK_ATT_TILE) {
    __syncthreads();
    stage(ks, k + base, k0, t, hd, hd);
    stage(vs, v + base, k0, t, hd, hd);
    __syncthreads();
VITK_UNROLL
    for (int i = 0; i < VITK_ATT_PER_WARP; i++) {
      const int row = q0 + warp + VITK_ATT_WARPS * i;
      if (row >= t) continue;
      float qr[VITK_ATT_COLS], dr[VITK_ATT_COLS];
      load_row(qr, q + base, row, hd, hd);
      load_row(dr, dog, row, hd, d);
      const bool key = k0 + lane < t;
      const float sd = dot_row(qr, ks, hd), dp = dot_row(dr, vs, hd);
      const float p = key ? expf(sd * scale - lse[(long long)bh * t + row]) : 0.0f;
      const float ds = p * (dp - rowdot[(long long)bh * t + row]);
      gather(dq[i], ds, ks, hd);
    }
  }
  const long long row3 = 3LL * d;
VITK_UNROLL
  for (int i = 0; i < VITK_ATT_PER_WARP; i++) {
    const int row = q0 + warp + VITK_ATT_WARPS * i;
    if (row >= t) continue;
    float* dst = dqkv + ((long long)b * t + row) * row3 + h * hd;
VITK_UNROLL
    for (int c = 0; c < VITK_ATT_COLS; c++)
      if (lane + 32 * c < hd) dst[lane + 32 * c] = scale * dq[i][c];
  }
}
VITK_EXPORT(vitk_attention_backward_q_f32)

// dK and dV of this block's 64 keys: per query tile (lane = query i), p = exp(scale q_i.k -
// lse_i), dV += p dO_i, ds = p (dO_i.v - rowdot_i), dK += ds q_i; dK scaled at the end.
extern "C" __global__ void vitk_attention_backward_kv_f32(float* dqkv, const float* dout,
                                                          const float* lse, const float* rowdot,
                                                          const float* q, const float* k,
                                                          const float* v, int heads, int t,
                                                          int hd, float scale) {
  using namespace vitk_attention_detail;
  VITK_SHARED(float, lse_s, VITK_ATT_TILE);
  VITK_SHARED(float, dot_s, VITK_ATT_TILE);
  float* qs = vitk_dynamic_shared<float>();
  float* ds_ = qs + VITK_ATT_TILE * (hd + 1);  // the dO tile
  const int bh = blockIdx.y, b = bh / heads, h = bh - b * heads, d = heads * hd;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int k0 = blockIdx.x * VITK_ATT_ROWS;
  const long long base = (long long)bh * t * hd;
  const float* dog = dout + (long long)b * t * d + h * hd;
  float dk[VITK_ATT_PER_WARP][VITK_ATT_COLS], dv[VITK_ATT_PER_WARP][VITK_ATT_COLS];
VITK_UNROLL
  for (int i = 0; i < VITK_ATT_PER_WARP; i++)
VITK_UNROLL
    for (int c = 0; c < VITK_ATT_COLS; c++) dk[i][c] = dv[i][c] = 0.0f;
  for (int q0 = 0; q0 < t; q0 += VITK_ATT_TILE) {
    __syncthreads();
    stage(qs, q + base, q0, t, hd, hd);
    stage(ds_, dog, q0, t, hd, d);
    if (threadIdx.x < VITK_ATT_TILE) {
      const bool in = q0 + (int)threadIdx.x < t;
      lse_s[threadIdx.x] = in ? lse[(long long)bh * t + q0 + threadIdx.x] : 0.0f;
      dot_s[threadIdx.x] = in ? rowdot[(long long)bh * t + q0 + threadIdx.x] : 0.0f;
    }
    __syncthreads();
VITK_UNROLL
    for (int i = 0; i < VITK_ATT_PER_WARP; i++) {
      const int key = k0 + warp + VITK_ATT_WARPS * i;
      if (key >= t) continue;
      float kr[VITK_ATT_COLS], vr[VITK_ATT_COLS];
      load_row(kr, k + base, key, hd, hd);
      load_row(vr, v + base, key, hd, hd);
      const bool query = q0 + lane < t;
      const float sd = dot_row(kr, qs, hd), dp = dot_row(vr, ds_, hd);
      const float p = query ? expf(sd * scale - lse_s[lane]) : 0.0f;
      const float ds = p * (dp - dot_s[lane]);
      gather(dv[i], p, ds_, hd);
      gather(dk[i], ds, qs, hd);
    }
  }
  const long long row3 = 3LL * d;
VITK_UNROLL
  for (int i = 0; i < VITK_ATT_PER_WARP; i++) {
    const int key = k0 + warp + VITK_ATT_WARPS * i;
    if (key >= t) continue;
    float* dst = dqkv + ((long long)b * t + key) * row3 + h * hd;
VITK_UNROLL
    for (int c = 0; c < VITK_ATT_COLS; c++)
      if (lane + 32 * c < hd) {
        dst[d + lane + 32 * c] = scale * dk[i][c];
        dst[2 * d + lane + 32 * c] = dv[i][c];
      }
  }
}
VITK_EXPORT(vitk_attention_backward_kv_f32)
