// Masked image modelling (src/cpu/mim.rs): mask-token substitution, patch-pixel targets and
// the masked L1/L2 pixel loss. R = B*N patch rows, D embedding width, K = P*P*C pixel values
// per patch; mask [R] is bytes, nonzero = masked (and predicted).
//   vitk_mask_tokens_forward:  x[r, c] = mask[r] ? token[c] : pe[r, c]
//   vitk_mask_tokens_backward_pe_{f32,bf16}: dpe[r, c] = mask[r] ? 0 : dx[r, c] (overwritten;
//                               bf16 on the bf16 path, where it is the patch matmul's dY)
//   vitk_mask_tokens_token_partial: partial[j, c] = sum of dx[r, c] over the masked rows r
//                               (mask[r] != 0, or src[r] < 0 when mask is null) of chunk j (rows [j*rows_per_chunk, (j+1)*rows_per_chunk), in
//                               order); vitk_mask_tokens_token_reduce: dtoken[c] += sum_j
//                               partial[j, c], j in order. The chunking is fixed by the
//                               launcher, not by the grid: the sum is deterministic.
//   vitk_patch_targets: targets[b, n, k] from images [B, C, S_h, S_w], MAE's patchify order
//                       k = (ky*P + kx)*C + c; with norm, each row becomes
//                       (t - mean) / sqrt(var + 1e-6), var unbiased (/(K-1); 0 when K = 1).
//   vitk_masked_pixel_loss_rows_{f32,bf16}: per row r, row_loss[r] = mask[r] ? mean_k err : 0
//                       with err = |p - t| (l1) or (p - t)^2; dpred[r, k] = mask[r] ?
//                       sign(p - t) / (M*K) or 2 (p - t) / (M*K) : 0 (overwritten), M = number
//                       of masked rows (every block counts it; M = 0 gives a zero gradient).
//   vitk_masked_pixel_loss_reduce: loss[0] = (sum_r row_loss[r]) / M, 0 when M = 0.
//   Deterministic: thread t of the single block adds rows t, t + 256, ... in order, then the
//   block sum is a fixed tree (reduce.cuh).
// Inputs are fp32 (pe and pred come out of fp32 matmul epilogues, images are fp32); only the
// gradients that feed a matmul (dpe, dpred) have bf16 instances. Arithmetic is fp32.
// Launch: elementwise kernels: 1-D blocks of 256, grid min(ceil(n / 256), 2048), grid-stride;
//         token partial: grid (ceil(D / 256), chunks), one thread per column;
//         token reduce: ceil(D / 256) blocks, one thread per column;
//         targets: one block of 128 threads per row, threads stride over K;
//         loss rows: blocks of 256 threads (8 warps), grid min(ceil(R / 8), 1024), one warp
//         per row (grid-stride over rows), lanes stride over K; loss reduce: one block of 256.
// Memory traffic: each kernel reads its inputs once and writes its outputs once, except the
//         mask, which every loss-rows block reads whole (R bytes, from L2), and norm targets,
//         which re-read their own row (from L1).
#include "reduce.cuh"

extern "C" __global__ void vitk_mask_tokens_forward(float* x, const float* pe,
                                                    const unsigned char* mask,
                                                    const float* token, int rows, int dim) {
  const long long n = (long long)rows * dim;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    const long long r = i / dim;
    x[i] = mask[r] ? token[i - r * dim] : pe[i];
  }
}
VITK_EXPORT(vitk_mask_tokens_forward)

template <typename OutT>
__device__ __forceinline__ void vitk_mask_tokens_backward_pe(OutT* dpe, const float* dx,
                                                             const unsigned char* mask,
                                                             int rows, int dim) {
  const long long n = (long long)rows * dim;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    vitk_st(dpe + i, mask[i / dim] ? 0.0f : dx[i]);
  }
}

#define VITK_MASK_TOKENS_BACKWARD_PE(NAME, OUT)                                              \
  extern "C" __global__ void NAME(OUT* dpe, const float* dx, const unsigned char* mask,      \
                                  int rows, int dim) {                                       \
    vitk_mask_tokens_backward_pe<OUT>(dpe, dx, mask, rows, dim);                             \
  }                                                                                          \
  VITK_EXPORT(NAME)
