//! Stochastic depth on a residual branch (timm's `drop_path` with `scale_by_keep=True`),
//! forward and backward side by side.
//!
//! A block adds a branch f (attention or MLP output) to the residual stream x, both [B, T, D].
//! With drop rate p, each sample b keeps the branch with probability 1 − p and a kept branch
//! is scaled by 1/(1 − p), so that E[y] = x + f:
//!   forward:  y[b] = x[b] + s_b · f[b],   s_b = keep_b / (1 − p)  (0 for a dropped sample)
//!   backward: df[b] = s_b · dy[b]          (dx = dy: the residual passes the gradient through)
//! The keep flags come from [`crate::model::drop_path`] (one stream per step, block and
//! branch), so the CPU and device engines drop the same samples.

use super::Float;
use crate::model::drop_path::StepDrops;
use rayon::prelude::*;

/// Per-sample scales s [B] from keep flags [B] at drop rate `rate`: 1/(1 − p) for a kept
/// sample, 0 for a dropped one (timm divides the 0/1 mask by keep_prob = 1 − p in the
/// tensor's precision). `rate` must be below 1; at 0 every sample is kept at scale 1.
pub fn drop_path_scales<F: Float>(keep: &[bool], rate: f64) -> Vec<F> {
    let scale = F::one() / F::of(1.0 - rate);
    keep.iter()
        .map(|&k| if k { scale } else { F::zero() })
        .collect()
}

/// Scales of a step's flags: per block, those of its [attention, MLP] branches [B] (`None`
/// for a block of rate 0, whose residual adds stay fused).
pub fn step_scales<F: Float>(drops: &StepDrops) -> Vec<Option<[Vec<F>; 2]>> {
    drops
        .keep
        .iter()
        .zip(&drops.rates)
        .map(|(keep, &rate)| {
            (rate > 0.0).then(|| keep.each_ref().map(|k| drop_path_scales(k, rate)))
        })
        .collect()
}

/// Forward, in place on the residual stream: x [B, T·D] += s_b · branch [B, T·D], with
/// scales s [B] (timm's `x + drop_path(f)`).
pub fn drop_path_add<F: Float>(x: &mut [F], branch: &[F], scales: &[F]) {
    let per_sample = per_sample(x.len(), branch.len(), scales.len());
    x.par_chunks_mut(per_sample)
        .zip(branch.par_chunks(per_sample))
        .zip(scales.par_iter())
        .for_each(|((x, f), &s)| {
            for (x, &f) in x.iter_mut().zip(f) {
                *x += s * f;
            }
        });
}

/// Backward of the branch: dbranch [B, T·D] = s_b · dy [B, T·D] (overwritten).
pub fn drop_path_backward<F: Float>(dbranch: &mut [F], dy: &[F], scales: &[F]) {
    let per_sample = per_sample(dbranch.len(), dy.len(), scales.len());
    dbranch
        .par_chunks_mut(per_sample)
        .zip(dy.par_chunks(per_sample))
        .zip(scales.par_iter())
        .for_each(|((d, g), &s)| {
            for (d, &g) in d.iter_mut().zip(g) {
                *d = s * g;
            }
        });
}

/// T·D from the buffer sizes; the engine sizes them, so a mismatch is an engine bug.
fn per_sample(a: usize, b: usize, batch: usize) -> usize {
    assert!(
        a == b && batch > 0 && a.is_multiple_of(batch) && a > 0,
        "drop_path: {a} and {b} values for a batch of {batch}"
    );
    a / batch
}
