// Patch embedding, first half: im2col. The conv with kernel = stride = P becomes a matmul of
// these patch rows with the conv weight viewed as [D, C*P*P] (done by the linear kernels).
//   images  [B, C, Sh, Sw]  ->  patches [B*N, C*P*P],  N = (Sh/P)*(Sw/P),
//   row b*N + py*(Sw/P) + px, column c*P*P + ky*P + kx  =  images[b, c, py*P+ky, px*P+kx].
// patches are fp32 (vitk_patch_embed_im2col_f32) or bf16 (_bf16, the bf16 matmul's input).
// No backward: the images need no gradient.
// Launch: one thread per output element, 1-D blocks of 256, grid ceil(B*N*C*P*P / 256).
// Memory traffic: each image element read once, each patch element written once (coalesced
// writes; reads are coalesced within runs of P along kx).
#include "common.cuh"

template <typename OutT>
__device__ __forceinline__ void vitk_im2col(OutT* patches, const float* images, int batch,
                                            int channels, int height, int width, int patch) {
  const int grid_w = width / patch;
  const long long n_patches = (long long)(height / patch) * grid_w;
  const long long cols = (long long)channels * patch * patch;
  const long long total = batch * n_patches * cols;
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const long long row = i / cols;
  const int col = (int)(i - row * cols);
  const int b = (int)(row / n_patches);
  const int p = (int)(row - (long long)b * n_patches);
  const int py = p / grid_w, px = p - py * grid_w;
  const int c = col / (patch * patch);
  const int k = col - c * patch * patch;
  const int ky = k / patch, kx = k - ky * patch;
  const long long src = (((long long)b * channels + c) * height + (py * patch + ky)) * width +
                        (px * patch + kx);
  vitk_st(patches + i, images[src]);
}

#define VITK_IM2COL(NAME, OUT)                                                              \
  extern "C" __global__ void NAME(OUT* patches, const float* images, int batch,            \
                                  int channels, int height, int width, int patch) {        \
    vitk_im2col<OUT>(patches, images, batch, channels, height, width, patch);              \
  }                                                                                        \
  VITK_EXPORT(NAME)
VITK_IM2COL(vitk_patch_embed_im2col_f32, float)
VITK_IM2COL(vitk_patch_embed_im2col_bf16, vitk_bf16)