VITK_MASK_TOKENS_BACKWARD_PE(vitk_mask_tokens_backward_pe_f32, float)
VITK_MASK_TOKENS_BACKWARD_PE(vitk_mask_tokens_backward_pe_bf16, vitk_bf16)

extern "C" __global__ void vitk_mask_tokens_token_partial(float* partial, const float* dx,
                                                          const unsigned char* mask,
                                                          const int* src, int rows, int dim,
                                                          int rows_per_chunk) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= dim) return;
  const int j = blockIdx.y;
  const int r0 = j * rows_per_chunk, r1 = min(rows, r0 + rows_per_chunk);
  float s = 0.0f;
  for (int r = r0; r < r1; r++)
    if (mask ? mask[r] != 0 : src[r] < 0) s += dx[(long long)r * dim + c];
  partial[(long long)j * dim + c] = s;
}
VITK_EXPORT(vitk_mask_tokens_token_partial)

extern "C" __global__ void vitk_mask_tokens_token_reduce(float* dtoken, const float* partial,
                                                         int chunks, int dim) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= dim) return;
  float s = 0.0f;
  for (int j = 0; j < chunks; j++) s += partial[(long long)j * dim + c];
  dtoken[c] += s;
}
VITK_EXPORT(vitk_mask_tokens_token_reduce)

extern "C" __global__ void vitk_patch_targets(float* targets, const float* images, int channels,
                                              int height, int width, int patch, int norm) {
  VITK_SHARED(float, scratch, 32);
  const int gw = width / patch, gh = height / patch;
  const int k = patch * patch * channels;
  const long long row = blockIdx.x;
  const int b = (int)(row / ((long long)gh * gw)), n = (int)(row - (long long)b * gh * gw);
  const int py = n / gw, px = n - py * gw;
  const float* img = images + (long long)b * channels * height * width;
  float* out = targets + row * k;
  float sum = 0.0f;
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    const int c = i % channels, q = i / channels;
    const int ky = q / patch, kx = q - ky * patch;
    const float v =
        img[((long long)c * height + py * patch + ky) * width + px * patch + kx];
    out[i] = v;
    sum += v;
  }
  if (!norm) return;  // uniform over the block: no thread is left waiting at a barrier
  const float mean = vitk_block_sum(sum, scratch) / k;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    const float d = out[i] - mean;  // this thread's own writes
    ss += d * d;
  }
  ss = vitk_block_sum(ss, scratch);
  const float var = k > 1 ? ss / (k - 1) : 0.0f;
  const float rstd = 1.0f / sqrtf(var + 1e-6f);
  for (int i = threadIdx.x; i < k; i += blockDim.x) out[i] = (out[i] - mean) * rstd;
}
VITK_EXPORT(vitk_patch_targets)

// Number of nonzero mask bytes, on every thread of the block (exact: the launcher keeps
// R below 2^24).
__device__ __forceinline__ float vitk_mim_masked_count(const unsigned char* mask, int rows,
                                                       float* scratch) {
  float m = 0.0f;
  for (int r = threadIdx.x; r < rows; r += blockDim.x) m += mask[r] ? 1.0f : 0.0f;
  return vitk_block_sum(m, scratch);
}

template <typename OutT>
__device__ __forceinline__ void vitk_masked_pixel_loss_rows(float* row_loss, OutT* dpred,
                                                            const float* pred,
                                                            const float* target,
                                                            const unsigned char* mask,
                                                            int rows, int k, int l1) {
  VITK_SHARED(float, scratch, 32);
  const float m = vitk_mim_masked_count(mask, rows, scratch);
  const float scale = m > 0.0f ? 1.0f / (m * (float)k) : 0.0f;
  const int lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  for (int r = blockIdx.x * nwarps + (threadIdx.x >> 5); r < rows; r += gridDim.x * nwarps) {
    const long long base = (long long)r * k;
    const bool on = mask[r] != 0;
    float acc = 0.0f;
    for (int i = lane; i < k; i += 32) {
      const float e = pred[base + i] - target[base + i];
      float g = 0.0f;
      if (on) {
        if (l1) {
          acc += fabsf(e);
          g = e > 0.0f ? scale : (e < 0.0f ? -scale : 0.0f);
        } else {
          acc += e * e;
          g = 2.0f * e * scale;
        }
      }
      vitk_st(dpred + base + i, g);
    }
    acc = vitk_warp_sum(acc);
    if (lane == 0) row_loss[r] = on ? acc / k : 0.0f;
  }
}

