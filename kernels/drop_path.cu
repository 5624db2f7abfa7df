// Stochastic depth on a residual branch (timm's drop_path, scale_by_keep=True; as
// src/cpu/drop_path.rs). x, f, dy [B, T, D] fp32 (the residual stream and the branch output);
// scale [B]: s_b = 1 / (1 - p) for a kept sample, 0 for a dropped one (drawn on the host from
// the run's seeded streams, src/model/drop_path.rs, so both engines drop the same samples):
//   vitk_drop_path_add:           y[b] = x[b] + s_b f[b]   (y may be x: in place)
//   vitk_drop_path_backward_f32:  df[b] = s_b dy[b]        (overwritten; dx = dy needs nothing)
//   vitk_drop_path_backward_bf16: the same, df stored in bf16 (the bf16 path's dY of the
//                                 branch's last matmul)
// Launch: grid (min(ceil(T*D / 256), 2048), B), blocks of 256; blockIdx.y is the sample (no
//         division per element), threads stride over its T*D values.
// Memory traffic: add reads x, f and writes y (12 bytes per value); backward reads dy and
//         writes df (8, or 6 with bf16).
#include "common.cuh"

extern "C" __global__ void vitk_drop_path_add(float* y, const float* x, const float* f,
                                              const float* scale, long long per_sample) {
  const long long base = (long long)blockIdx.y * per_sample;
  const float s = scale[blockIdx.y];
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < per_sample;
       i += (long long)gridDim.x * blockDim.x)
    y[base + i] = x[base + i] + s * f[base + i];
}
VITK_EXPORT(vitk_drop_path_add)

template <typename OutT>
__device__ __forceinline__ void vitk_drop_path_backward(OutT* df, const float* dy,
                                                        const float* scale,
                                                        long long per_sample) {
  const long long base = (long long)blockIdx.y * per_sample;
  const float s = scale[blockIdx.y];
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < per_sample;
       i += (long long)gridDim.x * blockDim.x)
    vitk_st(df + base + i, s * dy[base + i]);
}

#define VITK_DROP_PATH_BACKWARD(NAME, OUT)                                                  \
  extern "C" __global__ void NAME(OUT* df, const float* dy, const float* scale,             \
                                  long long per_sample) {                                   \
    vitk_drop_path_backward<OUT>(df, dy, scale, per_sample);                                \
  }                                                                                         \
  VITK_EXPORT(NAME)
VITK_DROP_PATH_BACKWARD(vitk_drop_path_backward_f32, float)
VITK_DROP_PATH_BACKWARD(vitk_drop_path_backward_bf16, vitk_bf16)
