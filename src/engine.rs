//! What the training loop needs from an engine, written once for every device: the CPU
//! trainer (src/cpu/trainer.rs) and the device trainer (src/gpu/engine.rs) implement
//! [`TrainEngine`]; the loop, evaluation, checkpoints and logs only see this interface.

use crate::optim::EmaConfig;
use anyhow::Result;

/// Result of one optimizer step.
#[derive(Clone, Copy, Debug)]
pub struct StepOutput {
    /// Mean training loss of the batch (with label smoothing).
    pub loss: f64,
    /// Correct arg-max predictions in the batch.
    pub correct: usize,
    /// Global gradient norm before clipping (when clipping is on).
    pub grad_norm: Option<f64>,
}

/// Optimizer state to save and restore: the AdamW moments in the parameter layout and the
/// number of steps taken.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub step: u64,
}

/// A model with its parameters and optimizer on some device. Device failures (a lost
/// GPU, out of memory) come back as errors that name the operation.
pub trait TrainEngine {
    /// "cpu (2 threads)", "cuda:0 (NVIDIA H200)", ...
    fn describe(&self) -> String;
    /// Largest batch the engine's buffers hold.
    fn max_batch(&self) -> usize;
    /// Queues one step: forward, loss, backward, optional clipping and one AdamW update at
    /// rate `lr` (then the EMA update, when on); images [B, C, S, S] normalised, labels [B].
    /// `targets`: soft targets [B, K] (mixup/CutMix, label smoothing folded in): when given,
    /// the soft-target cross-entropy replaces the hard one (`smoothing` is then unused) and a
    /// sample counts as correct when its arg-max is its dominant target. Returns the output of the step
    /// queued before this one (`None` for the first): every engine reports one step late, so
    /// that the device engine keeps a step in flight and the host never waits inside one
    /// (the host prepares the next batch while the device runs this step).
    /// [`TrainEngine::finish_steps`] waits for and returns the last one.
    fn train_step(
        &mut self,
        images: &[f32],
        labels: &[u32],
        targets: Option<&[f32]>,
        lr: f64,
        smoothing: f64,
        clip: Option<f64>,
    ) -> Result<Option<StepOutput>>;
    /// Waits for the queued step and returns its output (`None` when there is none).
    fn finish_steps(&mut self) -> Result<Option<StepOutput>>;
    /// Logits [B, K] of images [B, C, S, S] (no state kept for backward is needed).
    fn logits(&mut self, images: &[f32]) -> Result<Vec<f32>>;
    /// Attention probabilities of an evaluation forward pass of images [B, C, S, S]:
    /// [L, B, H, T, T] f32, where element (l, b, h, i, j) is how much query token i attends
    /// to key token j in head h of block l (each row a softmax: sums to 1). For attention
    /// maps (`vitk attention`); not part of training.
    fn attention_probs(&mut self, images: &[f32]) -> Result<Vec<f32>>;
    /// The parameters, flat in the [`ParamLayout`] order.
    fn params(&self) -> Result<Vec<f32>>;
    fn optimizer_state(&self) -> Result<OptimizerState>;
    /// Replaces the parameters and optimizer state (resume).
    fn load(&mut self, params: &[f32], opt: Option<&OptimizerState>) -> Result<()>;
    /// Turns on the exponential moving average of the weights (`--ema-decay`): from now on
    /// each step's AdamW update is followed by `ema ← lerp(ema, params, cfg.weight_at(step))`
    /// (step: the optimizer steps taken, this one included). `ema` [P]: the average to start
    /// from (the initial weights, or the saved average on resume).
    fn start_ema(&mut self, cfg: EmaConfig, ema: &[f32]) -> Result<()>;
    /// The averaged weights [P] (`None` while the EMA is off).
    fn ema_params(&self) -> Result<Option<Vec<f32>>>;
    /// Exchanges the weights the engine computes with and the average (bitwise, both ways):
    /// evaluating the average is a swap, the evaluation, and a swap back. An error while the
    /// EMA is off. Waits for the queued step.
    fn swap_ema(&mut self) -> Result<()>;
}

/// The arithmetic of a device step. `Fp32` is the exact path the parity tests hold to 1e-5;
/// `Bf16` is mixed precision as PyTorch's autocast does it: fp32 master weights, gradients and
/// AdamW moments, bf16 matmul inputs (weight copies and activations) on tensor cores with fp32
/// accumulation, and fp32 LayerNorm statistics, softmax, loss, reductions and residual stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Bf16,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" => Ok(Precision::Fp32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(format!(
                "unknown precision '{other}': expected fp32 or bf16"
            )),
        }
    }
}
