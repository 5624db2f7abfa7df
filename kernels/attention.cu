// Multi-head softmax attention over head-major q, k, v [B, H, T, hd] (written by the QKV
// matmul's epilogue), scale = hd^-0.5:
//   forward   S = scale Q K^T, P = softmax_rows(S) -> probs [B, H, T, T] (saved for
//             backward), O = P V -> out [B, T, D] at columns h*hd.. (the proj input layout)
//   backward  from dout [B, T, D], probs and q, k, v:
//             dP = dO V^T, dS = P * (dP - rowsum(dP * P))  (into the scratch ds [B, H, T, T])
//             dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO, written (overwritten) into
//             dqkv [B, T, 3D] token-major: the layout of the QKV weight gradient (dW += dY^T X)
// One block per (batch, head). K and V (backward: also Q and dO) are staged in shared memory,
// rows padded to hd + 1 floats (no bank conflicts), when they fit in `shared_bytes` as the
// launcher decides; otherwise `staged` is 0 and the same loops read them from global memory
// (the looped path, correct for any T). One warp per query row (forward, backward phase 1)
// or per key row (backward phase 2); the rows of the (b, h) matrix are shared out among the
// warps. Deterministic: every output element is summed by one thread in a fixed order.
// q, k, v, out, dout and dqkv are all fp32 (vitk_attention_*_f32) or all bf16 (_bf16, the bf16
// path: they come from and go to bf16 matmuls); scores, probabilities, softmax and every sum
// are fp32, and probs / ds stay fp32.
// Launch: grid B*H, block 256 (8 warps), dynamic shared = staged ? (2 | 4) * T * (hd+1) * 4 : 0.
// Memory traffic per (b, h): forward reads Q, K, V once (T*hd each), writes P (T*T) and O
// (T*hd), reads P back from L1/L2; backward reads Q, K, V, dO, P once, writes and re-reads
// dS (T*T), writes dQ, dK, dV (3*T*hd). 4*T*T*hd flops forward, 8*T*T*hd backward.
#include "reduce.cuh"

namespace vitk_attention_detail {
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(VITK_FULL_MASK, v, o));
  return v;
}

// Copies a [T, hd] matrix (row stride `ld`) into fp32 shared rows of stride hd + 1.
template <typename T>
__device__ __forceinline__ void stage(float* dst, const T* src, int t, int hd, int ld) {
  for (int l = threadIdx.x; l < t * hd; l += blockDim.x) {
    const int r = l / hd, e = l - r * hd;
    dst[r * (hd + 1) + e] = vitk_ld(src + (long long)r * ld + e);
  }
}

// Element e of row j of a [T, hd] matrix: staged fp32 shared rows, or the global tensor.
template <typename T>
struct Rows {
  const float* staged;  // null: read `global`
  const T* global;
  int ld;
  __device__ __forceinline__ float operator()(int j, int e) const {
    return staged ? staged[j * ld + e] : vitk_ld(global + (long long)j * ld + e);
  }
};
}  // namespace vitk_attention_detail

template <typename T>
__device__ __forceinline__ void vitk_attention_forward(T* out, float* probs, const T* q,
                                                       const T* k, const T* v, int heads, int t,
                                                       int hd, float scale, int staged) {
  using namespace vitk_attention_detail;
  const int bh = blockIdx.x;
  const int b = bh / heads, h = bh - b * heads;
  const int d = heads * hd;
  const long long base = (long long)bh * t * hd;
  Rows<T> ks{nullptr, k + base, hd}, vs{nullptr, v + base, hd};
  if (staged) {
    float* sm = vitk_dynamic_shared<float>();
    stage(sm, k + base, t, hd, hd);
    stage(sm + t * (hd + 1), v + base, t, hd, hd);
    ks = Rows<T>{sm, nullptr, hd + 1};
    vs = Rows<T>{sm + t * (hd + 1), nullptr, hd + 1};
    __syncthreads();
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  for (int row = warp; row < t; row += nwarps) {
    const T* qr = q + base + (long long)row * hd;
    float* pr = probs + ((long long)bh * t + row) * t;
    float mx = -3.402823466e38f;
    for (int j = lane; j < t; j += 32) {
      float s = 0.0f;
      for (int e = 0; e < hd; e++) s += vitk_ld(qr + e) * ks(j, e);
      s *= scale;
      pr[j] = s;
      mx = fmaxf(mx, s);
    }
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j < t; j += 32) {
      const float p = expf(pr[j] - mx);
      pr[j] = p;
      sum += p;
    }
    sum = vitk_warp_sum(sum);
    const float inv = 1.0f / sum;
    for (int j = lane; j < t; j += 32) pr[j] *= inv;
    __syncwarp();
    T* orow = out + ((long long)b * t + row) * d + h * hd;
    for (int e = lane; e < hd; e += 32) {
      float o = 0.0f;
      for (int j = 0; j < t; j++) o += pr[j] * vs(j, e);
      vitk_st(orow + e, o);
    }
    __syncwarp();
  }
}

