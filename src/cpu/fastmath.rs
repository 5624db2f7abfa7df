//! Branch-free f32 approximations of exp and erf that the compiler can vectorise (the libm
//! calls cannot be), used by the f32 engine's GELU and softmax. The f64 engine, which serves
//! the gradient checks, uses libm.

/// e^x for x ≤ 0 (inputs below −87 return ≈ 0, as e^x underflows there anyway); relative
/// error below 2e-7 (two f32 ulps). Range reduction x = k·ln2 + r, |r| ≤ ln2/2, then a
/// degree-7 Taylor polynomial for e^r and 2^k from the exponent bits.
#[inline(always)]
pub fn exp_neg_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that k·LN2_HI is exact for the k used here.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5·2²³: adding it rounds to an integer that lands in the low mantissa bits, so k is
    // read from the bits without a float-to-int conversion (which would not vectorise).
    const SHIFT: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 0.0);
    let t = x * LOG2E + SHIFT;
    let k = t - SHIFT;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^k: k + 127 in the exponent field (k ∈ [−126, 0]).
    let k_int = t.to_bits().wrapping_sub(SHIFT.to_bits());
    let two_k = f32::from_bits(k_int.wrapping_add(127) << 23);
    p * two_k
}

/// erf(x) with absolute error below 3e-7 (a few f32 ulps of erf's range).
///
/// |x| ≥ 0.6: Abramowitz & Stegun, Handbook of Mathematical Functions, formula 7.1.26:
/// erf x = 1 − (a1·t + … + a5·t⁵)·e^(−x²), t = 1/(1 + p·x), |error| ≤ 1.5e-7.
/// |x| < 0.6, where 1 − (…) would cancel: the Maclaurin series
/// erf x = 2/√π · Σ (−1)ⁿ x^(2n+1) / (n!·(2n+1)) through n = 6.
/// Both are evaluated and one selected, so the loop stays branch-free.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_7;
    const A4: f32 = -1.453_152_1;
    const A5: f32 = 1.061_405_4;
    // 2/√π · (−1)ⁿ / (n!·(2n+1)), n = 0..=6
    const S: [f32; 7] = [
        std::f32::consts::FRAC_2_SQRT_PI,
        -0.376_126_4,
        0.112_837_92,
        -0.026_866_17,
        0.005_223_977_6,
        -0.000_854_832_6,
        0.000_120_553_33,
    ];
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A1 + t * (A2 + t * (A3 + t * (A4 + t * A5))));
    let tail = (1.0 - poly * exp_neg_f32(-a * a)).copysign(x);
    let x2 = x * x;
    let series = x
        * (S[0] + x2 * (S[1] + x2 * (S[2] + x2 * (S[3] + x2 * (S[4] + x2 * (S[5] + x2 * S[6]))))));
    if a < 0.6 {
        series
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_on_its_range() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -87.0 * i as f64 / 200_000.0;
            let want = x.exp();
            let got = exp_neg_f32(x as f32) as f64;
            // compare against e^(x rounded to f32), the function of the actual input
            let want_f = ((x as f32) as f64).exp();
            worst = worst.max(((got - want_f) / want_f).abs());
            assert!(want > 0.0);
        }
        assert!(worst < 2e-7, "worst relative error {worst:e}");
    }

    #[test]
    fn erf_is_accurate() {
        let mut worst = 0.0f64;
        for i in -100_000..=100_000 {
            let x = (i as f64 * 6.0 / 100_000.0) as f32;
            let err = (erf_f32(x) as f64 - libm::erf(x as f64)).abs();
            worst = worst.max(err);
        }
        assert!(worst < 3e-7, "worst absolute error {worst:e}");
        assert_eq!(erf_f32(0.0), 0.0);
        assert_eq!(erf_f32(10.0), 1.0);
        assert_eq!(erf_f32(-10.0), -1.0);
    }
}
