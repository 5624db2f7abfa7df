//! AdamW's configuration and the scalars of one step, shared by the CPU optimizer
//! (src/cpu/adamw.rs), the device kernel (kernels/optim.cu) and the training loop.
//!
//! torch.optim.AdamW, per step t (1-based), for every parameter with gradient g:
//!   p ← p · (1 − lr·wd)                      (decoupled decay; wd = 0 where the layout says no decay)
//!   m ← m + (1 − β1)·(g − m)                 (PyTorch's lerp form)
//!   v ← β2·v + (1 − β2)·g²
//!   p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)

use serde::{Deserialize, Serialize};

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

/// Length of [`AdamWScalars::to_f32s`].
pub const ADAMW_SCALARS: usize = 7;

impl AdamWScalars {
    /// keep, step_size, bc2_sqrt, b1c, b2, b2c, eps in f32: the device kernel's `hyper`.
    pub fn to_f32s(&self) -> [f32; ADAMW_SCALARS] {
        [
            self.keep,
            self.step_size,
            self.bc2_sqrt,
            self.b1c,
            self.b2,
            self.b2c,
            self.eps,
        ]
        .map(|x| x as f32)
    }

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
