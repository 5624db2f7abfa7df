// The ViT paper's masked patch prediction (Dosovitskiy et al. 2021, B.1.2): 3-bit mean-colour
// targets and the cross-entropy over the masked patches, as src/cpu/mim_colour.rs.
//
// vitk_mean_colour_targets: classes [B, N] (u32) from images [B, 3, Sh, Sw] normalised with
//   per-channel mean m_c and std s_c, N = (Sh/P)*(Sw/P) patches in row-major (py, px) order:
//     v = x*s_c + m_c (product then sum, each rounded: __fmul_rn/__fadd_rn, never an FMA),
//     sum_c = sum of v over the patch, rows top to bottom, each row left to right, from 0,
//     mean_c = sum_c / (P*P) (__fdiv_rn), level_c = min(max(floor(mean_c*8), 0), 7) (NaN -> 0),
//     class = level_r*64 + level_g*8 + level_b.
//   The same f32 operations in the same order as the CPU op, so both give the same class for a
//   mean exactly at a bin edge k/8 (level k).
//   Launch: one thread per patch, grid-stride, 1-D blocks of 256, grid ceil(B*N / 256) capped.
//   Memory traffic: each image element read once (runs of P along a row), one u32 per patch.
//
// vitk_masked_cross_entropy_{f32,bf16}: over logits [R, K] (R = B*N rows), targets [R] (u32,
//   read on masked rows only) and mask [R] (u8, non-zero = masked), with M masked rows:
//     loss_r = (1 - eps)((m - l[y]) + lse) + eps((m - mean_k l[k]) + lse)   (as loss.cu)
//     stats[0] = (sum of loss_r over masked rows) / M (0 when M = 0),
//     stats[1] = masked rows whose first arg-max (lowest index among ties) is y, stats[2] = M,
//     dlogits[r, k] = (exp((l[k] - m) - lse) - (1 - eps)[k == y] - eps/K) / M on masked rows,
//                     0 on the others (overwritten; fp32, or bf16 for the bf16 head matmuls).
//   Deterministic: M is counted first (integers); warp w owns rows w, w + 8, ... and adds their
//   losses in row order; the 8 warp totals are added in warp order by thread 0.
//   Launch: one block of 256 threads (8 warps), one warp per row, lanes stride over K.
//   Memory traffic: reads the mask twice, logits of masked rows twice (the second pass from L1),
//   writes dlogits once.
#include "softmax_ce.cuh"

namespace vitk_mim_colour_detail {
__device__ __forceinline__ unsigned colour_level(float mean) {
  return (unsigned)fminf(fmaxf(floorf(mean * 8.0f), 0.0f), 7.0f);
}
}  // namespace vitk_mim_colour_detail

extern "C" __global__ void vitk_mean_colour_targets(unsigned* classes, const float* images,
                                                    int batch, int height, int width, int patch,
                                                    float mean_r, float mean_g, float mean_b,
                                                    float std_r, float std_g, float std_b) {
  const int grid_w = width / patch;
  const long long n_patches = (long long)(height / patch) * grid_w;
  const long long total = batch * n_patches;
  const long long plane = (long long)height * width;
  const float mean[3] = {mean_r, mean_g, mean_b}, stdv[3] = {std_r, std_g, std_b};
  const float area = (float)(patch * patch);
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (long long)gridDim.x * blockDim.x) {
    const long long b = i / n_patches;
    const int p = (int)(i - b * n_patches);
    const int py = p / grid_w, px = p - py * grid_w;
    unsigned cls = 0;
    VITK_UNROLL
    for (int c = 0; c < 3; c++) {
      const float* img = images + (b * 3 + c) * plane;
      float s = 0.0f;
      for (int ky = 0; ky < patch; ky++) {
        const float* row = img + (long long)(py * patch + ky) * width + px * patch;
        for (int kx = 0; kx < patch; kx++) {
          s = __fadd_rn(s, __fadd_rn(__fmul_rn(row[kx], stdv[c]), mean[c]));
        }
      }
      cls = cls * 8u + vitk_mim_colour_detail::colour_level(__fdiv_rn(s, area));
    }
    classes[i] = cls;
  }
}
VITK_EXPORT(vitk_mean_colour_targets)

template <typename OutT>
__device__ __forceinline__ void vitk_masked_cross_entropy(float* stats, OutT* dlogits,
                                                          const float* logits,
                                                          const unsigned* targets,
                                                          const unsigned char* mask, int rows,
                                                          int classes, float smoothing) {
  VITK_SHARED(int, warp_count, 32);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  // M, the number of masked rows: per-thread counts, then per warp, then thread 0 adds them.
  int count = 0;
  for (int r = threadIdx.x; r < rows; r += blockDim.x) count += mask[r] != 0;
  for (int o = 16; o > 0; o >>= 1) count += __shfl_xor_sync(VITK_FULL_MASK, count, o);
  if (lane == 0) warp_count[warp] = count;
  __syncthreads();
  int masked = 0;
  for (int w = 0; w < nwarps; w++) masked += warp_count[w];
  const float inv_k = 1.0f / classes, inv_m = masked > 0 ? 1.0f / masked : 0.0f;
  float loss = 0.0f;
  int correct = 0;
  for (int r = warp; r < rows; r += nwarps) {
    OutT* drow = dlogits + (long long)r * classes;
    if (mask[r] == 0) {
      for (int c = lane; c < classes; c += 32) vitk_st(drow + c, 0.0f);
      continue;
    }
    const float* row = logits + (long long)r * classes;
    bool hit;
    loss += vitk_ce_row(row, drow, (int)targets[r], classes, smoothing, inv_k, inv_m, lane, hit);
    correct += hit;
  }
  vitk_block_loss_stats(stats, loss, correct, inv_m);
  if (threadIdx.x == 0) stats[2] = (float)masked;
}

#define VITK_MASKED_CROSS_ENTROPY(NAME, OUT)                                                \
  extern "C" __global__ void NAME(float* stats, OUT* dlogits, const float* logits,          \
                                  const unsigned* targets, const unsigned char* mask,       \
                                  int rows, int classes, float smoothing) {                 \
    vitk_masked_cross_entropy<OUT>(stats, dlogits, logits, targets, mask, rows, classes,    \
                                   smoothing);                                              \
  }                                                                                         \
  VITK_EXPORT(NAME)
VITK_MASKED_CROSS_ENTROPY(vitk_masked_cross_entropy_f32, float)
VITK_MASKED_CROSS_ENTROPY(vitk_masked_cross_entropy_bf16, vitk_bf16)
