// Attention probabilities for attention maps (`vitk attention`; evaluation only, never in a
// training step): the fused attention kernels keep only each score row's log-sum-exp, so P is
// recomputed from the saved head-major q, k and lse:
//   probs [B, H, T, T] fp32, P[bh, i, j] = exp(scale * (q_i . k_j) - lse[bh, i]),
//   q, k [B, H, T, hd] fp32 (_f32) or bf16 (_bf16, read as stored: the values the forward
//   used), lse [B, H, T] fp32 from vitk_attention_forward_*; arithmetic in fp32.
// Launch: one thread per element of a (b, h) slice, grid (ceil(T*T / 256), B*H), block 256.
// Memory traffic: 2 hd reads per element (rows of q and k shared through the caches) and one
//         write; B*H*T*T floats written.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void vitk_attention_probs(float* probs, const float* lse, const T* q,
                                                     const T* k, int t, int hd, float scale) {
  const long long tt = (long long)t * t;
  const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= tt) return;
  const long long bh = blockIdx.y;
  const int i = (int)(e / t), j = (int)(e - (long long)i * t);
  const T* qi = q + (bh * t + i) * hd;
  const T* kj = k + (bh * t + j) * hd;
  float s = 0.0f;
  for (int c = 0; c < hd; c++) s += vitk_ld(qi + c) * vitk_ld(kj + c);
  probs[bh * tt + e] = expf(s * scale - lse[bh * t + i]);
}

#define VITK_ATTENTION_PROBS(NAME, T)                                                     \
  extern "C" __global__ void NAME(float* probs, const float* lse, const T* q, const T* k, \
                                  int t, int hd, float scale) {                          \
    vitk_attention_probs<T>(probs, lse, q, k, t, hd, scale);                              \
  }                                                                                       \
  VITK_EXPORT(NAME)
VITK_ATTENTION_PROBS(vitk_attention_probs_f32, float)
VITK_ATTENTION_PROBS(vitk_attention_probs_bf16, vitk_bf16)
