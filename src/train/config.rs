//! Everything that defines a training run; saved as config.json in the run directory so a
//! run can be resumed and reproduced.

use super::schedule::ScheduleKind;
use crate::data::fingerprint::Fingerprint;
use crate::model::{DimNames, ModelConfig};
use crate::optim::{AdamWConfig, FineTuning};
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
    /// Layer-wise learning-rate decay R in (0, 1] (`--layer-decay`; None: off; absent in
    /// configs of older vitk).
    #[serde(default)]
    pub layer_decay: Option<f64>,
    /// Only the head and its norm train (`--freeze-backbone`; absent in older configs).
    #[serde(default)]
    pub freeze_backbone: bool,
    /// The pretrained weights the run started from (--init-from), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<InitFrom>,
    /// Automatic augmentation policy after crop/flip (`--auto-augment`; absent in older
    /// configs: none).
    #[serde(default)]
    pub auto_augment: crate::data::AutoAugment,
    /// Random erasing probability (`--reprob`; absent in older configs: 0, off).
    #[serde(default)]
    pub reprob: f32,
    /// Copies of each image per epoch (`--aug-repeats`; absent in older configs: 1, off).
    #[serde(default = "one")]
    pub aug_repeats: usize,
    /// Mixup's Beta parameter (`--mixup`; absent in older configs: 0, off).
    #[serde(default)]
    pub mixup: f64,
    /// CutMix's Beta parameter (`--cutmix`; absent in older configs: 0, off).
    #[serde(default)]
    pub cutmix: f64,
    /// Probability of CutMix when both are on (`--mixup-switch-prob`; default 0.5).
    #[serde(default = "half")]
    pub mixup_switch_prob: f64,
    /// Mixing stops from this epoch on (`--mixup-off-epoch`, timm's; None: never).
    #[serde(default)]
    pub mixup_off_epoch: Option<usize>,
    /// Decay of the weights' EMA (`--ema-decay`; None: off, as in older configs).
    #[serde(default)]
    pub ema_decay: Option<f64>,
    /// The named recipe the run started from (`--recipe`) and the flags it filled in (the
    /// values are in the fields above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<RecipeUsed>,
    /// Stochastic depth rate of the last block (`--drop-path`; timm's linspace over the
    /// blocks; absent in older configs: 0, off).
    #[serde(default)]
    pub drop_path: f64,
    /// Set for a pre-training run (`vitk pretrain`): its objective and masks. Such a run
    /// has no labels and no head; `label_smoothing` plays no part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain: Option<crate::pretrain::PretrainConfig>,
}

/// The recipe of a run: its name and the flags it filled (those the user did not give).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecipeUsed {
    pub name: String,
    pub filled: Vec<String>,
}

/// Pretrained weights a run started from, and how they were adapted to the model (one line
/// per kind: tensors loaded, pos_embed resampled, head re-initialised, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InitFrom {
    /// Absolute path of the checkpoint.
    pub path: PathBuf,
    pub notes: Vec<String>,
}

/// The flags of `vitk train` that set each model dimension (`in_chans` and `num_classes`
/// come from the data).
pub const MODEL_FLAGS: DimNames = DimNames {
    image_size: "--image-size",
    patch_size: "--patch-size",
    in_chans: "channels of the data",
    num_classes: "classes of the data",
    embed_dim: "--embed-dim",
    depth: "--depth",
    num_heads: "--num-heads",
    mlp_dim: "--mlp-dim",
};

/// Most copies of an image per epoch `--aug-repeats` may ask for.
pub const MAX_AUG_REPEATS: usize = 64;
/// Most epochs a run may have (a bound that keeps step counts far from overflow).
pub const MAX_EPOCHS: usize = 1_000_000;
/// Normalisation: a mean of inputs in [0, 1] lies in [0, 1]; a std below this would blow
/// inputs up past 1000.
pub const MIN_STD: f32 = 1e-3;

/// `value` in `range`, else an error naming `flag`, the value and the range (`shown`).
fn within(flag: &str, value: f64, ok: bool, shown: &str) -> Result<(), String> {
    if ok && !value.is_nan() {
        Ok(())
    } else {
        Err(format!("{flag} {value} is out of range: expected {shown}"))
    }
}

fn one() -> usize {
    1
}

fn half() -> f64 {
    0.5
}

impl TrainConfig {
    /// What the training loader adds to crop/flip.
    pub fn augment_recipe(&self) -> crate::data::AugmentRecipe {
        crate::data::AugmentRecipe {
            auto_augment: self.auto_augment,
            reprob: self.reprob,
            aug_repeats: self.aug_repeats,
        }
    }

    /// Mixup/CutMix of the training batches (None: off), label smoothing folded into the
    /// targets as timm does.
    pub fn mixup_config(&self) -> Option<crate::data::mixup::MixupConfig> {
        let m = crate::data::mixup::MixupConfig {
            mixup_alpha: self.mixup,
            cutmix_alpha: self.cutmix,
            switch_prob: self.mixup_switch_prob,
            label_smoothing: self.label_smoothing,
        };
        m.is_active().then_some(m)
    }

    /// Whether the batches of `epoch` are mixed (timm's `mixup_off_epoch`: from that epoch
    /// on, the targets stay soft but nothing is mixed).
    pub fn mixes_epoch(&self, epoch: usize) -> bool {
        self.mixup_off_epoch.is_none_or(|off| epoch < off)
    }

    /// The EMA of the weights (None: off): timm's `ModelEmaV3` with warm-up.
    pub fn ema_config(&self) -> Option<crate::optim::EmaConfig> {
        self.ema_decay.map(crate::optim::EmaConfig::with_warmup)
    }

