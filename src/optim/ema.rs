//! The decay schedule of the weights' exponential moving average (timm's `ModelEmaV3`), shared
//! by the CPU update (src/cpu/ema.rs) and the device kernel (kernels/ema.cu).
//!
//! timm's `ModelEmaV3.get_decay(step)`, with `step` the number of optimizer updates done so
//! far, this one included (timm's train loop passes `num_updates` after incrementing it):
//!   s = max(0, step − update_after_step − 1)
//!   s = 0:          d = 0 (the average restarts as a copy of the weights)
//!   warm-up:        d = clamp(1 − (1 + s/γ)^(−power), min_decay, decay)
//!   no warm-up:     d = decay
//! timm's defaults: update_after_step 0, γ (`warmup_gamma`) 1, power (`warmup_power`) 2/3,
//! min_decay 0. Each update is then, per weight, `ema.lerp_(param, 1 − d)` (torch's lerp:
//! see [`crate::cpu::ema::ema_update`]), with d computed in f64 and the weight 1 − d rounded
//! to f32 as PyTorch passes a Python float to a float32 kernel.

use serde::{Deserialize, Serialize};

/// timm's `ModelEmaV3` arguments that shape the decay.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmaConfig {
    /// The decay once warmed up (`--ema-decay`, e.g. 0.9998).
    pub decay: f64,
    /// Lower bound of the warmed-up decay.
    pub min_decay: f64,
    /// Updates before the average starts following the weights.
    pub update_after_step: u64,
    pub use_warmup: bool,
    pub warmup_gamma: f64,
    pub warmup_power: f64,
}

impl EmaConfig {
    /// timm's defaults with `decay` and warm-up on (the recipe's EMA).
    pub fn with_warmup(decay: f64) -> Self {
        EmaConfig {
            decay,
            min_decay: 0.0,
            update_after_step: 0,
            use_warmup: true,
            warmup_gamma: 1.0,
            warmup_power: 2.0 / 3.0,
        }
    }

    /// Refuses values timm would turn into a meaningless average: decays outside [0, 1],
    /// a non-positive γ, a negative power.
    pub fn validate(&self) -> Result<(), String> {
        let unit = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
        if !unit(self.decay) || !unit(self.min_decay) {
            return Err(format!(
                "EMA decay {} and min decay {} must lie in [0, 1]",
                self.decay, self.min_decay
            ));
        }
        if !(self.warmup_gamma.is_finite() && self.warmup_gamma > 0.0) {
            return Err(format!(
                "EMA warm-up gamma {} must be positive",
                self.warmup_gamma
            ));
        }
        if !(self.warmup_power.is_finite() && self.warmup_power >= 0.0) {
            return Err(format!(
                "EMA warm-up power {} must be >= 0",
                self.warmup_power
            ));
        }
        Ok(())
    }

    /// The decay d of the update after optimizer step `step` (1-based, see the module doc).
    pub fn decay_at(&self, step: u64) -> f64 {
        let s = step.saturating_sub(self.update_after_step + 1);
        if s == 0 {
            return 0.0;
        }
        if self.use_warmup {
            let d = 1.0 - (1.0 + s as f64 / self.warmup_gamma).powf(-self.warmup_power);
            d.min(self.decay).max(self.min_decay)
        } else {
            self.decay
        }
    }

    /// The lerp weight 1 − d of step `step`, in the precision of the parameters (the value the
    /// device kernel reads from its scalar buffer).
    pub fn weight_at(&self, step: u64) -> f32 {
        (1.0 - self.decay_at(step)) as f32
    }
}
