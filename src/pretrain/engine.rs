//! What the pre-training loop needs from an engine (the CPU one in src/pretrain/cpu.rs, the
//! device one in src/gpu/engine): the pre-training counterpart of [`crate::engine::TrainEngine`],
//! with patch masks in place of labels and no classification head.

use super::PatchMasks;
use crate::engine::OptimizerState;
use anyhow::Result;

/// Result of one pre-training step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PretrainStepOutput {
    /// The batch's loss (masked L1/L2 or masked cross-entropy).
    pub loss: f64,
    /// Global gradient norm before clipping (when clipping is on).
    pub grad_norm: Option<f64>,
}

/// The pre-training model (encoder, mask token, decoder; laid out by
/// [`crate::model::PretrainLayout`]) with its parameters and AdamW state on some device.
pub trait PretrainEngine {
    /// "cpu (2 threads)", "cuda:0 (NVIDIA H200), bf16", ...
    fn describe(&self) -> String;
    /// Largest batch the engine's buffers hold.
    fn max_batch(&self) -> usize;
    /// Queues one step on `images` [B, C, S_h, S_w] (normalised) corrupted by `masks`: forward,
    /// masked loss, backward, optional clipping and one AdamW update at rate `lr`. Reports one
    /// step late, as [`crate::engine::TrainEngine::train_step`].
    fn pretrain_step(
        &mut self,
        images: &[f32],
        masks: &PatchMasks,
        lr: f64,
        clip: Option<f64>,
    ) -> Result<Option<PretrainStepOutput>>;
    /// Waits for the queued step and returns its output (`None` when there is none).
    fn finish_steps(&mut self) -> Result<Option<PretrainStepOutput>>;
    /// An evaluation forward pass (no update): the loss and the decoder's outputs [B, N, K]
    /// (pixels: in target units, normalised per patch with `--norm-pix`; colour: logits).
    fn evaluate(&mut self, images: &[f32], masks: &PatchMasks) -> Result<(f64, Vec<f32>)>;
    /// The parameters, flat in the [`crate::model::PretrainLayout`] order.
    fn params(&self) -> Result<Vec<f32>>;
    fn optimizer_state(&self) -> Result<OptimizerState>;
    /// Replaces the parameters and optimizer state (resume).
    fn load(&mut self, params: &[f32], opt: Option<&OptimizerState>) -> Result<()>;
}
