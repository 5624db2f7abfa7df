//! What the training loop needs from an engine. The CPU engine implements it here; the GPU
//! engine implements the same trait, so the loop, checkpoints and logs are written once.

use super::adamw::{clip_grad_norm, AdamW, AdamWConfig};
use crate::cpu::CpuEngine;
use crate::model::{ConfigError, ModelConfig, ParamLayout};
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
    /// Forward, loss, backward, optional clipping and one AdamW update at rate `lr`.
    /// images [B, C, S, S] normalised, labels [B].
    fn train_step(
        &mut self,
        images: &[f32],
        labels: &[u32],
        lr: f64,
        smoothing: f64,
        clip: Option<f64>,
    ) -> Result<StepOutput>;
    /// Logits [B, K] of images [B, C, S, S] (no state kept for backward is needed).
    fn logits(&mut self, images: &[f32]) -> Result<Vec<f32>>;
    /// The parameters, flat in the [`ParamLayout`] order.
    fn params(&self) -> Result<Vec<f32>>;
    fn optimizer_state(&self) -> Result<OptimizerState>;
    /// Replaces the parameters and optimizer state (resume).
    fn load(&mut self, params: &[f32], opt: Option<&OptimizerState>) -> Result<()>;
}

/// The rayon CPU engine with its parameters, gradients and AdamW state in f32.
pub struct CpuTrainer {
    engine: CpuEngine<f32>,
    layout: ParamLayout,
    params: Vec<f32>,
    grads: Vec<f32>,
    opt: AdamW<f32>,
}

impl CpuTrainer {
    pub fn new(
        cfg: &ModelConfig,
        max_batch: usize,
        params: Vec<f32>,
        adamw: AdamWConfig,
    ) -> Result<Self, ConfigError> {
        let engine = CpuEngine::new(cfg, max_batch)?;
        let layout = ParamLayout::new(cfg);
        if params.len() != layout.len {
            return Err(ConfigError(format!(
                "{} parameters given, the model has {}",
                params.len(),
                layout.len
            )));
        }
        let n = layout.len;
        Ok(Self {
            engine,
            layout,
            params,
            grads: vec![0.0; n],
            opt: AdamW::new(adamw, n),
        })
    }
}

impl TrainEngine for CpuTrainer {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn max_batch(&self) -> usize {
        self.engine.max_batch()
    }

    fn train_step(
        &mut self,
        images: &[f32],
        labels: &[u32],
        lr: f64,
        smoothing: f64,
        clip: Option<f64>,
    ) -> Result<StepOutput> {
        self.engine.forward(&self.params, images);
        let stats = self.engine.loss(labels, smoothing);
        self.grads.fill(0.0);
        self.engine.backward(&self.params, &mut self.grads);
        let grad_norm = clip.map(|max| clip_grad_norm(&mut self.grads, max));
        self.opt
            .update(&self.layout, &mut self.params, &self.grads, lr);
        Ok(StepOutput {
            loss: stats.loss,
            correct: stats.correct,
            grad_norm,
        })
    }

    fn logits(&mut self, images: &[f32]) -> Result<Vec<f32>> {
        self.engine.forward(&self.params, images);
        Ok(self.engine.logits().to_vec())
    }

    fn params(&self) -> Result<Vec<f32>> {
        Ok(self.params.clone())
    }

    fn optimizer_state(&self) -> Result<OptimizerState> {
        Ok(OptimizerState {
            m: self.opt.m.clone(),
            v: self.opt.v.clone(),
            step: self.opt.step,
        })
    }

    fn load(&mut self, params: &[f32], opt: Option<&OptimizerState>) -> Result<()> {
        anyhow::ensure!(
            params.len() == self.layout.len,
            "{} parameters given, the model has {}",
            params.len(),
            self.layout.len
        );
        self.params.copy_from_slice(params);
        if let Some(o) = opt {
            anyhow::ensure!(
                o.m.len() == self.layout.len && o.v.len() == self.layout.len,
                "optimizer state size"
            );
            self.opt.m.copy_from_slice(&o.m);
            self.opt.v.copy_from_slice(&o.v);
            self.opt.step = o.step;
        }
        Ok(())
    }
}