    /// The per-channel normalisation of the inputs.
    pub fn normalize(&self) -> crate::data::Normalize {
        crate::data::Normalize {
            mean: self.mean,
            std: self.std,
        }
    }

    /// The run's stochastic depth for the engines (`None`: off).
    pub fn drop_path(&self) -> Option<crate::model::drop_path::DropPath> {
        (self.drop_path > 0.0).then_some(crate::model::drop_path::DropPath {
            rate: self.drop_path,
            seed: self.seed,
        })
    }

    /// Which tensors train, at which rate (the engines' [`FineTuning`]).
    pub fn tuning(&self) -> FineTuning {
        FineTuning {
            layer_decay: self.layer_decay,
            freeze_backbone: self.freeze_backbone,
        }
    }

    /// Checks every value against its range (data-independent); the message names the flag,
    /// the value and the range expected. Run for new runs and for a resumed config.json.
    pub fn validate(&self) -> Result<(), String> {
        self.model
            .check(&MODEL_FLAGS)
            .map_err(|e| e.0.to_string())?;
        if !(1..=MAX_EPOCHS).contains(&self.epochs) {
            return Err(format!(
                "--epochs {} is out of range: expected 1..={MAX_EPOCHS}",
                self.epochs
            ));
        }
        if self.batch_size == 0 {
            return Err("--batch-size 0 is out of range: expected at least 1".into());
        }
        let finite = |v: f64| v.is_finite();
        within(
            "--lr",
            self.lr,
            finite(self.lr) && self.lr > 0.0,
            "a finite number > 0",
        )?;
        within(
            "--min-lr",
            self.min_lr,
            (0.0..=self.lr).contains(&self.min_lr),
            &format!("[0, --lr = {}]", self.lr),
        )?;
        within(
            "--warmup-epochs",
            self.warmup_epochs,
            (0.0..=self.epochs as f64).contains(&self.warmup_epochs),
            &format!("[0, --epochs = {}]", self.epochs),
        )?;
        let wd = self.adamw.weight_decay;
        within(
            "--weight-decay",
            wd,
            finite(wd) && wd >= 0.0,
            "a finite number >= 0",
        )?;
        // beta = 1 leaves AdamW's bias correction 1 - beta^t at 0 (NaN from the first step).
        for (flag, beta) in [("--beta1", self.adamw.beta1), ("--beta2", self.adamw.beta2)] {
            within(flag, beta, (0.0..1.0).contains(&beta), "[0, 1)")?;
        }
        within(
            "--label-smoothing",
            self.label_smoothing,
            (0.0..1.0).contains(&self.label_smoothing),
            "[0, 1)",
        )?;
        if let Some(c) = self.clip_grad {
            within(
                "--clip-grad",
                c,
                finite(c) && c > 0.0,
                "a finite number > 0",
            )?;
        }
        let shown = |v: &[f32; 3]| v.map(|x| x.to_string()).join(",");
        for (c, (&m, &s)) in self.mean.iter().zip(&self.std).enumerate() {
            if !(0.0..=1.0).contains(&m) {
                return Err(format!(
                    "--mean {}: channel {c} is {m}, expected [0, 1] (a mean of inputs scaled to [0, 1])",
                    shown(&self.mean)
                ));
            }
            if !(MIN_STD..=1.0).contains(&s) {
                return Err(format!(
                    "--std {}: channel {c} is {s}, expected [{MIN_STD}, 1]",
                    shown(&self.std)
                ));
            }
        }
        if let Some(r) = self.layer_decay {
            within("--layer-decay", r, r > 0.0 && r <= 1.0, "(0, 1]")?;
        }
        if let Some(p) = &self.pretrain {
            p.validate()?;
        }
        within(
            "--reprob",
            self.reprob as f64,
            (0.0..=1.0).contains(&self.reprob),
            "[0, 1]",
        )?;
        within(
            "--drop-path",
            self.drop_path,
            (0.0..1.0).contains(&self.drop_path),
            "[0, 1)",
        )?;
        if !(1..=MAX_AUG_REPEATS).contains(&self.aug_repeats) {
            return Err(format!(
                "--aug-repeats {} is out of range: expected 1..={MAX_AUG_REPEATS} (1 is off)",
                self.aug_repeats
            ));
        }
        for (flag, a) in [("--mixup", self.mixup), ("--cutmix", self.cutmix)] {
            within(
                flag,
                a,
                finite(a) && a >= 0.0,
                "a finite number >= 0 (0 is off)",
            )?;
        }
        within(
            "--mixup-switch-prob",
            self.mixup_switch_prob,
            (0.0..=1.0).contains(&self.mixup_switch_prob),
            "[0, 1]",
        )?;
        if let Some(e) = self.mixup_off_epoch {
            if !(1..=MAX_EPOCHS).contains(&e) {
                return Err(format!(
                    "--mixup-off-epoch {e} is out of range: expected 1..={MAX_EPOCHS}"
                ));
            }
        }
        // timm mixes each sample with its mirror in the batch: an odd batch leaves one unmixed.
        if self.mixup_config().is_some() && self.batch_size % 2 == 1 {
            return Err(format!(
                "--batch-size {} with --mixup/--cutmix: expected an even batch size (each image is mixed with its mirror in the batch)",
                self.batch_size
            ));
        }
        if let Some(d) = self.ema_decay {
            within("--ema-decay", d, d > 0.0 && d < 1.0, "(0, 1)")?;
        }
        let eps = self.adamw.eps;
        within(
            "eps",
            eps,
            eps.is_finite() && eps > 0.0,
            "a finite number > 0",
        )?;
        Ok(())
    }
}
