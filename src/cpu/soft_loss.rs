//! Soft-target cross-entropy (timm's `SoftTargetCrossEntropy`, the loss of mixup/CutMix
//! training), loss and gradient in one pass.
//!
//! Per sample b, with logits z [K], soft targets t [K] and p = softmax(z):
//!   loss_b = −Σ_k t_k · log p_k = Σ_k t_k · ((m − z_k) + lse),
//!     m = max_k z_k, lse = log Σ_k exp(z_k − m);
//!   loss = mean_b loss_b;
//!   dloss/dz_k = (p_k · Σ_j t_j − t_k) / B.
//! The gradient is autograd's exact one (log_softmax's backward: g − p·Σg with g = −t/B);
//! for targets that sum to one (mixup's do, up to rounding) it is (p − t) / B.
//! Accuracy is counted against the dominant target: a row is correct when its first arg-max
//! logit is the first arg-max of its targets (for mixup, the class with the larger λ).

use super::Float;
use super::LossStats;

/// First index of the largest value (ties: the lowest index), `(index, value)`.
fn first_argmax<F: Float>(row: &[F]) -> (usize, F) {
    row.iter().copied().enumerate().fold(
        (0, F::neg_infinity()),
        |a, (i, v)| if v > a.1 { (i, v) } else { a },
    )
}

/// Mean loss over logits [B, K] and soft targets [B, K]; writes dlogits [B, K] when given.
/// Shapes are the engine's (it sizes every buffer from B and K): a mismatch is an engine bug.
pub fn soft_target_cross_entropy<F: Float>(
    logits: &[F],
    targets: &[F],
    classes: usize,
    mut dlogits: Option<&mut [F]>,
) -> LossStats {
    assert!(classes > 0, "soft_target_cross_entropy: no classes");
    assert_eq!(
        logits.len(),
        targets.len(),
        "soft_target_cross_entropy: targets"
    );
    assert_eq!(
        logits.len() % classes,
        0,
        "soft_target_cross_entropy: logits"
    );
    let batch = logits.len() / classes;
    let inv_b = F::one() / F::of(batch as f64);
    let mut total = 0.0f64;
    let mut correct = 0;
    for (b, (row, t)) in logits
        .chunks_exact(classes)
        .zip(targets.chunks_exact(classes))
        .enumerate()
    {
        let (arg, max) = first_argmax(row);
        correct += usize::from(arg == first_argmax(t).0);
        // Through z − m only, as the hard-label loss (src/cpu/loss.rs): no log Z = m + lse.
        let lse = row.iter().map(|&v| (v - max).exp()).sum::<F>().ln();
        let loss: F = row
            .iter()
            .zip(t)
            .map(|(&v, &tk)| tk * ((max - v) + lse))
            .sum();
        total += loss.to_f64();
        if let Some(d) = dlogits.as_deref_mut() {
            let t_sum: F = t.iter().copied().sum();
            let d = &mut d[b * classes..(b + 1) * classes];
            for ((g, &v), &tk) in d.iter_mut().zip(row).zip(t) {
                *g = (((v - max) - lse).exp() * t_sum - tk) * inv_b;
            }
        }
    }
    LossStats {
        loss: if batch == 0 {
            0.0
        } else {
            total / batch as f64
        },
        correct,
    }
}
