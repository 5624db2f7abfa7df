// Optimizer kernels over the flat parameter buffer (n scalars, layout of src/model/params.rs).
//   vitk_sumsq_partial: partial[blk] = sum of g^2 over a fixed grid-stride share (in double);
//   vitk_clip_coef:     one thread adds the partials in block order: norm = sqrt(sum),
//                       stats[2] = norm, stats[3] = coef = min(1, max_norm / (norm + 1e-6))
//                       (torch.nn.utils.clip_grad_norm_; deterministic two-pass reduction);
//   vitk_adamw:         torch.optim.AdamW with per-group rates on every scalar of the trainable
//                       span, gradient g = grad * coef (coef read on device from stats[3]; 1
//                       without clipping); group[i] the scalar's optimizer group (its rate
//                       lr*s and decay flag; src/optim/groups.rs):
//                         p *= keep[group]               keep = 1 - lr*s*wd, 1 without decay
//                         m += (1 - b1)(g - m);  v = b2 v + (1 - b2) g^2
//                         p -= step_size[group] * m / (sqrt(v) / bc2_sqrt + eps)
//                       with step_size = lr*s / (1 - b1^t), bc2_sqrt = sqrt(1 - b2^t) computed
//                       in double on the host (src/optim.rs), as the CPU optimizer does, and
//                       read from a device buffer (hyper); the group table is constant;
//                       p_low (optional): the bf16 copy of the updated parameters that the
//                       bf16 path's matmuls read, written in the same pass.
// Launch: sumsq: VITK_NORM_BLOCKS blocks of 256 (grid-stride); clip: 1 thread; adamw: 1-D
//         blocks of 256, grid min(ceil(n / 256), 2048), grid-stride.
// Memory traffic: norm reads n floats; adamw reads p, g, m, v and the group table (18 bytes
//         per scalar) and writes p, m, v (12 bytes; + 2 with the bf16 copy).
#include "common.cuh"

namespace vitk_optim_detail {
__device__ __forceinline__ double warp_sum_d(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(VITK_FULL_MASK, v, o);
  return v;
}
}  // namespace vitk_optim_detail

extern "C" __global__ void vitk_sumsq_partial(double* partial, const float* g, long long n) {
  VITK_SHARED(double, warp_part, 32);
  double s = 0.0;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    const double x = g[i];
    s += x * x;
  }
  s = vitk_optim_detail::warp_sum_d(s);  // blockDim is a multiple of 32
  if ((threadIdx.x & 31) == 0) warp_part[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) t += warp_part[w];
    partial[blockIdx.x] = t;
  }
}
VITK_EXPORT(vitk_sumsq_partial)

extern "C" __global__ void vitk_clip_coef(float* stats, const double* partial, int blocks,
                                          double max_norm) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  double s = 0.0;
  for (int i = 0; i < blocks; i++) s += partial[i];
  const double norm = sqrt(s);
  const double coef = max_norm / (norm + 1e-6);
  stats[2] = (float)norm;
  stats[3] = coef < 1.0 ? (float)coef : 1.0f;
}
VITK_EXPORT(vitk_clip_coef)

// hyper [5 + 2 * groups]: bc2_sqrt, b1c, b2, b2c, eps, then keep, step_size of each group
// (src/optim.rs, device_hyper), copied to the device before each step: a replayed graph
// reads this step's. group [n]: indices below `groups`.
extern "C" __global__ void vitk_adamw(float* p, vitk_bf16* p_low, float* m, float* v,
                                      const float* g, const unsigned short* group,
                                      const float* stats, const float* hyper, long long n) {
  const float bc2_sqrt = hyper[0], b1c = hyper[1], b2 = hyper[2], b2c = hyper[3],
              eps = hyper[4];
  const float* per_group = hyper + 5;
  const float coef = stats ? stats[3] : 1.0f;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    const float gi = stats ? g[i] * coef : g[i];
    float pi = p[i];
    // (Statement order as before groups existed: nvcc then contracts v's update into the
    // same FMA, so that a run without --layer-decay keeps its bits on the GPU too.)
    const int k = group[i];
    const float keep = per_group[2 * k], step_size = per_group[2 * k + 1];
    // A group without decay has keep = 1: skipped, so that no multiply can fuse with the
    // update below (p stays exactly p, as without groups).
    if (keep != 1.0f) pi *= keep;
    float mi = m[i];
    mi += b1c * (gi - mi);
    const float vi = b2 * v[i] + b2c * gi * gi;
    const float denom = sqrtf(vi) / bc2_sqrt + eps;
    pi -= step_size * mi / denom;
    p[i] = pi;
    if (p_low) vitk_st(p_low + i, pi);
    m[i] = mi;
    v[i] = vi;
  }
}
VITK_EXPORT(vitk_adamw)
