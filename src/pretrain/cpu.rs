//! The CPU pre-training engine: [`CpuPretrainEngine`] with its parameters, gradients and
//! AdamW state in f32, behind the [`PretrainEngine`] interface the pre-training loop uses.

use super::{Objective, PatchMasks, PretrainEngine, PretrainStepOutput};
use crate::cpu::{clip_grad_norm, AdamW, CpuPretrainEngine};
use crate::data::Normalize;
use crate::engine::OptimizerState;
use crate::model::{ConfigError, ModelConfig, PretrainLayout};
use crate::optim::{AdamWConfig, ParamGroups};
use anyhow::{ensure, Result};

/// The rayon pre-training engine with its parameters, gradients and AdamW state in f32.
pub struct CpuPretrainer {
    engine: CpuPretrainEngine<f32>,
    groups: ParamGroups,
    params: Vec<f32>,
    grads: Vec<f32>,
    opt: AdamW<f32>,
    /// The last step's output, returned by the next call (reported one step late).
    reported_late: Option<PretrainStepOutput>,
}

impl CpuPretrainer {
    /// An engine for `cfg` and `objective` holding `params` (laid out by
    /// [`PretrainLayout::new`]`(cfg, objective.decoder_outputs(cfg))`), for batches of up to
    /// `max_batch` images normalised with `normalize`.
    pub fn new(
        cfg: &ModelConfig,
        objective: Objective,
        normalize: Normalize,
        max_batch: usize,
        params: Vec<f32>,
        adamw: AdamWConfig,
    ) -> Result<Self, ConfigError> {
        let engine = CpuPretrainEngine::new(cfg, objective, normalize, max_batch)?;
        let layout = PretrainLayout::new(cfg, objective.decoder_outputs(cfg));
        if params.len() != layout.len {
            return Err(ConfigError(format!(
                "{} parameters given, the pre-training model has {}",
                params.len(),
                layout.len
            )));
        }
        let n = layout.len;
        Ok(Self {
            engine,
            groups: ParamGroups::pretraining(&layout),
            params,
            grads: vec![0.0; n],
            opt: AdamW::new(adamw, n),
            reported_late: None,
        })
    }

    /// Checks `images` [B, C, S_h, S_w] and `masks` [B, N] against the model and the engine's
    /// capacity (the engine asserts on both); returns B.
    fn check(&self, images: &[f32], masks: &PatchMasks) -> Result<usize> {
        let cfg = self.engine.config();
        let image = cfg.image_len();
        let batch = images.len() / image;
        ensure!(
            images.len() == batch * image && (1..=self.engine.max_batch()).contains(&batch),
            "{} input values: expected 1 to {} images of {}x{}x{}",
            images.len(),
            self.engine.max_batch(),
            cfg.in_chans,
            cfg.image_size.height,
            cfg.image_size.width
        );
        masks
            .check(batch, cfg.num_patches())
            .map_err(anyhow::Error::msg)?;
        Ok(batch)
    }
}

impl PretrainEngine for CpuPretrainer {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn max_batch(&self) -> usize {
        self.engine.max_batch()
    }

    fn pretrain_step(
        &mut self,
        images: &[f32],
        masks: &PatchMasks,
        lr: f64,
        clip: Option<f64>,
    ) -> Result<Option<PretrainStepOutput>> {
        self.check(images, masks)?;
        self.engine.forward(&self.params, images, masks);
        let loss = self.engine.loss();
        self.grads.fill(0.0);
        self.engine.backward(&self.params, &mut self.grads);
        let grad_norm = clip.map(|max| clip_grad_norm(&mut self.grads, max));
        self.opt
            .update(&self.groups, &mut self.params, &self.grads, lr);
        let out = PretrainStepOutput { loss, grad_norm };
        Ok(self.reported_late.replace(out))
    }

    fn finish_steps(&mut self) -> Result<Option<PretrainStepOutput>> {
        Ok(self.reported_late.take())
    }

    fn evaluate(&mut self, images: &[f32], masks: &PatchMasks) -> Result<(f64, Vec<f32>)> {
        self.check(images, masks)?;
        self.engine.forward(&self.params, images, masks);
        let loss = self.engine.loss();
        Ok((loss, self.engine.predictions().to_vec()))
    }

    fn params(&self) -> Result<Vec<f32>> {
        Ok(self.params.clone())
    }

    fn optimizer_state(&self) -> Result<OptimizerState> {
        Ok(self.opt.state())
    }

    fn load(&mut self, params: &[f32], opt: Option<&OptimizerState>) -> Result<()> {
        ensure!(
            params.len() == self.params.len(),
            "{} parameters given, the pre-training model has {}",
            params.len(),
            self.params.len()
        );
        self.params.copy_from_slice(params);
        if let Some(o) = opt {
            self.opt.load_state(o).map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }
}
