//! Everything that defines a training run; saved as config.json in the run directory so a
//! run can be resumed and reproduced.

use super::schedule::ScheduleKind;
use crate::data::fingerprint::Fingerprint;
use crate::model::ModelConfig;
use crate::optim::AdamWConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where the training data comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataSource {
    /// A CIFAR-10 binary directory or an ImageFolder.
    /// `val_split`: records held out when the data has no validation split (None: the default).
    Dir {
        /// Absolute (canonical) since fingerprints were added, so that a run resumes from
        /// any working directory; older configs may hold the path as typed.
        path: PathBuf,
        val_split: Option<usize>,
        /// A CIFAR-10 directory with missing training batches was accepted (--allow-partial).
        #[serde(default)]
        allow_partial: bool,
        /// The data as loaded at the start of the run; --resume checks the data against it
        /// (absent in configs of older vitk).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<Fingerprint>,
    },
    /// The generated set (data::synthetic), deterministic in `seed`.
    Synthetic { train: usize, val: usize, seed: u64 },
}

/// Hyperparameters and data of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub data: DataSource,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_epochs: f64,
    pub schedule: ScheduleKind,
    pub adamw: AdamWConfig,
    pub label_smoothing: f64,
    /// Maximum global gradient norm (None: no clipping).
    pub clip_grad: Option<f64>,
    pub augment: bool,
    pub shuffle: bool,
    pub seed: u64,
    /// Per-channel normalisation (mean, std) applied to inputs in [0, 1].
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl TrainConfig {
    /// Checks values a typo could make meaningless; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        self.model.validate().map_err(|e| e.to_string())?;
        let checks = [
            (
                self.epochs == 0,
                "--epochs is 0, expected at least 1".to_string(),
            ),
            (
                self.batch_size == 0,
                "--batch-size is 0, expected at least 1".to_string(),
            ),
            (
                !(self.lr > 0.0 && self.lr.is_finite()),
                format!("--lr {} is not a positive number", self.lr),
            ),
            (
                !(self.min_lr >= 0.0 && self.min_lr <= self.lr),
                format!("--min-lr {} must lie in [0, lr={}]", self.min_lr, self.lr),
            ),
            (
                !(self.warmup_epochs >= 0.0 && self.warmup_epochs.is_finite()),
                format!("--warmup-epochs {} is negative", self.warmup_epochs),
            ),
            (
                !(0.0..1.0).contains(&self.label_smoothing),
                format!(
                    "--label-smoothing {} must lie in [0, 1)",
                    self.label_smoothing
                ),
            ),
            (
                self.adamw.weight_decay.is_nan() || self.adamw.weight_decay < 0.0,
                format!("--weight-decay {} is negative", self.adamw.weight_decay),
            ),
            (
                self.clip_grad.is_some_and(|c| c.is_nan() || c <= 0.0),
                format!("--clip-grad {:?} must be positive", self.clip_grad),
            ),
            (
                self.std.iter().any(|s| s.is_nan() || *s <= 0.0),
                format!("normalisation std {:?} must be positive", self.std),
            ),
        ];
        match checks.into_iter().find(|(bad, _)| *bad) {
            Some((_, msg)) => Err(msg),
            None => Ok(()),
        }
    }
}
