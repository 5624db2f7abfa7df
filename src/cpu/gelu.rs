//! Exact GELU: gelu(x) = x · Φ(x) = 0.5 · x · (1 + erf(x / √2)) (timm's nn.GELU default).

use super::Float;
use rayon::prelude::*;

/// Elements per parallel task for elementwise ops.
const CHUNK: usize = 1 << 14;

/// out = gelu(x), elementwise.
pub fn gelu_forward<F: Float>(out: &mut [F], x: &[F]) {
    assert_eq!(out.len(), x.len(), "gelu_forward");
    let half = F::of(0.5);
    let inv_sqrt2 = F::of(std::f64::consts::FRAC_1_SQRT_2);
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            for (o, &v) in o.iter_mut().zip(x) {
                *o = half * v * (F::one() + (v * inv_sqrt2).erf());
            }
        });
}

/// dx = dout · gelu'(x), with gelu'(x) = Φ(x) + x · φ(x) (overwrites dx).
pub fn gelu_backward<F: Float>(dx: &mut [F], dout: &[F], x: &[F]) {
    assert!(
        dx.len() == x.len() && dout.len() == x.len(),
        "gelu_backward"
    );
    let half = F::of(0.5);
    let inv_sqrt2 = F::of(std::f64::consts::FRAC_1_SQRT_2);
    let inv_sqrt_2pi =
        F::of(0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2);
    dx.par_chunks_mut(CHUNK)
        .zip(dout.par_chunks(CHUNK).zip(x.par_chunks(CHUNK)))
        .for_each(|(dx, (dout, x))| {
            for ((d, &g), &v) in dx.iter_mut().zip(dout).zip(x) {
                let cdf = half * (F::one() + (v * inv_sqrt2).erf());
                let pdf = (-half * v * v).exp_neg() * inv_sqrt_2pi;
                *d = g * (cdf + v * pdf);
            }
        });
}
