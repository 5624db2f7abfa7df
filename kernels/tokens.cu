// Token assembly and pooling (src/cpu/tokens.rs, src/cpu/pooling.rs), prefix = 1 with a cls
// token, 0 without; T = N + prefix tokens of width D.
//   vitk_tokens_forward:  x[b, t] = (t < prefix ? cls : patch[b, t - prefix]) + pos[t]
//   vitk_tokens_backward_patch_{f32,bf16}: dpatch[b, n] = dx[b, n + prefix]  (overwritten;
//                               bf16 on the bf16 path, where it is the patch matmul's dY)
//   vitk_tokens_backward_pos:   dpos[t, c] += sum_b dx[b, t, c] (b in order, no atomics);
//                               with cls, dcls[c] += the same sum for t = 0
//   vitk_patch_rows_scatter:    dx[b, t] = (t < prefix ? 0 : dpatch[b, t - prefix]), overwritten:
//                               the pre-training decoder reads the patch rows only, so the class
//                               token's row of d x_L is 0; dx_low (optional) gets a bf16 copy.
//                               (Its gather, x_L's patch rows, is vitk_tokens_backward_patch_f32.)
//   vitk_pool_forward:  pooled[b, c] = x[b, 0, c] (cls) or (sum_t x[b, t, c]) / T (mean)
//   vitk_pool_backward: dx[b, t, c] = (t == 0 ? dpooled[b, c] : 0) (cls) or dpooled[b, c] / T
//                       (mean), overwritten: dx is the residual-stream gradient it starts;
//                       dx_low (optional) gets a bf16 copy (the next matmul's dY).
// (For mean pooling, timm's fc_norm follows the pool: the LayerNorm kernels.)
// Launch: one thread per output element (pool forward, pos: one per (t, c) / (b, c) column,
//         looping over T or B), 1-D blocks of 256.
// Memory traffic: each kernel reads its inputs once and writes its outputs once
//         (tokens forward: B*T*D reads + T*D reused from L2, B*T*D writes).
#include "common.cuh"

extern "C" __global__ void vitk_tokens_forward(float* x, const float* patch, const float* pos,
                                               const float* cls, int batch, int t, int dim) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long total = (long long)batch * t * dim;
  if (i >= total) return;
  const int prefix = cls ? 1 : 0;
  const long long row = i / dim;
  const int c = (int)(i - row * dim);
  const int b = (int)(row / t), tok = (int)(row - (long long)b * t);
  const float e =
      tok < prefix ? cls[c] : patch[((long long)b * (t - prefix) + tok - prefix) * dim + c];
  x[i] = e + pos[(long long)tok * dim + c];
}
VITK_EXPORT(vitk_tokens_forward)

template <typename OutT>
__device__ __forceinline__ void vitk_tokens_backward_patch(OutT* dpatch, const float* dx,
                                                           int batch, int t, int dim,
                                                           int prefix) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const int n = t - prefix;
  const long long total = (long long)batch * n * dim;
  if (i >= total) return;
  const long long row = i / dim;
  const int c = (int)(i - row * dim);
  const int b = (int)(row / n), p = (int)(row - (long long)b * n);
  vitk_st(dpatch + i, dx[((long long)b * t + p + prefix) * dim + c]);
}

#define VITK_TOKENS_BACKWARD_PATCH(NAME, OUT)                                               \
  extern "C" __global__ void NAME(OUT* dpatch, const float* dx, int batch, int t, int dim,  \
                                  int prefix) {                                            \
    vitk_tokens_backward_patch<OUT>(dpatch, dx, batch, t, dim, prefix);                    \
  }                                                                                        \
  VITK_EXPORT(NAME)
VITK_TOKENS_BACKWARD_PATCH(vitk_tokens_backward_patch_f32, float)
VITK_TOKENS_BACKWARD_PATCH(vitk_tokens_backward_patch_bf16, vitk_bf16)

extern "C" __global__ void vitk_tokens_backward_pos(float* dpos, float* dcls, const float* dx,
                                                    int batch, int t, int dim) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= t * dim) return;
  float s = 0.0f;
  for (int b = 0; b < batch; b++) s += dx[(long long)b * t * dim + i];
  dpos[i] += s;
  if (dcls && i < dim) dcls[i] += s;
}
VITK_EXPORT(vitk_tokens_backward_pos)

extern "C" __global__ void vitk_patch_rows_scatter(float* dx, vitk_bf16* dx_low,
                                                   const float* dpatch, int batch, int t,
                                                   int dim, int prefix) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)batch * t * dim) return;
  const long long row = i / dim;
  const int c = (int)(i - row * dim);
  const int b = (int)(row / t), tok = (int)(row - (long long)b * t);
  const float v =
      tok < prefix ? 0.0f : dpatch[((long long)b * (t - prefix) + tok - prefix) * dim + c];
  dx[i] = v;
  if (dx_low) vitk_st(dx_low + i, v);
}
VITK_EXPORT(vitk_patch_rows_scatter)

extern "C" __global__ void vitk_pool_forward(float* pooled, const float* x, int batch, int t,
                                             int dim, int mean) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= batch * dim) return;
  const int b = i / dim, c = i - b * dim;
  const float* xb = x + (long long)b * t * dim + c;
  if (!mean) {
    pooled[i] = xb[0];
    return;
  }
  float s = 0.0f;
  for (int tok = 0; tok < t; tok++) s += xb[(long long)tok * dim];
  pooled[i] = s * (1.0f / t);
}
VITK_EXPORT(vitk_pool_forward)

extern "C" __global__ void vitk_pool_backward(float* dx, vitk_bf16* dx_low, const float* dpooled,
                                              int batch, int t, int dim, int mean) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)batch * t * dim) return;
  const long long row = i / dim;
  const int c = (int)(i - row * dim);
  const int b = (int)(row / t), tok = (int)(row - (long long)b * t);
  const float g = dpooled[(long long)b * dim + c];
  const float v = mean ? g * (1.0f / t) : (tok == 0 ? g : 0.0f);
  dx[i] = v;
  if (dx_low) vitk_st(dx_low + i, v);
}
VITK_EXPORT(vitk_pool_backward)
