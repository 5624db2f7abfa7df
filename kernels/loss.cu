// Fused softmax cross-entropy with label smoothing eps (as src/cpu/loss.rs, PyTorch's
// CrossEntropyLoss(label_smoothing=eps)), loss and gradient in one kernel:
//   per row b of logits [B, K] with label y: m = max_k l[k], lse = log(sum exp(l - m)),
//     loss_b  = (1 - eps)((m - l[y]) + lse) + eps ((m - mean_k l[k]) + lse)
//     dlogits[b, k] = (exp((l[k] - m) - lse) - (1 - eps) [k == y] - eps / K) / B  (overwritten)
//   (one row: vitk_ce_row, softmax_ce.cuh, shared with the colour objective's loss).
//   stats[0] = mean_b loss_b, stats[1] = number of rows whose first arg-max is y.
//   dlogits is fp32 (vitk_cross_entropy_f32) or bf16 (_bf16: the head matmuls' dY on the bf16
//   path); logits and the loss are fp32.
// Deterministic: warp w owns rows w, w + 8, ... and adds their losses in row order; the 8
// warp totals are then added in warp order by thread 0.
// Launch: one block of 256 threads (8 warps), one warp per row, lanes stride over K.
// Memory traffic: reads logits twice (the second pass from L1), writes dlogits once.
#include "softmax_ce.cuh"

template <typename OutT>
__device__ __forceinline__ void vitk_cross_entropy(float* stats, OutT* dlogits,
                                                   const float* logits, const unsigned* labels,
                                                   int batch, int classes, float smoothing) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  const float inv_k = 1.0f / classes, inv_b = 1.0f / batch;
  float loss = 0.0f;
  int correct = 0;
  for (int r = warp; r < batch; r += nwarps) {
    const float* row = logits + (long long)r * classes;
    OutT* drow = dlogits + (long long)r * classes;
    bool hit;
    loss += vitk_ce_row(row, drow, (int)labels[r], classes, smoothing, inv_k, inv_b, lane, hit);
    correct += hit;
  }
  vitk_block_loss_stats(stats, loss, correct, inv_b);
}

#define VITK_CROSS_ENTROPY(NAME, OUT)                                                        \
  extern "C" __global__ void NAME(float* stats, OUT* dlogits, const float* logits,           \
                                  const unsigned* labels, int batch, int classes,            \
                                  float smoothing) {                                         \
    vitk_cross_entropy<OUT>(stats, dlogits, logits, labels, batch, classes, smoothing);      \
  }                                                                                          \
  VITK_EXPORT(NAME)
VITK_CROSS_ENTROPY(vitk_cross_entropy_f32, float)
VITK_CROSS_ENTROPY(vitk_cross_entropy_bf16, vitk_bf16)

// Soft-target cross-entropy (timm's SoftTargetCrossEntropy, the loss of mixup/CutMix; as
// src/cpu/soft_loss.rs), loss and gradient in one kernel:
//   per row b of logits [B, K] with soft targets t [B, K]: m = max_k l[k],
//     lse = log(sum exp(l - m)), S = sum_k t[k],
//     loss_b = sum_k t[k] ((m - l[k]) + lse)
//     dlogits[b, k] = (exp((l[k] - m) - lse) S - t[k]) / B  (overwritten; autograd's exact
//       gradient, (p - t) / B when the targets sum to one)
//   stats[0] = mean_b loss_b, stats[1] = number of rows whose first arg-max logit is the first
//   arg-max of the targets (the dominant class of a mixed pair).
// Deterministic as vitk_cross_entropy: warp w owns rows w, w + 8, ..., adds their losses in row
// order, thread 0 adds the 8 warp totals in warp order.
// Launch: one block of 256 threads (8 warps), one warp per row, lanes stride over K.
// Memory traffic: reads logits and targets (logits twice, the second pass from L1), writes
// dlogits once.
template <typename OutT>
__device__ __forceinline__ float vitk_soft_ce_row(const float* row, const float* t, OutT* drow,
                                                  int classes, float inv_b, int lane,
                                                  bool& hit) {
  float mx = -3.402823466e38f, tmx = -3.402823466e38f, t_sum = 0.0f;
  int arg = 0x7fffffff, targ = 0x7fffffff;
  for (int c = lane; c < classes; c += 32) {
    const float l = row[c], tc = t[c];
    if (l > mx) {
      mx = l;
      arg = c;
    }
    if (tc > tmx) {
      tmx = tc;
      targ = c;
    }
    t_sum += tc;
  }
  vitk_warp_argmax(mx, arg);
  vitk_warp_argmax(tmx, targ);
  t_sum = vitk_warp_sum(t_sum);
  float se = 0.0f;
  for (int c = lane; c < classes; c += 32) se += expf(row[c] - mx);
  const float lse = logf(vitk_warp_sum(se));
  float loss = 0.0f;
  for (int c = lane; c < classes; c += 32) {
    const float l = row[c], tc = t[c];
    loss += tc * ((mx - l) + lse);
    vitk_st(drow + c, (expf((l - mx) - lse) * t_sum - tc) * inv_b);
  }
  hit = arg == targ;
  return vitk_warp_sum(loss);
}

template <typename OutT>
__device__ __forceinline__ void vitk_soft_cross_entropy(float* stats, OutT* dlogits,
                                                        const float* logits,
                                                        const float* targets, int batch,
                                                        int classes) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  const float inv_b = 1.0f / batch;
  float loss = 0.0f;
  int correct = 0;
  for (int r = warp; r < batch; r += nwarps) {
    const long long off = (long long)r * classes;
    bool hit;
    loss += vitk_soft_ce_row(logits + off, targets + off, dlogits + off, classes, inv_b, lane,
                             hit);
    correct += hit;
  }
  vitk_block_loss_stats(stats, loss, correct, inv_b);
}

#define VITK_SOFT_CROSS_ENTROPY(NAME, OUT)                                                   \
  extern "C" __global__ void NAME(float* stats, OUT* dlogits, const float* logits,           \
                                  const float* targets, int batch, int classes) {            \
    vitk_soft_cross_entropy<OUT>(stats, dlogits, logits, targets, batch, classes);           \
  }                                                                                          \
  VITK_EXPORT(NAME)
VITK_SOFT_CROSS_ENTROPY(vitk_soft_cross_entropy_f32, float)
VITK_SOFT_CROSS_ENTROPY(vitk_soft_cross_entropy_bf16, vitk_bf16)
