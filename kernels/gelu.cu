// Exact (erf) GELU, as torch.nn.GELU() / timm's Mlp:
//   forward   out = 0.5 x (1 + erf(x / sqrt(2)))
//   backward  dx  = dout * (0.5 (1 + erf(x / sqrt(2))) + x exp(-x^2 / 2) / sqrt(2 pi))
//             dx is OVERWRITTEN (the input of GELU is fc1's output, used nowhere else).
// 1 + erf(x/sqrt2) is computed as erfc(-x/sqrt2): for x << 0 the sum cancels to a few
// correct bits in fp32, erfc keeps full relative precision.
// Launch: 1-D blocks of 256, grid min(ceil(n / 256), 2048); the loop is grid-stride.
// Memory traffic: forward reads n and writes n floats; backward reads 2n, writes n.
#include "common.cuh"

#define VITK_INV_SQRT2 0.70710678118654752440f
#define VITK_INV_SQRT_2PI 0.39894228040143267794f

extern "C" __global__ void vitk_gelu_forward(float* out, const float* x, int n) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    const float v = x[i];
    out[i] = 0.5f * v * erfcf(-v * VITK_INV_SQRT2);
  }
}
VITK_EXPORT(vitk_gelu_forward)

extern "C" __global__ void vitk_gelu_backward(float* dx, const float* dout, const float* x, int n) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    const float v = x[i];
    const float cdf = 0.5f * erfcf(-v * VITK_INV_SQRT2);
    const float pdf = expf(-0.5f * v * v) * VITK_INV_SQRT_2PI;
    dx[i] = dout[i] * (cdf + v * pdf);
  }
}
VITK_EXPORT(vitk_gelu_backward)
