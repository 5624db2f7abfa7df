//! LayerNorm over the last dimension, eps 1e-6 (timm's ViT), biased variance as PyTorch.

use super::linear::REDUCE_ROWS;
use super::reduce::{sum_map, sum_map3};
use super::Float;
use rayon::prelude::*;

/// LayerNorm epsilon used by timm's VisionTransformer.
pub const LN_EPS: f64 = 1e-6;

/// out [R, D] = (x − mean) · rstd · weight + bias, saving mean [R] and rstd [R] for backward.
pub fn layernorm_forward<F: Float>(
    out: &mut [F],
    mean: &mut [F],
    rstd: &mut [F],
    x: &[F],
    weight: &[F],
    bias: &[F],
    dim: usize,
) {
    let rows = mean.len();
    assert_eq!(x.len(), rows * dim, "layernorm_forward: x");
    assert_eq!(out.len(), rows * dim, "layernorm_forward: out");
    assert_eq!(rstd.len(), rows, "layernorm_forward: rstd");
    assert!(
        weight.len() == dim && bias.len() == dim,
        "layernorm_forward: weight/bias"
    );
    let inv_d = F::one() / F::of(dim as f64);
    let eps = F::of(LN_EPS);
    out.par_chunks_mut(dim)
        .zip(x.par_chunks(dim))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .for_each(|((o, xr), (m, rs))| {
            // Two passes (mean, then centred squares) are accurate enough in f32 for D <= 4096.
            let mu = sum_map(xr, |v| v) * inv_d;
            let var = sum_map(xr, |v| (v - mu) * (v - mu)) * inv_d;
            let r = F::one() / (var + eps).sqrt();
            for ((o, &v), (&g, &b)) in o.iter_mut().zip(xr).zip(weight.iter().zip(bias)) {
                *o = (v - mu) * r * g + b;
            }
            *m = mu;
            *rs = r;
        });
}

/// Gradients of [`layernorm_forward`] given dout [R, D]. With x̂ = (x − mean)·rstd and
/// g = dout·weight: dx += rstd · (g − mean(g) − x̂ · mean(g·x̂)) (added: in a pre-LN block
/// dx is the residual stream's gradient), dweight += Σ_r dout·x̂, dbias += Σ_r dout.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<F: Float>(
    dx: &mut [F],
    dweight: &mut [F],
    dbias: &mut [F],
    dout: &[F],
    x: &[F],
    mean: &[F],
    rstd: &[F],
    weight: &[F],
    dim: usize,
) {
    let rows = mean.len();
    assert_eq!(dx.len(), rows * dim, "layernorm_backward: dx");
    assert_eq!(dout.len(), rows * dim, "layernorm_backward: dout");
    assert_eq!(x.len(), rows * dim, "layernorm_backward: x");
    assert_eq!(rstd.len(), rows, "layernorm_backward: rstd");
    assert!(
        dweight.len() == dim && dbias.len() == dim,
        "layernorm_backward: dweight/dbias"
    );
    let inv_d = F::one() / F::of(dim as f64);
    let block = REDUCE_ROWS * dim;
    // Each block of rows returns its partial dweight/dbias; they are summed in block order
    // afterwards so the result does not depend on the thread count.
    let partials: Vec<Vec<F>> = dx
        .par_chunks_mut(block)
        .zip(dout.par_chunks(block))
        .zip(x.par_chunks(block))
        .zip(
            mean.par_chunks(REDUCE_ROWS)
                .zip(rstd.par_chunks(REDUCE_ROWS)),
        )
        .map(|(((dxb, db), xb), (mb, rb))| {
            let mut p = vec![F::zero(); 2 * dim];
            let (pw, pb) = p.split_at_mut(dim);
            for ((((dxr, dor), xr), &mu), &r) in dxb
                .chunks_exact_mut(dim)
                .zip(db.chunks_exact(dim))
                .zip(xb.chunks_exact(dim))
                .zip(mb)
                .zip(rb)
            {
                // g = dout·weight, x̂ = (x − mean)·rstd
                let sum_g = sum_map3(dor, weight, xr, |d, w, _| d * w);
                let sum_gx = sum_map3(dor, weight, xr, |d, w, x| d * w * ((x - mu) * r));
                let mean_g = sum_g * inv_d;
                let mean_gx = sum_gx * inv_d;
                for i in 0..dim {
                    let xhat = (xr[i] - mu) * r;
                    pw[i] += dor[i] * xhat;
                    pb[i] += dor[i];
                    dxr[i] += r * (dor[i] * weight[i] - mean_g - xhat * mean_gx);
                }
            }
            p
        })
        .collect();
    for p in partials {
        let (pw, pb) = p.split_at(dim);
        for i in 0..dim {
            dweight[i] += pw[i];
            dbias[i] += pb[i];
        }
    }
}
