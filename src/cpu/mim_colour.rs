//! The ViT paper's masked patch prediction objective (Dosovitskiy et al. 2021, appendix B.1.2):
//! each corrupted patch is classified into its 3-bit mean colour, 512 classes.
//!
//! - [`mean_colour_targets`]: the class of every patch of a batch of normalised images.
//! - [`masked_cross_entropy`]: softmax cross-entropy over the masked rows only, loss and
//!   gradient in one pass (the rows of [`super::loss::cross_entropy`], averaged over the
//!   masked rows).
//!
//! Both are mirrored by kernels/mim_colour.cu (src/gpu/kernels/mim_colour.rs).

use super::loss::cross_entropy;
use super::Float;
use crate::model::ImageSize;
use rayon::prelude::*;

/// Bits per channel of a colour class.
pub const COLOUR_BITS: u32 = 3;
/// Levels per channel, 2^COLOUR_BITS.
pub const COLOUR_LEVELS: u32 = 1 << COLOUR_BITS;
/// Number of colour classes, COLOUR_LEVELS³ = 512.
pub const COLOUR_CLASSES: usize = (COLOUR_LEVELS * COLOUR_LEVELS * COLOUR_LEVELS) as usize;
/// Channels of the images the colour classes are defined on (RGB).
pub const COLOUR_CHANNELS: usize = 3;

/// The 3-bit level of one channel's mean in [0, 1]: min(max(⌊m·8⌋, 0), 7) computed in f32
/// (m·8 is exact, so a mean exactly at k/8 is level k; below 0 is 0, 1 and above is 7; NaN is 0).
/// The kernel computes the same expression.
#[inline]
pub fn colour_level(mean: f32) -> u32 {
    // f32::max/min return the other operand for a NaN, as fmaxf/fminf do in the kernel.
    let q = (mean * COLOUR_LEVELS as f32)
        .floor()
        .max(0.0)
        .min((COLOUR_LEVELS - 1) as f32);
    q as u32
}

/// Class r·64 + g·8 + b of the mean colour (r, g, b) ∈ [0, 1]³ (levels by [`colour_level`]).
#[inline]
pub fn colour_class(rgb: [f32; 3]) -> u32 {
    let [r, g, b] = rgb.map(colour_level);
    (r * COLOUR_LEVELS + g) * COLOUR_LEVELS + b
}

/// Overwrites classes [B, N] (u32, in 0..512) from images [B, 3, S_h, S_w] normalised with the
/// per-channel `mean` and `std` (x = (v − mean) / std): N = (S_h/P)·(S_w/P) patches in
/// row-major (py, px) order, as `patch_embed::im2col` orders them.
///
/// The rule, in f32 and in this order (the kernel does the same operations, without fused
/// multiply-adds, so both give the same class even for a mean exactly at a bin edge):
/// v = x·std[c] + mean[c] (product rounded, then sum rounded); s_c = Σ v over the patch's
/// pixels, rows top to bottom and each row left to right, from 0; m_c = s_c / (P·P);
/// class = [`colour_class`]\([m_r, m_g, m_b]\).
pub fn mean_colour_targets(
    classes: &mut [u32],
    images: &[f32],
    batch: usize,
    size: impl Into<ImageSize>,
    patch: usize,
    mean: [f32; 3],
    std: [f32; 3],
) {
    let size = size.into();
    let (h, w) = (size.height, size.width);
    assert!(
        patch > 0 && h.is_multiple_of(patch) && w.is_multiple_of(patch),
        "mean_colour_targets: image {size} not a multiple of patch {patch}"
    );
    // grid (rows, columns) = (gh, gw)
    let (gh, gw) = size.grid(patch);
    let n = gh * gw;
    let image = COLOUR_CHANNELS * h * w;
    assert_eq!(images.len(), batch * image, "mean_colour_targets: images");
    assert_eq!(classes.len(), batch * n, "mean_colour_targets: classes");
    let area = (patch * patch) as f32;
    classes.par_iter_mut().enumerate().for_each(|(row, out)| {
        let (b, p) = (row / n, row % n);
        let (py, px) = (p / gw, p % gw);
        let img = &images[b * image..(b + 1) * image];
        let mut rgb = [0.0f32; 3];
        for (c, m) in rgb.iter_mut().enumerate() {
            let mut s = 0.0f32;
            for ky in 0..patch {
                let start = c * h * w + (py * patch + ky) * w + px * patch;
                for &x in &img[start..start + patch] {
                    s += x * std[c] + mean[c];
                }
            }
            *m = s / area;
        }
        *out = colour_class(rgb);
    });
}

/// Loss and accuracy over the masked rows of one batch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MaskedLossStats {
    /// Mean loss over the masked rows (0 when none is masked).
    pub loss: f64,
    /// Masked rows whose first arg-max logit is the target.
    pub correct: usize,
    /// Number of masked rows.
    pub masked: usize,
}

/// Softmax cross-entropy with label smoothing ε (as [`cross_entropy`]) over the rows of
/// logits [R, K] whose `mask` [R] is non-zero, R = B·N rows, targets [R] (read on masked rows
/// only, each < K there): loss = mean over the M masked rows of the row's loss. When given,
/// dlogits [R, K] is overwritten: (softmax − (1 − ε)·onehot − ε/K) / M on masked rows, 0 on the
/// others. No masked row: loss 0, dlogits 0.
pub fn masked_cross_entropy<F: Float>(
    logits: &[F],
    targets: &[u32],
    mask: &[u8],
    classes: usize,
    smoothing: f64,
    dlogits: Option<&mut [F]>,
) -> MaskedLossStats {
    let rows = targets.len();
    assert_eq!(mask.len(), rows, "masked_cross_entropy: mask");
    assert_eq!(logits.len(), rows * classes, "masked_cross_entropy: logits");
    // The masked rows, in order, as a batch of their own: logits [M, K], targets [M].
    let picked: Vec<usize> = (0..rows).filter(|&r| mask[r] != 0).collect();
    let m = picked.len();
    let mut sub_logits = Vec::with_capacity(m * classes);
    for &r in &picked {
        sub_logits.extend_from_slice(&logits[r * classes..(r + 1) * classes]);
    }
    let sub_targets: Vec<u32> = picked.iter().map(|&r| targets[r]).collect();
    let Some(d) = dlogits else {
        if m == 0 {
            return MaskedLossStats::default();
        }
        let st = cross_entropy(&sub_logits, &sub_targets, classes, smoothing, None);
        return MaskedLossStats {
            loss: st.loss,
            correct: st.correct,
            masked: m,
        };
    };
    assert_eq!(d.len(), rows * classes, "masked_cross_entropy: dlogits");
    d.fill(F::zero());
    if m == 0 {
        return MaskedLossStats::default();
    }
    let mut sub_d = vec![F::zero(); m * classes];
    let st = cross_entropy(
        &sub_logits,
        &sub_targets,
        classes,
        smoothing,
        Some(&mut sub_d),
    );
    for (&r, g) in picked.iter().zip(sub_d.chunks_exact(classes)) {
        d[r * classes..(r + 1) * classes].copy_from_slice(g);
    }
    MaskedLossStats {
        loss: st.loss,
        correct: st.correct,
        masked: m,
    }
}
