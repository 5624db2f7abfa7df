// One row of softmax cross-entropy with label smoothing, computed by one warp (lanes stride
// over the K classes), shared by the classification loss (loss.cu) and the colour objective's
// masked loss (mim_colour.cu), so both give the same bits for the same row:
//   m = max_k l[k], lse = log(sum exp(l - m)),
//   loss = (1 - eps)((m - l[y]) + lse) + eps ((m - mean_k l[k]) + lse)
//   drow[k] = (exp((l[k] - m) - lse) - (1 - eps) [k == y] - eps / K) * grad_scale
// Always through l - m, never log_z = m + lse: for logits of size 1e4 the rounding of log_z
// alone would cost the probabilities ~1e-3 of relative precision.
#pragma once
#include "reduce.cuh"

// Max over a warp, and the lowest lane index holding it (first arg-max).
__device__ __forceinline__ void vitk_warp_argmax(float& v, int& idx) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(VITK_FULL_MASK, v, o);
    const int oi = __shfl_xor_sync(VITK_FULL_MASK, idx, o);
    if (ov > v || (ov == v && oi < idx)) {
      v = ov;
      idx = oi;
    }
  }
}

// The block's loss statistics from per-warp partials (lane 0 of each warp holds its warp's
// loss and count of correct rows): stats[0] = scale * (the warp losses added in warp order),
// stats[1] = the correct rows. Deterministic; every thread of the block calls it.
__device__ __forceinline__ void vitk_block_loss_stats(float* stats, float loss, int correct,
                                                      float scale) {
  VITK_SHARED(float, warp_loss, 32);
  VITK_SHARED(int, warp_correct, 32);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  if (lane == 0) {
    warp_loss[warp] = loss;
    warp_correct[warp] = correct;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    int right = 0;
    for (int w = 0; w < nwarps; w++) {
      total += warp_loss[w];
      right += warp_correct[w];
    }
    stats[0] = total * scale;
    stats[1] = (float)right;
  }
}

// The row's loss (on every lane); writes drow [K]; `hit` = whether the first arg-max is y.
template <typename OutT>
__device__ __forceinline__ float vitk_ce_row(const float* row, OutT* drow, int y, int classes,
                                             float smoothing, float inv_k, float grad_scale,
                                             int lane, bool& hit) {
  float mx = -3.402823466e38f, sum_l = 0.0f;
  int arg = 0x7fffffff;
  for (int c = lane; c < classes; c += 32) {
    const float l = row[c];
    if (l > mx) {
      mx = l;
      arg = c;
    }
    sum_l += l;
  }
  vitk_warp_argmax(mx, arg);
  sum_l = vitk_warp_sum(sum_l);
  float se = 0.0f;
  for (int c = lane; c < classes; c += 32) se += expf(row[c] - mx);
  se = vitk_warp_sum(se);
  const float lse = logf(se);
  for (int c = lane; c < classes; c += 32) {
    const float target = c == y ? 1.0f - smoothing + smoothing * inv_k : smoothing * inv_k;
    vitk_st(drow + c, (expf((row[c] - mx) - lse) - target) * grad_scale);
  }
  const float nll = (mx - row[y]) + lse;
  const float mean_nll = (mx - sum_l * inv_k) + lse;
  hit = arg == y;
  return (1.0f - smoothing) * nll + smoothing * mean_nll;
}
