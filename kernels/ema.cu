// The exponential moving average of the weights (timm's ModelEmaV3; as src/cpu/ema.rs), one
// pass over the flat fp32 parameter buffer [n]:
//   ema[i] = lerp(ema[i], p[i], w),  w = weight[0] = 1 - d (src/optim/ema.rs, computed on the
//   host in double, rounded to fp32, and read on the device so that a replayed step graph
//   reads each step's own), in torch's lerp form:
//     |w| < 0.5:  ema + w (p - ema);   otherwise:  p - (p - ema)(1 - w)
// Launch: 1-D blocks of 256, grid min(ceil(n / 256), 2048), grid-stride.
// Memory traffic: reads ema and p, writes ema (12 bytes per weight).
#include "common.cuh"

extern "C" __global__ void vitk_ema_update(float* ema, const float* p, const float* weight,
                                           long long n) {
  const float w = weight[0];
  const bool small = fabsf(w) < 0.5f;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    const float e = ema[i], pi = p[i];
    ema[i] = small ? e + w * (pi - e) : pi - (pi - e) * (1.0f - w);
  }
}
VITK_EXPORT(vitk_ema_update)
