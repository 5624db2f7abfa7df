//! Softmax cross-entropy with label smoothing, loss and gradient in one pass.
//!
//! Per sample, with p = softmax(logits) and ε the smoothing:
//! loss = −(1 − ε) · log p[y] − (ε / K) · Σ_k log p[k] (PyTorch's
//! `CrossEntropyLoss(label_smoothing=ε)` and timm's `LabelSmoothingCrossEntropy`),
//! averaged over the batch; dlogits = (p − (1 − ε)·onehot(y) − ε/K) / B.

use super::Float;

/// Loss and accuracy of one batch.
#[derive(Clone, Copy, Debug, Default)]
pub struct LossStats {
    /// Mean loss over the batch.
    pub loss: f64,
    /// Number of samples whose arg-max logit is the label.
    pub correct: usize,
}

/// Mean loss over logits [B, K] and labels [B]; writes dlogits [B, K] when given.
/// Labels are validated by the data layer; an out-of-range label here is an engine bug.
pub fn cross_entropy<F: Float>(
    logits: &[F],
    labels: &[u32],
    classes: usize,
    smoothing: f64,
    mut dlogits: Option<&mut [F]>,
) -> LossStats {
    let batch = labels.len();
    assert_eq!(logits.len(), batch * classes, "cross_entropy: logits");
    let eps = F::of(smoothing);
    let inv_k = F::one() / F::of(classes as f64);
    let inv_b = F::one() / F::of(batch as f64);
    let mut total = 0.0f64;
    let mut correct = 0;
    for (b, (row, &y)) in logits.chunks_exact(classes).zip(labels).enumerate() {
        let y = y as usize;
        assert!(y < classes, "cross_entropy: label {y} >= {classes}");
        let (arg, max) =
            row.iter()
                .copied()
                .enumerate()
                .fold(
                    (0, F::neg_infinity()),
                    |a, (i, v)| if v > a.1 { (i, v) } else { a },
                );
        correct += usize::from(arg == y);
        // Through l − max only: log_z = max + lse would round away the precision of the
        // probabilities when the logits are large.
        let lse = row.iter().map(|&v| (v - max).exp()).sum::<F>().ln();
        let nll = (max - row[y]) + lse;
        let mean_nll = (max - row.iter().copied().sum::<F>() * inv_k) + lse;
        total += ((F::one() - eps) * nll + eps * mean_nll).to_f64();
        if let Some(d) = dlogits.as_deref_mut() {
            let d = &mut d[b * classes..(b + 1) * classes];
            for (k, (g, &v)) in d.iter_mut().zip(row).enumerate() {
                let target = if k == y {
                    F::one() - eps + eps * inv_k
                } else {
                    eps * inv_k
                };
                *g = (((v - max) - lse).exp() - target) * inv_b;
            }
        }
    }
    LossStats {
        loss: total / batch as f64,
        correct,
    }
}