#define VITK_MASKED_PIXEL_LOSS_ROWS(NAME, OUT)                                               \
  extern "C" __global__ void NAME(float* row_loss, OUT* dpred, const float* pred,            \
                                  const float* target, const unsigned char* mask, int rows,  \
                                  int k, int l1) {                                           \
    vitk_masked_pixel_loss_rows<OUT>(row_loss, dpred, pred, target, mask, rows, k, l1);      \
  }                                                                                          \
  VITK_EXPORT(NAME)
VITK_MASKED_PIXEL_LOSS_ROWS(vitk_masked_pixel_loss_rows_f32, float)
VITK_MASKED_PIXEL_LOSS_ROWS(vitk_masked_pixel_loss_rows_bf16, vitk_bf16)

extern "C" __global__ void vitk_masked_pixel_loss_reduce(float* loss, const float* row_loss,
                                                         const unsigned char* mask, int rows) {
  VITK_SHARED(float, scratch, 32);
  const float m = vitk_mim_masked_count(mask, rows, scratch);
  float s = 0.0f;
  for (int r = threadIdx.x; r < rows; r += blockDim.x) s += row_loss[r];
  s = vitk_block_sum(s, scratch);
  if (threadIdx.x == 0) loss[0] = m > 0.0f ? s / m : 0.0f;
}
VITK_EXPORT(vitk_masked_pixel_loss_reduce)

// ---- BERT-style substitution (the ViT paper's masked patch prediction) --------------------
//   vitk_substitute_forward: x[b, n, c] = src[b, n] < 0 ? token[c] : pe[b, src[b, n], c]
//   vitk_substitute_backward_pe_{f32,bf16}: dpe[b, m, c] = sum over n with src[b, n] == m of
//                   dx[b, n, c], n in order (overwritten); O(N) source reads per element (from
//                   L1: the N sources of one image); dtoken: the token kernels above with
//                   `src` instead of `mask` (a row is masked when src < 0).
// Launch: elementwise (grid-stride, as above).
extern "C" __global__ void vitk_substitute_forward(float* x, const float* pe, const int* src,
                                                   const float* token, int rows, int n,
                                                   int dim) {
  const long long total = (long long)rows * dim;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (long long)gridDim.x * blockDim.x) {
    const long long r = i / dim;
    const int c = (int)(i - r * dim);
    const int s = src[r];
    x[i] = s < 0 ? token[c] : pe[((r - r % n) + s) * dim + c];
  }
}
VITK_EXPORT(vitk_substitute_forward)

template <typename OutT>
__device__ __forceinline__ void vitk_substitute_backward_pe(OutT* dpe, const float* dx,
                                                            const int* src, int rows, int n,
                                                            int dim) {
  const long long total = (long long)rows * dim;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (long long)gridDim.x * blockDim.x) {
    const long long r = i / dim;
    const int c = (int)(i - r * dim);
    const long long r0 = r - r % n;
    const int m = (int)(r - r0);
    float s = 0.0f;
    for (int j = 0; j < n; j++)
      if (src[r0 + j] == m) s += dx[(r0 + j) * dim + c];
    vitk_st(dpe + i, s);
  }
}

#define VITK_SUBSTITUTE_BACKWARD_PE(NAME, OUT)                                               \
  extern "C" __global__ void NAME(OUT* dpe, const float* dx, const int* src, int rows, int n, \
                                  int dim) {                                                 \
    vitk_substitute_backward_pe<OUT>(dpe, dx, src, rows, n, dim);                            \
  }                                                                                          \
  VITK_EXPORT(NAME)
VITK_SUBSTITUTE_BACKWARD_PE(vitk_substitute_backward_pe_f32, float)
VITK_SUBSTITUTE_BACKWARD_PE(vitk_substitute_backward_pe_bf16, vitk_bf16)
