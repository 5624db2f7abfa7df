//! The CPU trainer: the rayon engine with its parameters, gradients and AdamW state in f32,
//! behind the engine interface the training loop uses.

use super::adamw::{clip_grad_norm, AdamW};
use super::ema::ema_update;
use super::CpuEngine;
use crate::engine::{OptimizerState, StepOutput, TrainEngine};
use crate::model::drop_path::{DropPath, StepDrops};
use crate::model::{ConfigError, ModelConfig, ParamLayout};
use crate::optim::{AdamWConfig, EmaConfig, FineTuning, ParamGroups};
use anyhow::Result;

/// The rayon CPU engine with its parameters, gradients and AdamW state in f32.
pub struct CpuTrainer {
    engine: CpuEngine<f32>,
    layout: ParamLayout,
    /// Which tensors train, at which rate (`--layer-decay`, `--freeze-backbone`).
    groups: ParamGroups,
    params: Vec<f32>,
    grads: Vec<f32>,
    opt: AdamW<f32>,
    /// The EMA of the weights (`--ema-decay`): its decay schedule and the average [P].
    ema: Option<(EmaConfig, Vec<f32>)>,
    /// The last step's output, returned by the next call (the engine interface reports one
    /// step late).
    reported_late: Option<StepOutput>,
    /// Stochastic depth of the training steps (`--drop-path`; `None`: off).
    drop_path: Option<DropPath>,
}

impl CpuTrainer {
    pub fn new(
        cfg: &ModelConfig,
        max_batch: usize,
        params: Vec<f32>,
        adamw: AdamWConfig,
        tuning: FineTuning,
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
            groups: ParamGroups::new(&layout, tuning),
            layout,
            params,
            grads: vec![0.0; n],
            opt: AdamW::new(adamw, n),
            ema: None,
            reported_late: None,
            drop_path: None,
        })
    }

    /// Trains with stochastic depth: step i (the optimizer's step count, restored by
    /// [`TrainEngine::load`]) drops the samples `StepDrops::draw(dp, i, ..)` says. A rate of
    /// 0 is the same as none.
    pub fn with_drop_path(mut self, dp: Option<DropPath>) -> Self {
        self.drop_path = dp.filter(|dp| dp.rate > 0.0);
        self
    }
}

impl CpuTrainer {
    /// The batch size of `images`, checked against the model's image shape and the engine's
    /// capacity (the engine asserts on both).
    fn batch_of(&self, images: &[f32]) -> Result<usize> {
        let cfg = self.engine.config();
        let image = cfg.image_len();
        let batch = images.len() / image;
        anyhow::ensure!(
            images.len() == batch * image && (1..=self.engine.max_batch()).contains(&batch),
            "{} input values: expected 1 to {} images of {}x{}x{}",
            images.len(),
            self.engine.max_batch(),
            cfg.in_chans,
            cfg.image_size.height,
            cfg.image_size.width
        );
        Ok(batch)
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
        targets: Option<&[f32]>,
        lr: f64,
        smoothing: f64,
        clip: Option<f64>,
    ) -> Result<Option<StepOutput>> {
        let batch = self.batch_of(images)?;
        anyhow::ensure!(
            labels.len() == batch,
            "{} labels for a batch of {batch} images",
            labels.len()
        );
        let k = self.engine.config().num_classes;
        if let Some(l) = labels.iter().find(|&&l| l as usize >= k) {
            anyhow::bail!("label {l} for a model of {k} classes (expected labels below {k})");
        }
        if let Some(t) = targets {
            anyhow::ensure!(
                t.len() == batch * k,
                "{} soft targets for a batch of {batch} and {k} classes (expected {})",
                t.len(),
                batch * k
            );
        }
        let drops = self
            .drop_path
            .map(|dp| StepDrops::draw(&dp, self.opt.step, self.engine.config().depth, batch));
        self.engine
            .forward_dropping(&self.params, images, drops.as_ref());
        let stats = match targets {
            Some(t) => self.engine.soft_loss(t),
            None => self.engine.loss(labels, smoothing),
        };
        // Gradients outside the trainable span are never written: they stay zero.
        let trainable = self.groups.trainable();
        self.grads[trainable.clone()].fill(0.0);
        if self.groups.backbone_frozen() {
            self.engine.backward_head(&self.params, &mut self.grads);
        } else {
            self.engine.backward(&self.params, &mut self.grads);
        }
        let grad_norm = clip.map(|max| clip_grad_norm(&mut self.grads[trainable], max));
        self.opt
            .update(&self.groups, &mut self.params, &self.grads, lr);
        if let Some((cfg, ema)) = &mut self.ema {
            ema_update(ema, &self.params, cfg.weight_at(self.opt.step));
        }
        let out = StepOutput {
            loss: stats.loss,
            correct: stats.correct,
            grad_norm,
        };
        Ok(self.reported_late.replace(out))
    }

    fn finish_steps(&mut self) -> Result<Option<StepOutput>> {
        Ok(self.reported_late.take())
    }

    fn logits(&mut self, images: &[f32]) -> Result<Vec<f32>> {
        self.batch_of(images)?;
        self.engine.forward(&self.params, images);
        Ok(self.engine.logits().to_vec())
    }

    fn attention_probs(&mut self, images: &[f32]) -> Result<Vec<f32>> {
        self.batch_of(images)?;
        self.engine.forward(&self.params, images);
        Ok(self.engine.attention_probs())
    }

    fn params(&self) -> Result<Vec<f32>> {
        Ok(self.params.clone())
    }

    fn optimizer_state(&self) -> Result<OptimizerState> {
        Ok(self.opt.state())
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
            self.opt.load_state(o).map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }

    fn start_ema(&mut self, cfg: EmaConfig, ema: &[f32]) -> Result<()> {
        cfg.validate().map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            ema.len() == self.layout.len,
            "{} averaged weights given, the model has {}",
            ema.len(),
            self.layout.len
        );
        self.ema = Some((cfg, ema.to_vec()));
        Ok(())
    }

    fn ema_params(&self) -> Result<Option<Vec<f32>>> {
        Ok(self.ema.as_ref().map(|(_, e)| e.clone()))
    }

    fn swap_ema(&mut self) -> Result<()> {
        let Some((_, ema)) = &mut self.ema else {
            anyhow::bail!("the EMA of the weights is off (no --ema-decay)");
        };
        std::mem::swap(&mut self.params, ema);
        Ok(())
    }
}
