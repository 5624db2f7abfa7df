//! Sums written with eight independent partial sums. A plain `iter().sum()` is one chain of
//! dependent additions, which the compiler must keep in order and cannot vectorise; eight
//! lanes vectorise and still add in a fixed order (the same bits for any thread count).

use super::Float;

const LANES: usize = 8;

/// Σ f(a[i]) over a slice.
#[inline(always)]
pub fn sum_map<F: Float>(a: &[F], f: impl Fn(F) -> F) -> F {
    let mut acc = [F::zero(); LANES];
    let chunks = a.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += f(c[l]);
        }
    }
    fold(acc) + rest.iter().fold(F::zero(), |s, &v| s + f(v))
}

/// Σ f(a[i], b[i], c[i]) over three slices of equal length.
#[inline(always)]
pub fn sum_map3<F: Float>(a: &[F], b: &[F], c: &[F], f: impl Fn(F, F, F) -> F) -> F {
    let n = a.len().min(b.len()).min(c.len());
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let mut acc = [F::zero(); LANES];
    let (ca, cb, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let (ra, rb, rc) = (ca.remainder(), cb.remainder(), cc.remainder());
    for ((x, y), z) in ca.zip(cb).zip(cc) {
        for l in 0..LANES {
            acc[l] += f(x[l], y[l], z[l]);
        }
    }
    let tail = ra
        .iter()
        .zip(rb)
        .zip(rc)
        .fold(F::zero(), |s, ((&x, &y), &z)| s + f(x, y, z));
    fold(acc) + tail
}

#[inline(always)]
fn fold<F: Float>(acc: [F; LANES]) -> F {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_match_plain_sums_for_every_length() {
        for n in 0..40 {
            let a: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
            let b: Vec<f64> = (0..n).map(|i| (i as f64 * 0.11).cos()).collect();
            let plain: f64 = a.iter().map(|v| v * v).sum();
            assert!((sum_map(&a, |v| v * v) - plain).abs() < 1e-12, "n = {n}");
            let plain3: f64 = a.iter().zip(&b).map(|(x, y)| x * y * 2.0).sum();
            assert!(
                (sum_map3(&a, &b, &a, |x, y, _| x * y * 2.0) - plain3).abs() < 1e-12,
                "n = {n}"
            );
        }
    }
}
