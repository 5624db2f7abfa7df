// The fused epilogue of both matmul kernels (matmul.cu, fp32 SIMT; matmul_tc.cu, bf16 tensor
// cores): what happens to one accumulated value v = sum_k A(i, k) B(k, j), i < M, j < N, on its
// way to C. In this order:
//   v += bias[j]                          when bias
//   aux[i, j] = v; v = gelu(v)            GELU (fc1: the pre-activation is kept for backward)
//   v *= gelu'(aux[i, j])                 GELU_GRAD (fc2's dX: the GELU backward, folded in)
//   v += residual[i, j]                   when residual (fp32: the residual stream)
//   C[dst] = v, or C[dst] += v            ACCUMULATE
// dst is row-major i * N + j, or with QKV the head-major q | k | v buffer [3, B, H, T, hd]:
// row i = b*T + t, column j = s*D + h*hd + e goes to ((s*B + b)*H + h)*T*hd + t*hd + e.
// C and aux have the output type (fp32, or bf16 on the bf16 path); arithmetic is fp32.
// Split-K launches skip this: they write raw partial sums that vitk_splitk_reduce adds.
#pragma once
#include "common.cuh"

#define VITK_MM_ACCUMULATE 1
#define VITK_MM_GELU 2
#define VITK_MM_QKV 4
#define VITK_MM_GELU_GRAD 8

#define VITK_INV_SQRT2 0.70710678118654752440f
#define VITK_INV_SQRT_2PI 0.39894228040143267794f

// Exact GELU, x Phi(x), with Phi through erfc: 1 + erf(x / sqrt 2) cancels for x << 0, erfc
// keeps its full relative precision.
__device__ __forceinline__ float vitk_gelu(float x) {
  return 0.5f * x * erfcf(-x * VITK_INV_SQRT2);
}
// d/dx gelu(x) = Phi(x) + x phi(x).
__device__ __forceinline__ float vitk_gelu_grad(float x) {
  return 0.5f * erfcf(-x * VITK_INV_SQRT2) + x * expf(-0.5f * x * x) * VITK_INV_SQRT_2PI;
}

// One element of the epilogue. Not inlined: a tile's 32-64 calls would otherwise each carry
// the whole epilogue (erfc, exp, the QKV index arithmetic): the tensor-core kernels were 20k
// instructions long. Every argument by value, so the call needs no stack frame.
template <typename OutT>
__device__ __noinline__ void vitk_epilogue_apply(OutT* c, OutT* aux, const float* bias,
                                                 const float* residual, int m, int n, int flags,
                                                 int qkv_tokens, int qkv_heads, int i, int j,
                                                 float v) {
  if (i >= m || j >= n) return;
  const long long rowmajor = (long long)i * n + j;
  if (bias) v += bias[j];
  if (flags & VITK_MM_GELU) {
    vitk_st(aux + rowmajor, v);
    v = vitk_gelu(v);
  }
  if (flags & VITK_MM_GELU_GRAD) v *= vitk_gelu_grad(vitk_ld(aux + rowmajor));
  if (residual) v += residual[rowmajor];
  long long dst = rowmajor;
  if (flags & VITK_MM_QKV) {
    const int d = n / 3, hd = d / qkv_heads;
    const int s = j / d, h = (j - s * d) / hd, e = j - s * d - h * hd;
    const int b = i / qkv_tokens, t = i - b * qkv_tokens;
    const long long batch = m / qkv_tokens;
    dst = (((long long)s * batch + b) * qkv_heads + h) * (long long)qkv_tokens * hd +
          (long long)t * hd + e;
  }
  if (flags & VITK_MM_ACCUMULATE) v += vitk_ld(c + dst);
  vitk_st(c + dst, v);
}

// The epilogue's arguments, gathered once per kernel.
template <typename OutT>
struct VitkEpilogue {
  OutT* c;
  OutT* aux;
  const float* bias;
  const float* residual;
  int m, n, flags, qkv_tokens, qkv_heads;

  __device__ __forceinline__ void apply(int i, int j, float v) const {
    vitk_epilogue_apply<OutT>(c, aux, bias, residual, m, n, flags, qkv_tokens, qkv_heads, i, j,
                              v);
  }
};
