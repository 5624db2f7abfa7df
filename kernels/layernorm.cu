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
//             Deterministic without float atomics: block b owns rows [b*ROWS, (b+1)*ROWS),
//             one warp per row for dx, then one thread per column sums the block's rows in
//             order into `partial` [G, 2, D]; vitk_layernorm_backward_reduce adds the G block
//             partials in block order.
// Launch: forward: one warp per row, blocks of 8 warps (grid ceil(R / 8)); backward: blocks
//         of 8 warps owning 32 rows each (grid G = ceil(R / 32)); reduce: one thread per
//         column, blocks of 256.
// Memory traffic: forward reads x twice (mean, then variance; the second pass from L1) and
//         writes out once; backward reads x and dout twice (the column pass hits L2) and
//         read-modify-writes dx once, writes G*2*D partials; reduce reads them once.
#include "reduce.cuh"

#define VITK_LN_EPS 1e-6f

#define VITK_LN_WARPS 8
#define VITK_LN_ROWS 32  // rows per block of the backward

template <typename OutT>
__device__ __forceinline__ void vitk_layernorm_forward(OutT* out, float* mean, float* rstd,
                                                       const float* x, const float* weight,
                                                       const float* bias, int rows, int dim) {
  const int r = blockIdx.x * VITK_LN_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (r >= rows) return;  // the whole warp: no block-wide barrier follows
  const float* xr = x + (long long)r * dim;
  float s = 0.0f;
  for (int c = lane; c < dim; c += 32) s += xr[c];
  const float m = vitk_warp_sum(s) / dim;
  float q = 0.0f;
  for (int c = lane; c < dim; c += 32) {
    const float d = xr[c] - m;
    q += d * d;
  }
  const float rs = rsqrtf(vitk_warp_sum(q) / dim + VITK_LN_EPS);
  OutT* orow = out + (long long)r * dim;
  for (int c = lane; c < dim; c += 32) vitk_st(orow + c, (xr[c] - m) * rs * weight[c] + bias[c]);
  if (lane == 0) {
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
                                                   const float* dout, const float* x,
                                                   const float* mean, const float* rstd,
                                                   const float* weight, int rows, int dim) {
  const int r0 = blockIdx.x * VITK_LN_ROWS;
  const int r1 = min(rows, r0 + VITK_LN_ROWS);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  // dx: one warp per row.
  for (int r = r0 + warp; r < r1; r += VITK_LN_WARPS) {
    const float* xr = x + (long long)r * dim;
    const float* gr = dout + (long long)r * dim;
    const float m = mean[r], rs = rstd[r];
    float sg = 0.0f, sgx = 0.0f;
    for (int c = lane; c < dim; c += 32) {
      const float g = gr[c] * weight[c];
      sg += g;
      sgx += g * (xr[c] - m) * rs;
    }
    const float mean_g = vitk_warp_sum(sg) / dim;
    const float mean_gx = vitk_warp_sum(sgx) / dim;
    float* dxr = dx + (long long)r * dim;
    for (int c = lane; c < dim; c += 32) {
      const float xhat = (xr[c] - m) * rs;
      const float v = dxr[c] + rs * (gr[c] * weight[c] - mean_g - xhat * mean_gx);
      dxr[c] = v;
      if (dx_low) vitk_st(dx_low + (long long)r * dim + c, v);
    }
  }
  // The block's weight and bias gradient partials: one thread per column, rows in order.
  float* pw = partial + (long long)blockIdx.x * 2 * dim;
  float* pb = pw + dim;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) {
    float w = 0.0f, b = 0.0f;
    for (int r = r0; r < r1; r++) {
      const float g = dout[(long long)r * dim + c];
      w += g * (x[(long long)r * dim + c] - mean[r]) * rstd[r];
      b += g;
    }
    pw[c] = w;
    pb[c] = b;
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
