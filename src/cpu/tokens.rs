//! Token assembly: [cls] + patch embeddings + learnable positional embeddings.
//!
//! cls pooling: x[b, 0] = cls + pos[0], x[b, 1 + n] = patch[b, n] + pos[1 + n] (T = N + 1).
//! mean pooling: no cls token, x[b, n] = patch[b, n] + pos[n] (T = N).

use super::Float;
use rayon::prelude::*;

/// x [B, T, D] from patch embeddings [B, N, D], pos [T, D] and the optional cls [D].
pub fn tokens_forward<F: Float>(
    x: &mut [F],
    patch: &[F],
    pos: &[F],
    cls: Option<&[F]>,
    dim: usize,
) {
    let t = pos.len() / dim;
    let prefix = usize::from(cls.is_some());
    let n = t - prefix;
    assert_eq!(x.len() % (t * dim), 0, "tokens_forward: x");
    let batch = x.len() / (t * dim);
    assert_eq!(patch.len(), batch * n * dim, "tokens_forward: patch");
    x.par_chunks_mut(t * dim)
        .zip(patch.par_chunks(n * dim))
        .for_each(|(xb, pb)| {
            if let Some(cls) = cls {
                for ((o, &c), &p) in xb[..dim].iter_mut().zip(cls).zip(&pos[..dim]) {
                    *o = c + p;
                }
            }
            let rest = &mut xb[prefix * dim..];
            for ((o, &e), &p) in rest.iter_mut().zip(pb).zip(&pos[prefix * dim..]) {
                *o = e + p;
            }
        });
}

/// Gradients of [`tokens_forward`] given dx [B, T, D]: dpatch [B, N, D] (overwritten),
/// dpos [T, D] += Σ_b dx[b], dcls [D] += Σ_b dx[b, 0].
pub fn tokens_backward<F: Float>(
    dpatch: &mut [F],
    dpos: &mut [F],
    dcls: Option<&mut [F]>,
    dx: &[F],
    dim: usize,
) {
    let t = dpos.len() / dim;
    let prefix = usize::from(dcls.is_some());
    let n = t - prefix;
    let batch = dx.len() / (t * dim);
    assert_eq!(dx.len(), batch * t * dim, "tokens_backward: dx");
    assert_eq!(dpatch.len(), batch * n * dim, "tokens_backward: dpatch");
    dpatch
        .par_chunks_mut(n * dim)
        .zip(dx.par_chunks(t * dim))
        .for_each(|(dp, dxb)| {
            dp.copy_from_slice(&dxb[prefix * dim..]);
        });
    // Σ over the batch, one token row per task: deterministic, no shared accumulators.
    dpos.par_chunks_mut(dim).enumerate().for_each(|(tok, dp)| {
        for b in 0..batch {
            let row = &dx[(b * t + tok) * dim..(b * t + tok + 1) * dim];
            for (a, &g) in dp.iter_mut().zip(row) {
                *a += g;
            }
        }
    });
    if let Some(dcls) = dcls {
        for b in 0..batch {
            for (a, &g) in dcls.iter_mut().zip(&dx[b * t * dim..b * t * dim + dim]) {
                *a += g;
            }
        }
    }
}
