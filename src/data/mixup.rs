//! Mixup and CutMix on a batch, with timm's `Mixup` semantics in batch mode (`prob` 1,
//! `cutmix_minmax` None, `correct_lam` True); the definitions, written from timm's
//! `timm/data/mixup.py`:
//!
//! - Per batch, one draw: with both alphas > 0, CutMix with probability `switch_prob`
//!   (λ ~ Beta(cutmix_alpha, cutmix_alpha)), Mixup otherwise (λ ~ Beta(mixup_alpha,
//!   mixup_alpha)); with one alpha > 0, that one always; with none, no mixing (λ = 1). A λ of
//!   exactly 1 mixes nothing.
//! - Every sample b is mixed with its partner B − 1 − b (timm's `x.flip(0)`; with an odd B the
//!   middle sample is its own partner and stays as it was):
//!   - Mixup:  x'_b = λ·x_b + (1 − λ)·x_{B−1−b}, in f32 with λ and 1 − λ rounded to f32, as
//!     torch's `x.mul_(lam).add_(x.flip(0).mul_(1 - lam))`;
//!   - CutMix: one box for the batch (timm's `rand_bbox`): cut ratio r = √(1 − λ), cut sides
//!     (⌊S_h·r⌋, ⌊S_w·r⌋), centre (cy, cx) uniform over the pixels, rows
//!     [clip(cy − ⌊cut_h/2⌋), clip(cy + ⌊cut_h/2⌋)) and the same for columns, each end clipped to
//!     the image; inside the box x'_b takes x_{B−1−b}'s pixels (every channel), outside it is
//!     unchanged; then λ is corrected to the box's actual area: λ = 1 − area / (S_h·S_w).
//! - Targets [B, K] (timm's `mixup_target`): with smoothing s, onehot_s(y) puts 1 − s + s/K on
//!   class y and s/K elsewhere, and t_b = λ·onehot_s(y_b) + (1 − λ)·onehot_s(y_{B−1−b}), in f32.
//!   Each row sums to 1 (up to rounding).
//!
//! The draw comes from one stream keyed [seed, TAG_MIXUP, epoch, batch index], so a batch mixes
//! the same way whichever thread or run computes it (resume is bitwise). The random draws are
//! not numpy's: the semantics are timm's, the numbers are this stream's.

use super::error::DataError;
use super::rng::{Rng64, TAG_MIXUP};
use crate::model::ImageSize;
use rand::Rng;
use rand_distr::{Beta, Distribution};

/// timm's `Mixup` arguments (batch mode, prob 1, no cutmix_minmax, correct_lam).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MixupConfig {
    /// Beta parameter of Mixup's λ (`--mixup`, timm's `mixup_alpha`); 0 turns Mixup off.
    pub mixup_alpha: f64,
    /// Beta parameter of CutMix's λ (`--cutmix`); 0 turns CutMix off.
    pub cutmix_alpha: f64,
    /// Probability of CutMix when both are on (`--mixup-switch-prob`).
    pub switch_prob: f64,
    /// Label smoothing s folded into the targets.
    pub label_smoothing: f64,
}

impl MixupConfig {
    /// Refuses what timm would fail on or silently misuse: negative or non-finite alphas, a
    /// switch probability or smoothing outside [0, 1].
    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |what: &str, v: f64, want: &str| {
            Err(DataError::invalid(
                "mixup",
                format!("{what} {v} (expected {want})"),
            ))
        };
        for (what, v) in [
            ("mixup alpha", self.mixup_alpha),
            ("cutmix alpha", self.cutmix_alpha),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(what, v, "a finite value >= 0");
            }
        }
        for (what, v) in [
            ("switch probability", self.switch_prob),
            ("label smoothing", self.label_smoothing),
        ] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return bad(what, v, "a value in [0, 1]");
            }
        }
        Ok(())
    }

    /// Whether any mixing happens (an alpha above 0).
    pub fn is_active(&self) -> bool {
        self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0
    }

    /// The mix of batch `batch_index` of epoch `epoch` for images of `size` (timm's
    /// `_params_per_batch`, then `cutmix_bbox_and_lam` for CutMix). A config that does not
    /// [`validate`](Self::validate) mixes nothing.
    pub fn draw(&self, seed: u64, epoch: u64, batch_index: u64, size: ImageSize) -> Mix {
        if self.validate().is_err() || !self.is_active() || size.pixels() == 0 {
            return Mix::None;
        }
        let mut rng = Rng64::from_key(&[seed, TAG_MIXUP, epoch, batch_index]);
        let use_cutmix = if self.mixup_alpha > 0.0 && self.cutmix_alpha > 0.0 {
            rng.random::<f64>() < self.switch_prob
        } else {
            self.cutmix_alpha > 0.0
        };
        let alpha = if use_cutmix {
            self.cutmix_alpha
        } else {
            self.mixup_alpha
        };
        let lam = match Beta::new(alpha, alpha) {
            Ok(beta) => beta.sample(&mut rng),
            Err(_) => return Mix::None, // alpha > 0 and finite: unreachable
        };
        if lam == 1.0 {
            return Mix::None;
        }
        if !use_cutmix {
            return Mix::Blend { lam };
        }
        let bbox = CutBox::draw(&mut rng, size, lam);
        let area = (bbox.rows.len() * bbox.cols.len()) as f64;
        Mix::Cut {
            lam: 1.0 - area / size.pixels() as f64,
            bbox,
        }
    }
}

