// LayerNorm over rows of width D (timm: eps 1e-6, biased variance as PyTorch).
//   forward   x [R, D], weight [D], bias [D] -> out [R, D], mean [R], rstd [R]
//             out = (x - mean) * rstd * weight + bias,  rstd = 1 / sqrt(var + eps)
//             out is fp32 (vitk_layernorm_forward_f32) or bf16 (_bf16: the input of the next
//             matmul on the bf16 path); statistics and arithmetic are fp32 either way.
//   backward  given dout [R, D] and the saved mean/rstd:
//             xhat = (x - mean) * rstd,  g = dout * weight
//             dx      += rstd * (g - mean(g) - xhat * mean(g * xhat))   (ACCUMULATED: dx is
//                        the gradient of the pre-LN residual stream, which already holds the
//                        residual branch's contribution)
//             dweight += sum_rows dout * xhat,  dbias += sum_rows dout   (accumulated)
//             dx_low (optional, bf16): a copy of the updated dx, the next matmul's dY on the
//             bf16 path.
//             Deterministic without float atomics: vitk_layernorm_backward writes per-block
//             column partials into `partial` [G, 2, D] (block b owns rows
//             [b*rows_per_block, (b+1)*rows_per_block)), then vitk_layernorm_backward_reduce
//             adds them in block order.
// Launch: forward and backward: one block per row (backward: per row range), 1-D block of any
//         size <= 1024 (the launchers use min(256, D rounded up to 32)); reduce: one thread
//         per column, blocks of 256.
// Memory traffic: forward reads x twice (mean, then variance; the second pass hits L1/L2)
//         and writes out once; backward reads x, dout and weight twice per row, read-modify-
//         writes dx once and partial once per row; reduce reads G*2*D floats.
#include "reduce.cuh"

#define VITK_LN_EPS 1e-6f

template <typename OutT>
__device__ __forceinline__ void vitk_layernorm_forward(OutT* out, float* mean, float* rstd,
                                                       const float* x, const float* weight,
                                                       const float* bias, int rows, int dim) {
  VITK_SHARED(float, scratch, 32);
  const int r = blockIdx.x;
  if (r >= rows) return;  // uniform across the block: no barrier is skipped by some threads
  const float* xr = x + (long long)r * dim;
  float s = 0.0f;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) s += xr[c];
  const float m = vitk_block_sum(s, scratch) / dim;
  float q = 0.0f;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) {
    const float d = xr[c] - m;
    q += d * d;
  }
  const float var = vitk_block_sum(q, scratch) / dim;
  const float rs = rsqrtf(var + VITK_LN_EPS);
  OutT* orow = out + (long long)r * dim;
  for (int c = threadIdx.x; c < dim; c += blockDim.x)
    vitk_st(orow + c, (xr[c] - m) * rs * weight[c] + bias[c]);
  if (threadIdx.x == 0) {
    mean[r] = m;
    rstd[r] = rs;
  }
}

#define VITK_LN_FORWARD(NAME, OUT)                                                        \
  extern "C" __global__ void NAME(OUT* out, float* mean, float* rstd, const float* x,    \
                                  const float* weight, const float* bias, int rows,      \
                                  int dim) {                                             \
    vitk_layernorm_forward<OUT>(out, mean, rstd, x, weight, bias, rows, dim);            \
  }                                                                                      \
  VITK_EXPORT(NAME)
VITK_LN_FORWARD(vitk_layernorm_forward_f32, float)
VITK_LN_FORWARD(vitk_layernorm_forward_bf16, vitk_bf16)

extern "C" __global__ void vitk_layernorm_backward(float* dx, vitk_bf16* dx_low, float* partial,
                                                   const float* dout,
                                                   const float* x, const float* mean,
                                                   const float* rstd, const float* weight,
                                                   int rows, int dim, int rows_per_block) {
  VITK_SHARED(float, scratch, 32);
  float* pw = partial + (long long)blockIdx.x * 2 * dim;
  float* pb = pw + dim;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) {
    pw[c] = 0.0f;
    pb[c] = 0.0f;
  }
  const int r0 = blockIdx.x * rows_per_block;
  const int r1 = min(rows, r0 + rows_per_block);
  for (int r = r0; r < r1; r++) {
    const float* xr = x + (long long)r * dim;
    const float* gr = dout + (long long)r * dim;
    const float m = mean[r], rs = rstd[r];
    float sg = 0.0f, sgx = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
      const float xhat = (xr[c] - m) * rs;
      const float g = gr[c] * weight[c];
      sg += g;
      sgx += g * xhat;
      pw[c] += gr[c] * xhat;  // each column belongs to one thread: no race, fixed order
      pb[c] += gr[c];
    }
    const float mean_g = vitk_block_sum(sg, scratch) / dim;
    const float mean_gx = vitk_block_sum(sgx, scratch) / dim;
    float* dxr = dx + (long long)r * dim;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
      const float xhat = (xr[c] - m) * rs;
      const float g = gr[c] * weight[c];
      const float v = dxr[c] + rs * (g - mean_g - xhat * mean_gx);
      dxr[c] = v;
      if (dx_low) vitk_st(dx_low + (long long)r * dim + c, v);
    }
  }
}
VITK_EXPORT(vitk_layernorm_backward)

extern "C" __global__ void vitk_layernorm_backward_reduce(float* dweight, float* dbias,
                                                          const float* partial, int blocks,
                                                          int dim) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= dim) return;
  float w = 0.0f, b = 0.0f;
  for (int i = 0; i < blocks; i++) {
    w += partial[(long long)i * 2 * dim + c];
    b += partial[(long long)i * 2 * dim + dim + c];
  }
  dweight[c] += w;
  dbias[c] += b;
}
VITK_EXPORT(vitk_layernorm_backward_reduce)
