//! Pooling of the token sequence into one vector per image.
//!
//! cls: pooled[b] = x[b, 0] (timm then applies `norm`, which is per token, so normalising
//! only token 0 is the same computation). mean: pooled[b] = (1/T) Σ_t x[b, t] (timm's
//! `global_pool='avg'`, followed by `fc_norm`).

use super::Float;
use crate::model::Pool;
use rayon::prelude::*;

/// pooled [B, D] from x [B, T, D].
pub fn pool_forward<F: Float>(pooled: &mut [F], x: &[F], tokens: usize, dim: usize, pool: Pool) {
    assert_eq!(
        x.len() / (tokens * dim),
        pooled.len() / dim,
        "pool_forward: batch"
    );
    let inv_t = F::one() / F::of(tokens as f64);
    pooled
        .par_chunks_mut(dim)
        .zip(x.par_chunks(tokens * dim))
        .for_each(|(p, xb)| match pool {
            Pool::Cls => p.copy_from_slice(&xb[..dim]),
            Pool::Mean => {
                p.fill(F::zero());
                for row in xb.chunks_exact(dim) {
                    for (a, &v) in p.iter_mut().zip(row) {
                        *a += v;
                    }
                }
                for a in p.iter_mut() {
                    *a *= inv_t;
                }
            }
        });
}

/// dx [B, T, D] (overwritten) from dpooled [B, D].
pub fn pool_backward<F: Float>(dx: &mut [F], dpooled: &[F], tokens: usize, dim: usize, pool: Pool) {
    assert_eq!(
        dx.len() / (tokens * dim),
        dpooled.len() / dim,
        "pool_backward: batch"
    );
    let inv_t = F::one() / F::of(tokens as f64);
    dx.par_chunks_mut(tokens * dim)
        .zip(dpooled.par_chunks(dim))
        .for_each(|(dxb, g)| match pool {
            Pool::Cls => {
                dxb.fill(F::zero());
                dxb[..dim].copy_from_slice(g);
            }
            Pool::Mean => {
                for row in dxb.chunks_exact_mut(dim) {
                    for (d, &v) in row.iter_mut().zip(g) {
                        *d = v * inv_t;
                    }
                }
            }
        });
}