template <typename T>
__device__ __forceinline__ void vitk_attention_backward(T* dqkv, float* ds, const T* dout,
                                                        const float* probs, const T* q,
                                                        const T* k, const T* v, int heads,
                                                        int t, int hd, float scale,
                                                        int staged) {
  using namespace vitk_attention_detail;
  const int bh = blockIdx.x;
  const int b = bh / heads, h = bh - b * heads;
  const int d = heads * hd;
  const long long base = (long long)bh * t * hd;
  const T* dog = dout + (long long)b * t * d + h * hd;  // row stride d
  Rows<T> qs{nullptr, q + base, hd}, ks{nullptr, k + base, hd}, vs{nullptr, v + base, hd};
  Rows<T> dos{nullptr, dog, d};
  if (staged) {
    float* sm = vitk_dynamic_shared<float>();
    const int sz = t * (hd + 1);
    stage(sm, q + base, t, hd, hd);
    stage(sm + sz, k + base, t, hd, hd);
    stage(sm + 2 * sz, v + base, t, hd, hd);
    stage(sm + 3 * sz, dog, t, hd, d);
    qs = Rows<T>{sm, nullptr, hd + 1};
    ks = Rows<T>{sm + sz, nullptr, hd + 1};
    vs = Rows<T>{sm + 2 * sz, nullptr, hd + 1};
    dos = Rows<T>{sm + 3 * sz, nullptr, hd + 1};
    __syncthreads();
  }
  const float* pm = probs + (long long)bh * t * t;
  float* dsm = ds + (long long)bh * t * t;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  const long long row3 = 3LL * d;
  // Phase 1: one warp per query row: dS row, then dQ.
  for (int row = warp; row < t; row += nwarps) {
    const float* pr = pm + (long long)row * t;
    float* dsr = dsm + (long long)row * t;
    float dot = 0.0f;
    for (int j = lane; j < t; j += 32) {
      float dp = 0.0f;
      for (int e = 0; e < hd; e++) dp += dos(row, e) * vs(j, e);
      dsr[j] = dp;
      dot += dp * pr[j];
    }
    dot = vitk_warp_sum(dot);
    for (int j = lane; j < t; j += 32) dsr[j] = pr[j] * (dsr[j] - dot);
    __syncwarp();
    T* dq = dqkv + ((long long)b * t + row) * row3 + h * hd;
    for (int e = lane; e < hd; e += 32) {
      float s = 0.0f;
      for (int j = 0; j < t; j++) s += dsr[j] * ks(j, e);
      vitk_st(dq + e, scale * s);
    }
    __syncwarp();
  }
  __syncthreads();  // every dS row is written (global writes are visible within the block)
  // Phase 2: one warp per key row j: dK[j] = scale sum_i dS[i, j] Q[i], dV[j] = sum_i P[i, j] dO[i].
  for (int j = warp; j < t; j += nwarps) {
    T* dk = dqkv + ((long long)b * t + j) * row3 + d + h * hd;
    T* dv = dk + d;
    for (int e = lane; e < hd; e += 32) {
      float sk = 0.0f, sv = 0.0f;
      for (int i = 0; i < t; i++) {
        sk += dsm[(long long)i * t + j] * qs(i, e);
        sv += pm[(long long)i * t + j] * dos(i, e);
      }
      vitk_st(dk + e, scale * sk);
      vitk_st(dv + e, sv);
    }
  }
}

#define VITK_ATTENTION(SUFFIX, T)                                                             \
  extern "C" __global__ void vitk_attention_forward_##SUFFIX(                                 \
      T* out, float* probs, const T* q, const T* k, const T* v, int heads, int t, int hd,     \
      float scale, int staged) {                                                             \
    vitk_attention_forward<T>(out, probs, q, k, v, heads, t, hd, scale, staged);             \
  }                                                                                          \
  VITK_EXPORT(vitk_attention_forward_##SUFFIX)                                               \
  extern "C" __global__ void vitk_attention_backward_##SUFFIX(                                \
      T* dqkv, float* ds, const T* dout, const float* probs, const T* q, const T* k,          \
      const T* v, int heads, int t, int hd, float scale, int staged) {                       \
    vitk_attention_backward<T>(dqkv, ds, dout, probs, q, k, v, heads, t, hd, scale, staged); \
  }                                                                                          \
  VITK_EXPORT(vitk_attention_backward_##SUFFIX)
VITK_ATTENTION(f32, float)
VITK_ATTENTION(bf16, vitk_bf16)
