//! AdamW's configuration and the scalars of one step, shared by the CPU optimizer
//! (src/cpu/adamw.rs), the device kernel (kernels/optim.cu) and the training loop; which
//! tensors train at which rate is [`ParamGroups`] (groups.rs).
//!
//! torch.optim.AdamW with per-group rates, per step t (1-based), for every trainable
//! parameter with gradient g, in a group of rate lr·s (s = 1 without `--layer-decay`):
//!   p ← p · (1 − lr·s·wd)                    (decoupled decay; wd = 0 where the layout says no decay)
//!   m ← m + (1 − β1)·(g − m)                 (PyTorch's lerp form)
//!   v ← β2·v + (1 − β2)·g²
//!   p ← p − lr·s/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
//! Frozen parameters (`--freeze-backbone`) are not touched: no decay, no update, zero moments.

use serde::{Deserialize, Serialize};

pub mod ema;
mod groups;
pub use ema::EmaConfig;
pub use groups::{layer_id, FineTuning, Group, ParamGroups, TensorPlan};

/// Hyperparameters (PyTorch defaults except the weight decay, which is timm's usual 0.05).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
        }
    }
}

/// The scalars of step `t` at rate `lr`, computed in f64 as PyTorch does, then used in the
/// engine's precision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWScalars {
    /// 1 − lr·wd: the decay factor of decayed parameters.
    pub keep: f64,
    /// lr / (1 − β1ᵗ)
    pub step_size: f64,
    /// √(1 − β2ᵗ)
    pub bc2_sqrt: f64,
    /// 1 − β1
    pub b1c: f64,
    pub b2: f64,
    /// 1 − β2
    pub b2c: f64,
    pub eps: f64,
}

/// The scalars every group shares at the start of the device kernel's `hyper`
/// ([`device_hyper`]): bc2_sqrt, b1c, b2, b2c, eps.
pub const ADAMW_COMMON: usize = 5;

/// Length of [`device_hyper`] for `groups` groups.
pub fn hyper_len(groups: usize) -> usize {
    ADAMW_COMMON + 2 * groups
}

/// The device kernel's `hyper` for step `t` at base rate `lr`: [bc2_sqrt, b1c, b2, b2c,
/// eps], then (keep, step_size) of each group, computed in f64 at the group's rate lr·s as
/// [`AdamWScalars::new`] does, then rounded to f32; keep is 1 in a group without decay.
pub fn device_hyper(cfg: &AdamWConfig, t: u64, lr: f64, groups: &[Group]) -> Vec<f32> {
    let base = AdamWScalars::new(cfg, t, lr);
    let common = [base.bc2_sqrt, base.b1c, base.b2, base.b2c, base.eps];
    let per_group = groups.iter().flat_map(|g| {
        let s = AdamWScalars::new(cfg, t, lr * g.lr_scale);
        [if g.decay { s.keep } else { 1.0 }, s.step_size]
    });
    common
        .into_iter()
        .chain(per_group)
        .map(|x| x as f32)
        .collect()
}

impl AdamWScalars {
    /// The scalars of a group at rate `lr` (the base rate times the group's scale: with scale
    /// 1 exactly the base rate's scalars).
    pub fn new(cfg: &AdamWConfig, t: u64, lr: f64) -> Self {
        let t = i32::try_from(t).unwrap_or(i32::MAX);
        AdamWScalars {
            keep: 1.0 - lr * cfg.weight_decay,
            step_size: lr / (1.0 - cfg.beta1.powi(t)),
            bc2_sqrt: (1.0 - cfg.beta2.powi(t)).sqrt(),
            b1c: 1.0 - cfg.beta1,
            b2: cfg.beta2,
            b2c: 1.0 - cfg.beta2,
            eps: cfg.eps,
        }
    }
}
