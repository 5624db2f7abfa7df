//! Learning-rate schedules, evaluated per optimizer step.

use serde::{Deserialize, Serialize};

/// The shape of the schedule after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Cosine decay from the base rate to the minimum over the remaining steps.
    Cosine,
    /// The base rate throughout.
    Constant,
}

/// Linear warmup from base/warmup to base over `warmup_steps`, then `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl LrSchedule {
    /// A constant rate, no warmup.
    pub fn constant(lr: f64) -> Self {
        Self {
            kind: ScheduleKind::Constant,
            base_lr: lr,
            min_lr: lr,
            warmup_steps: 0,
            total_steps: 0,
        }
    }

    /// The rate for optimizer step `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.kind {
            ScheduleKind::Constant => self.base_lr,
            ScheduleKind::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
                let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                self.min_lr + (self.base_lr - self.min_lr) * cos
            }
        }
    }
}
