//! Helpers shared by the integration tests: random inputs, finite differences and norm-wise
//! comparisons that never let a NaN pass.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};

/// Deterministic values in [-1, 1) from `seed`, scaled.
pub fn rand_vec(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| (rng.random::<f64>() * 2.0 - 1.0) * scale)
        .collect()
}

/// ‖a − b‖ / ‖b‖ (or ‖a − b‖ when b is zero); NaN if either holds a NaN.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "rel_err: lengths");
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    if a.iter().chain(b).any(|v| !v.is_finite()) {
        return f64::NAN;
    }
    if norm == 0.0 {
        diff
    } else {
        diff / norm
    }
}

/// Asserts ‖actual − expected‖ / ‖expected‖ ≤ tol; a NaN always fails.
pub fn assert_close(name: &str, actual: &[f64], expected: &[f64], tol: f64) {
    let e = rel_err(actual, expected);
    assert!(e <= tol, "{name}: relative error {e:e} > {tol:e}");
}

/// Central finite differences of `f` at `x`, one coordinate at a time.
pub fn fd_grad(x: &[f64], h: f64, mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = xp[i];
            xp[i] = orig + h;
            let up = f(&xp);
            xp[i] = orig - h;
            let down = f(&xp);
            xp[i] = orig;
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// Σ a ⊙ b: a scalar loss whose gradient with respect to `a` is `b`.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Step for central differences in f64: truncation error O(h²) and rounding O(ε/h) both
/// stay far below the 1e-6 relative tolerance.
pub const FD_STEP: f64 = 1e-5;

/// The relative tolerance of every f64 gradient check.
pub const GRAD_TOL: f64 = 1e-6;
