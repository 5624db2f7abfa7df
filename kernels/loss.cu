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
  VITK_SHARED(float, warp_loss, 32);
  VITK_SHARED(int, warp_correct, 32);
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
    stats[0] = total * inv_b;
    stats[1] = (float)right;
  }
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