/// The rectangle CutMix pastes: rows `rows`, columns `cols` (each possibly empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutBox {
    pub rows: std::ops::Range<usize>,
    pub cols: std::ops::Range<usize>,
}

impl CutBox {
    /// timm's `rand_bbox` (margin 0): sides ⌊S·√(1 − λ)⌋, centre uniform, ends clipped.
    fn draw(rng: &mut Rng64, size: ImageSize, lam: f64) -> CutBox {
        let ratio = (1.0 - lam).sqrt();
        let cut_h = (size.height as f64 * ratio) as usize;
        let cut_w = (size.width as f64 * ratio) as usize;
        let cy = rng.below(size.height as u64) as usize;
        let cx = rng.below(size.width as u64) as usize;
        let span = |c: usize, cut: usize, side: usize| {
            c.saturating_sub(cut / 2).min(side)..(c + cut / 2).min(side)
        };
        CutBox {
            rows: span(cy, cut_h, size.height),
            cols: span(cx, cut_w, size.width),
        }
    }
}

/// How one batch is mixed.
#[derive(Clone, Debug, PartialEq)]
pub enum Mix {
    /// Unchanged images, targets onehot_s(y) (λ = 1).
    None,
    /// Mixup with weight λ on each sample's own image.
    Blend { lam: f64 },
    /// CutMix: the partner's pixels in `bbox`; λ is the area left outside the box.
    Cut { lam: f64, bbox: CutBox },
}

impl Mix {
    /// λ: the weight of each sample's own label in its targets.
    pub fn lam(&self) -> f64 {
        match self {
            Mix::None => 1.0,
            Mix::Blend { lam } | Mix::Cut { lam, .. } => *lam,
        }
    }

    /// Mixes images [B, C, S_h, S_w] (normalised) in place, each with its partner B − 1 − b.
    /// Sizes come from the loader's batch: a mismatch is a caller bug.
    pub fn apply(&self, images: &mut [f32], batch: usize, channels: usize, size: ImageSize) {
        let plane = size.pixels();
        let per_image = channels * plane;
        assert_eq!(images.len(), batch * per_image, "Mix::apply: image buffer");
        for b in 0..batch / 2 {
            let partner = batch - 1 - b;
            let (head, tail) = images.split_at_mut(partner * per_image);
            let x = &mut head[b * per_image..(b + 1) * per_image];
            let y = &mut tail[..per_image];
            match self {
                Mix::None => {}
                Mix::Blend { lam } => {
                    let (l, m) = (*lam as f32, (1.0 - lam) as f32);
                    for (a, c) in x.iter_mut().zip(y.iter_mut()) {
                        let (xa, xc) = (*a, *c);
                        *a = xa * l + xc * m;
                        *c = xc * l + xa * m;
                    }
                }
                Mix::Cut { bbox, .. } => {
                    for ch in 0..channels {
                        for r in bbox.rows.clone() {
                            let row = ch * plane + r * size.width;
                            let span = row + bbox.cols.start..row + bbox.cols.end;
                            x[span.clone()].swap_with_slice(&mut y[span]);
                        }
                    }
                }
            }
        }
        // Odd B: the middle sample's partner is itself. Mixup gives x·λ + x·(1 − λ) in f32 (as
        // torch computes it, not always x bit for bit); CutMix pastes x onto itself.
        if batch % 2 == 1 {
            if let Mix::Blend { lam } = self {
                let (l, m) = (*lam as f32, (1.0 - lam) as f32);
                let mid = batch / 2;
                for a in &mut images[mid * per_image..(mid + 1) * per_image] {
                    *a = *a * l + *a * m;
                }
            }
        }
    }
}

/// Soft targets [B, K] for labels [B] (timm's `mixup_target`): λ·onehot_s(y_b) +
/// (1 − λ)·onehot_s(y_{B−1−b}) with smoothing s. Labels are validated by the data layer
/// (below K); an out-of-range label here is a caller bug.
pub fn mixup_targets(labels: &[u32], classes: usize, lam: f64, smoothing: f64) -> Vec<f32> {
    let off = smoothing / classes as f64;
    let (on, off) = ((1.0 - smoothing + off) as f32, off as f32);
    let (l, m) = (lam as f32, (1.0 - lam) as f32);
    let batch = labels.len();
    let mut out = vec![0.0f32; batch * classes];
    for (b, row) in out.chunks_exact_mut(classes).enumerate() {
        let (own, partner) = (labels[b] as usize, labels[batch - 1 - b] as usize);
        assert!(own < classes && partner < classes, "mixup_targets: label");
        for (k, t) in row.iter_mut().enumerate() {
            let y1 = if k == own { on } else { off };
            let y2 = if k == partner { on } else { off };
            *t = y1 * l + y2 * m;
        }
    }
    out
}

/// Mixes one batch: draws its [`Mix`], applies it to `images` [B, C, S_h, S_w] and returns the
/// soft targets [B, K] (with smoothing folded in) and the mix.
#[allow(clippy::too_many_arguments)]
pub fn mix_batch(
    cfg: &MixupConfig,
    seed: u64,
    epoch: u64,
    batch_index: u64,
    images: &mut [f32],
    labels: &[u32],
    channels: usize,
    size: ImageSize,
    classes: usize,
) -> (Vec<f32>, Mix) {
    let mix = cfg.draw(seed, epoch, batch_index, size);
    mix.apply(images, labels.len(), channels, size);
    let targets = mixup_targets(labels, classes, mix.lam(), cfg.label_smoothing);
    (targets, mix)
}
