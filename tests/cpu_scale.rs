//! Every CPU op at sizes that cross each of its loop thresholds (row blocks of 512 in the
//! forward and dX products, 1024-row split-K blocks of the weight gradient, 64-row reduction
//! blocks, 2^14-element GELU chunks, the batch split of attention), in f64 and in f32,
//! against the plain f64 loops of tests/reference. The gradient checks cover the formulas at
//! small shapes; these cover the blocking at the shapes training uses.
//!
//! Tolerances. Linear products are checked element by element against the rounding-error
//! bound of a floating-point dot product of n terms, |ŷ − y| ≤ γₙ Σ|terms| with
//! γₙ = n·u / (1 − n·u) (Higham, Accuracy and Stability of Numerical Algorithms, §3.1), which
//! holds for any summation order and with FMA; u = 2⁻⁵³ (f64) or 2⁻²⁴ (f32). Other ops are
//! compared norm-wise: 1e-12 in f64 (a handful of ulps of error growth), and in f32 the
//! bounds stated at each check.

mod common;
mod reference;

use common::{rand_vec, rel_err};
use vitk::cpu;
use vitk::cpu::Float;
use vitk::model::{ImageSize, Pool};

const U64: f64 = f64::EPSILON / 2.0;
const U32: f64 = f32::EPSILON as f64 / 2.0;

fn gamma(n: usize, u: f64) -> f64 {
    n as f64 * u / (1.0 - n as f64 * u)
}

/// Rounds to f32 and back: the exact inputs both precisions see.
fn f32_exact(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| x as f32 as f64).collect()
}

fn to<F: Float>(v: &[f64]) -> Vec<F> {
    v.iter().map(|&x| F::of(x)).collect()
}

fn back<F: Float>(v: &[F]) -> Vec<f64> {
    v.iter().map(|&x| Float::to_f64(x)).collect()
}

/// |got − want| ≤ γₙ·abs (+ the rounding of the result itself) everywhere.
fn assert_within_dot_bound(name: &str, got: &[f64], want: &[f64], abs: &[f64], n: usize, u: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let g = gamma(n + 1, u);
    let mut worst = 0.0f64;
    for (i, ((&a, &b), &s)) in got.iter().zip(want).zip(abs).enumerate() {
        let bound = g * s + u * b.abs();
        assert!(
            (a - b).abs() <= bound,
            "{name}[{i}]: {a} vs {b}: error {:e} above the dot-product bound {bound:e}",
            (a - b).abs()
        );
        if bound > 0.0 {
            worst = worst.max((a - b).abs() / bound);
        }
    }
    println!("  {name}: worst error {worst:.3} of its bound");
}

fn assert_norm(name: &str, got: &[f64], want: &[f64], tol: f64) {
    let e = rel_err(got, want);
    println!("  {name}: norm-wise relative error {e:.3e} (tol {tol:.0e})");
    assert!(e <= tol, "{name}: relative error {e:e} > {tol:e}");
}

fn unit<F: Float>() -> f64 {
    if std::mem::size_of::<F>() == 4 {
        U32
    } else {
        U64
    }
}

/// R = 2125 rows: 5 forward/dX row blocks of 512 and 3 weight-gradient blocks of 1024.
fn linear_case<F: Float>() {
    let (r, i, o) = (2125, 70, 45);
    let x = f32_exact(&rand_vec(r * i, 1, 1.0));
    let w = f32_exact(&rand_vec(o * i, 2, 0.5));
    let b = f32_exact(&rand_vec(o, 3, 0.5));
    let res = f32_exact(&rand_vec(r * o, 4, 1.0));
    let dy = f32_exact(&rand_vec(r * o, 5, 1.0));
    let dx0 = f32_exact(&rand_vec(r * i, 6, 1.0));
    let dw0 = f32_exact(&rand_vec(o * i, 7, 1.0));
    let db0 = f32_exact(&rand_vec(o, 8, 1.0));
    let u = unit::<F>();
    let tag = format!("f{}", 8 * std::mem::size_of::<F>());

    let want = reference::linear(&x, &w, Some(&b), r, i, o);
    let abs = reference::linear_abs(&x, &w, Some(&b), r, i, o);
    let mut y = vec![F::zero(); r * o];
    cpu::linear::linear_forward(
        &mut y,
        &to::<F>(&x),
        &to::<F>(&w),
        Some(&to::<F>(&b)),
        r,
        i,
        o,
    );
    assert_within_dot_bound(&format!("{tag} linear.y"), &back(&y), &want, &abs, i + 1, u);

    let want_r: Vec<f64> = want.iter().zip(&res).map(|(a, b)| a + b).collect();
    let abs_r: Vec<f64> = abs.iter().zip(&res).map(|(a, b)| a + b.abs()).collect();
    let mut yr = vec![F::zero(); r * o];
    cpu::linear::linear_residual_forward(
        &mut yr,
        &to::<F>(&res),
        &to::<F>(&x),
        &to::<F>(&w),
        &to::<F>(&b),
        r,
        i,
        o,
    );
    assert_within_dot_bound(
        &format!("{tag} linear.y_residual"),
        &back(&yr),
        &want_r,
        &abs_r,
        i + 2,
        u,
    );

    // Backward, dx overwritten then accumulated; dw and db accumulated onto random values.
    let [dx, dw, db] = reference::linear_grads(&dy, &x, &w, r, i, o);
    let ady: Vec<f64> = dy.iter().map(|v| v.abs()).collect();
    let aw: Vec<f64> = w.iter().map(|v| v.abs()).collect();
    let ax: Vec<f64> = x.iter().map(|v| v.abs()).collect();
    let [dx_abs, dw_abs, db_abs] = reference::linear_grads(&ady, &ax, &aw, r, i, o);
    for accumulate in [false, true] {
        let mut gdx: Vec<F> = to(&dx0);
        let (mut gdw, mut gdb): (Vec<F>, Vec<F>) = (to(&dw0), to(&db0));
        cpu::linear::linear_backward(
            Some(&mut gdx),
            accumulate,
            &mut gdw,
            Some(&mut gdb),
            &to::<F>(&dy),
            &to::<F>(&x),
            &to::<F>(&w),
            r,
            i,
            o,
        );
        let plus =
            |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x + y).collect() };
        let plus_abs = |a: &[f64], b: &[f64]| -> Vec<f64> {
            a.iter().zip(b).map(|(x, y)| x + y.abs()).collect()
        };
        let (want_dx, abs_dx) = if accumulate {
            (plus(&dx, &dx0), plus_abs(&dx_abs, &dx0))
        } else {
            (dx.clone(), dx_abs.clone())
        };
        let name = format!("{tag} linear.dx (accumulate={accumulate})");
        assert_within_dot_bound(&name, &back(&gdx), &want_dx, &abs_dx, o + 1, u);
        // dw: R products in blocks, plus one addition per block and the initial value.
        let n_dw = r + r.div_ceil(1024) + 1;
        assert_within_dot_bound(
            &format!("{tag} linear.dw"),
            &back(&gdw),
            &plus(&dw, &dw0),
            &plus_abs(&dw_abs, &dw0),
            n_dw,
            u,
        );
        assert_within_dot_bound(
            &format!("{tag} linear.db"),
            &back(&gdb),
            &plus(&db, &db0),
            &plus_abs(&db_abs, &db0),
            n_dw,
            u,
        );
    }

    // Column sums alone (bias gradients of the device-side layout), 34 blocks of 64 rows.
    let mut acc: Vec<F> = to(&db0);
    cpu::linear::column_sums_into(&mut acc, &to::<F>(&dy), o);
    let n_cs = r + r.div_ceil(64) + 1;
    let want_cs: Vec<f64> = db.iter().zip(&db0).map(|(a, b)| a + b).collect();
    let abs_cs: Vec<f64> = db_abs.iter().zip(&db0).map(|(a, b)| a + b.abs()).collect();
    assert_within_dot_bound(
        &format!("{tag} column_sums"),
        &back(&acc),
        &want_cs,
        &abs_cs,
        n_cs,
        u,
    );
}

#[test]
fn linear_ops_cross_their_row_blocks() {
    linear_case::<f64>();
    linear_case::<f32>();
}

/// 300 rows: five 64-row blocks of the backward's weight/bias partials.
fn layernorm_case<F: Float>(tol: f64) {
    let (r, d) = (300, 96);
    let x: Vec<f64> = f32_exact(
        &rand_vec(r * d, 11, 2.0)
            .iter()
            .map(|v| v + 0.5)
            .collect::<Vec<_>>(),
    );
    let w = f32_exact(
        &rand_vec(d, 12, 0.5)
            .iter()
            .map(|v| v + 1.0)
            .collect::<Vec<_>>(),
    );
    let b = f32_exact(&rand_vec(d, 13, 0.5));
    let dout = f32_exact(&rand_vec(r * d, 14, 1.0));
    let (want, want_mean, want_rstd) = reference::layernorm(&x, &w, &b, d);
    let [want_dx, want_dw, want_db] = reference::layernorm_grads(&dout, &x, &w, d);
    let (mut out, mut mean, mut rstd) = (
        vec![F::zero(); r * d],
        vec![F::zero(); r],
        vec![F::zero(); r],
    );
    let (xf, wf) = (to::<F>(&x), to::<F>(&w));
    cpu::layernorm::layernorm_forward(&mut out, &mut mean, &mut rstd, &xf, &wf, &to::<F>(&b), d);
    let tag = format!("f{}", 8 * std::mem::size_of::<F>());
    assert_norm(&format!("{tag} layernorm.out"), &back(&out), &want, tol);
    assert_norm(
        &format!("{tag} layernorm.mean"),
        &back(&mean),
        &want_mean,
        tol,
    );
    assert_norm(
        &format!("{tag} layernorm.rstd"),
        &back(&rstd),
        &want_rstd,
        tol,
    );
    let (mut dx, mut dw, mut db) = (
        vec![F::zero(); r * d],
        vec![F::zero(); d],
        vec![F::zero(); d],
    );
    cpu::layernorm::layernorm_backward(
        &mut dx,
        &mut dw,
        &mut db,
        &to::<F>(&dout),
        &xf,
        &mean,
        &rstd,
        &wf,
        d,
    );
    assert_norm(&format!("{tag} layernorm.dx"), &back(&dx), &want_dx, tol);
    assert_norm(
        &format!("{tag} layernorm.dweight"),
        &back(&dw),
        &want_dw,
        tol,
    );
    assert_norm(&format!("{tag} layernorm.dbias"), &back(&db), &want_db, tol);
}

#[test]
fn layernorm_crosses_its_reduction_blocks() {
    layernorm_case::<f64>(1e-12);
    // f32: two-pass statistics over D = 96 and a dozen roundings per output: a few hundred
    // u (u = 6e-8) at most, well inside 1e-5.
    layernorm_case::<f32>(1e-5);
}

/// 2·2^14 + 5 elements: three parallel chunks, the last one short.
#[test]
fn gelu_crosses_its_chunks_and_keeps_its_tails() {
    let n = 2 * (1 << 14) + 5;
    // Most values in the working range, a few at the ends of erf's and exp's ranges.
    let mut x = f32_exact(&rand_vec(n, 21, 5.0));
    for (i, v) in [-12.0, -9.5, -6.0, 6.0, 9.5, 40.0, -1e4, 1e4]
        .into_iter()
        .enumerate()
    {
        x[i * 1000] = v;
    }
    let dout = f32_exact(&rand_vec(n, 22, 1.0));
    let want: Vec<f64> = x.iter().map(|&v| reference::gelu(v)).collect();
    let want_dx: Vec<f64> = x
        .iter()
        .zip(&dout)
        .map(|(&v, &g)| g * reference::gelu_grad(v))
        .collect();

    let mut out = vec![0.0f64; n];
    cpu::gelu::gelu_forward(&mut out, &x);
    let mut dx = vec![0.0f64; n];
    cpu::gelu::gelu_backward(&mut dx, &dout, &x);
    // f64 uses 1 + erf: below x ≈ −8 that cancels to 0 while Φ(x) < 1e-15, so compare
    // absolutely there (|gelu| < 1e-14) and relatively elsewhere.
    for i in 0..n {
        let tol = 1e-12 * want[i].abs().max(1e-2);
        assert!(
            (out[i] - want[i]).abs() <= tol,
            "f64 gelu({}) = {} vs {}",
            x[i],
            out[i],
            want[i]
        );
        let tol = 1e-12 * want_dx[i].abs().max(1e-2);
        assert!(
            (dx[i] - want_dx[i]).abs() <= tol,
            "f64 gelu'({}) = {} vs {}",
            x[i],
            dx[i],
            want_dx[i]
        );
    }

    // f32: erf has absolute error ≤ 3e-7 and exp relative error ≤ 2e-7 (src/cpu/fastmath.rs),
    // so |Δgelu| ≤ ½|x|·3e-7 plus a few roundings of the result, and
    // |Δgelu'| ≤ |dout|·(½·3e-7 + |x·φ(x)|·3e-7) plus the same.
    let xf: Vec<f32> = to(&x);
    let mut out32 = vec![0.0f32; n];
    cpu::gelu::gelu_forward(&mut out32, &xf);
    let mut dx32 = vec![0.0f32; n];
    cpu::gelu::gelu_backward(&mut dx32, &to::<f32>(&dout), &xf);
    for i in 0..n {
        let v = x[i];
        let bound = 0.5 * v.abs() * 3e-7 + 4.0 * U32 * want[i].abs();
        assert!(
            (out32[i] as f64 - want[i]).abs() <= bound,
            "f32 gelu({v}) = {} vs {}",
            out32[i],
            want[i]
        );
        let bound = dout[i].abs() * (1.5e-7 + (v * reference::normal_pdf(v)).abs() * 3e-7)
            + 6.0 * U32 * want_dx[i].abs();
        assert!(
            (dx32[i] as f64 - want_dx[i]).abs() <= bound,
            "f32 gelu'({v}) = {} vs {}",
            dx32[i],
            want_dx[i]
        );
    }
}

/// Three batch elements (the parallel split), T = 70 and hd = 16; then scores of ±200, where
/// a softmax without its max subtraction overflows.
#[test]
fn attention_at_model_shapes_and_large_scores() {
    let (b, t, h, hd) = (3, 70, 2, 16);
    let d = h * hd;
    for (scale, tol32) in [(1.5, 1e-5), (14.0, 0.0)] {
        // scale 14 with hd 16: scores q·k/4 reach about ±200.
        let qkv = f32_exact(&rand_vec(b * t * 3 * d, 31, scale));
        let dout = f32_exact(&rand_vec(b * t * d, 32, 1.0));
        let (want_out, want_p) = reference::attention(&qkv, b, t, h, hd);
        let want_dqkv = reference::attention_grad(&qkv, &dout, b, t, h, hd);
        let max_score = max_abs_score(&qkv, b, t, h, hd);
        println!("  attention scores up to {max_score:.0}");
        if scale > 10.0 {
            assert!(
                max_score > 150.0,
                "the large-score case must have large scores"
            );
        }
        let s = cpu::attention::AttnShape {
            batch: b,
            tokens: t,
            heads: h,
            head_dim: hd,
        };
        let (mut out, mut p) = (vec![0.0f64; b * t * d], vec![0.0f64; b * h * t * t]);
        cpu::attention::attention_forward(&mut out, &mut p, &qkv, s);
        let mut dqkv = vec![0.0f64; qkv.len()];
        cpu::attention::attention_backward(&mut dqkv, &dout, &p, &qkv, s);
        // With scores of ±200, a score's rounding (≈ |s|·u) moves its probability by that
        // much relatively: tolerances scale with the largest score.
        let tol64 = 1e-12 * max_score.max(1.0);
        assert_norm("f64 attention.out", &out, &want_out, tol64);
        assert_norm("f64 attention.probs", &p, &want_p, tol64);
        assert_norm("f64 attention.dqkv", &dqkv, &want_dqkv, tol64);

        // f32: each score carries ≈ (hd + 2)·u·Σ|q||k| of rounding, so probabilities and
        // everything after them are good to about max|score|·hd·u relatively.
        let tol = if tol32 > 0.0 {
            tol32
        } else {
            4.0 * max_score * hd as f64 * U32
        };
        let qf: Vec<f32> = to(&qkv);
        let (mut out32, mut p32) = (vec![0.0f32; b * t * d], vec![0.0f32; b * h * t * t]);
        cpu::attention::attention_forward(&mut out32, &mut p32, &qf, s);
        let mut dqkv32 = vec![0.0f32; qkv.len()];
        cpu::attention::attention_backward(&mut dqkv32, &to::<f32>(&dout), &p32, &qf, s);
        assert_norm("f32 attention.out", &back(&out32), &want_out, tol);
        assert_norm("f32 attention.probs", &back(&p32), &want_p, tol);
        assert_norm("f32 attention.dqkv", &back(&dqkv32), &want_dqkv, tol);
    }
}

/// Largest |scale·q·k| over all (batch, head, i, j).
pub fn max_abs_score(qkv: &[f64], b: usize, t: usize, h: usize, hd: usize) -> f64 {
    let d = h * hd;
    let mut m = 0.0f64;
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..t {
                for j in 0..t {
                    let s: f64 = (0..hd)
                        .map(|e| {
                            qkv[(bi * t + i) * 3 * d + hi * hd + e]
                                * qkv[(bi * t + j) * 3 * d + d + hi * hd + e]
                        })
                        .sum();
                    m = m.max((s / (hd as f64).sqrt()).abs());
                }
            }
        }
    }
    m
}

/// 300 rows with ties, all-equal rows and logits of ±1e4 (reference::hostile_logits).
#[test]
fn cross_entropy_at_scale_with_ties_and_huge_logits() {
    let (b, k) = (300, 10);
    let (logits, labels) = reference::hostile_logits(b, k, 41);
    for eps in [0.0, 0.1] {
        let (want_loss, want_correct, want_dl) = reference::cross_entropy(&logits, &labels, k, eps);
        let mut dl = vec![0.0f64; b * k];
        let st = cpu::loss::cross_entropy(&logits, &labels, k, eps, Some(&mut dl));
        assert_eq!(st.correct, want_correct, "f64 correct count");
        assert!(
            (st.loss - want_loss).abs() <= 1e-12 * want_loss.abs(),
            "f64 loss {} vs {want_loss}",
            st.loss
        );
        assert_norm("f64 cross_entropy.dlogits", &dl, &want_dl, 1e-12);
        let mut dl32 = vec![0.0f32; b * k];
        let st = cpu::loss::cross_entropy(&to::<f32>(&logits), &labels, k, eps, Some(&mut dl32));
        assert_eq!(st.correct, want_correct, "f32 correct count");
        // f32: the loss is a sum of 300 row losses of up to ~2e4: relative 300·u at most.
        assert!(
            (st.loss - want_loss).abs() <= 300.0 * U32 * want_loss.abs(),
            "f32 loss {} vs {want_loss}",
            st.loss
        );
        // Each probability from one exp of (l − max) − lse, both exact or one rounding.
        assert_norm("f32 cross_entropy.dlogits", &back(&dl32), &want_dl, 1e-5);
    }
}

#[test]
fn token_ops_at_model_shapes() {
    let (b, c, s, p, d) = (3, 3, 32, 4, 40);
    let n = (s / p) * (s / p);
    let images = rand_vec(b * c * s * s, 51, 1.0);
    let mut patches = vec![0.0; b * n * c * p * p];
    cpu::patch_embed::im2col(&mut patches, &images, b, c, s, p);
    assert_eq!(
        patches,
        reference::im2col(&images, b, c, (s, s), p),
        "im2col"
    );
    // A non-square image: 20 x 36, a 5 x 9 grid.
    let (h, w) = (20, 36);
    let wide = rand_vec(b * c * h * w, 54, 1.0);
    let mut wide_patches = vec![0.0; b * (h / p) * (w / p) * c * p * p];
    let size = ImageSize {
        height: h,
        width: w,
    };
    cpu::patch_embed::im2col(&mut wide_patches, &wide, b, c, size, p);
    assert_eq!(
        wide_patches,
        reference::im2col(&wide, b, c, (h, w), p),
        "im2col 20x36"
    );
    for cls in [true, false] {
        let t = n + usize::from(cls);
        let patch = rand_vec(b * n * d, 52, 1.0);
        let pos = rand_vec(t * d, 53, 1.0);
        let cls_v = rand_vec(d, 54, 1.0);
        let mut x = vec![0.0; b * t * d];
        cpu::tokens::tokens_forward(&mut x, &patch, &pos, cls.then_some(&cls_v[..]), d);
        assert_norm(
            "tokens.x",
            &x,
            &reference::tokens(&patch, &pos, cls.then_some(&cls_v[..]), b, n, d),
            1e-15,
        );
        let dx = rand_vec(b * t * d, 55, 1.0);
        let (mut dpatch, mut dpos, mut dcls) =
            (vec![0.0; b * n * d], vec![0.0; t * d], vec![0.0; d]);
        cpu::tokens::tokens_backward(&mut dpatch, &mut dpos, cls.then_some(&mut dcls[..]), &dx, d);
        let [wp, wpos, wcls] = reference::tokens_grads(&dx, b, t, d, cls);
        assert_norm("tokens.dpatch", &dpatch, &wp, 1e-15);
        assert_norm("tokens.dpos", &dpos, &wpos, 1e-15);
        assert_norm("tokens.dcls", &dcls, &wcls, 1e-15);
        for pool in [Pool::Cls, Pool::Mean] {
            let mean = pool == Pool::Mean;
            let mut pooled = vec![0.0; b * d];
            cpu::pooling::pool_forward(&mut pooled, &x, t, d, pool);
            assert_norm(
                "pool.pooled",
                &pooled,
                &reference::pool(&x, b, t, d, mean),
                1e-14,
            );
            let dp = rand_vec(b * d, 56, 1.0);
            let mut pdx = vec![0.0; b * t * d];
            cpu::pooling::pool_backward(&mut pdx, &dp, t, d, pool);
            assert_norm(
                "pool.dx",
                &pdx,
                &reference::pool_grad(&dp, b, t, d, mean),
                1e-15,
            );
        }
    }
}

/// Rows of variance ≈ eps and constant rows (reference::hostile_layernorm_rows). eps = 1e-5
/// instead of 1e-6 halves rstd on these rows; a one-pass variance (E[x²] − E[x]²) loses it.
#[test]
fn layernorm_rows_of_tiny_and_zero_variance() {
    let (r, d, offset) = (6, 256, 0.25);
    let x = reference::hostile_layernorm_rows(r, d, offset, 61);
    let w = f32_exact(
        &rand_vec(d, 62, 0.5)
            .iter()
            .map(|v| v + 1.0)
            .collect::<Vec<_>>(),
    );
    let b = f32_exact(&rand_vec(d, 63, 0.5));
    let dout = f32_exact(&rand_vec(r * d, 64, 1.0));
    let (want, _, want_rstd) = reference::layernorm(&x, &w, &b, d);
    let [want_dx, want_dw, want_db] = reference::layernorm_grads(&dout, &x, &w, d);
    println!("  rstd of the rows: {want_rstd:?}");
    // f32: the mean's rounding (≤ (D + 2)·u·offset for a sequential sum) is not cancelled
    // by the centring: it shifts x̂ by that times rstd (≤ 1000) in absolute terms.
    let tol32 = (d + 2) as f64 * U32 * offset * 1000.0;
    for (tol, f32_run) in [(1e-12, false), (tol32, true)] {
        let tag = if f32_run { "f32" } else { "f64" };
        let run = |xf: &[f64]| -> [Vec<f64>; 6] {
            macro_rules! go {
                ($F:ty) => {{
                    let (xv, wv, bv) = (to::<$F>(xf), to::<$F>(&w), to::<$F>(&b));
                    let (mut out, mut mean, mut rstd) = (
                        vec![0.0 as $F; r * d],
                        vec![0.0 as $F; r],
                        vec![0.0 as $F; r],
                    );
                    cpu::layernorm::layernorm_forward(
                        &mut out, &mut mean, &mut rstd, &xv, &wv, &bv, d,
                    );
                    let (mut dx, mut dw, mut db) = (
                        vec![0.0 as $F; r * d],
                        vec![0.0 as $F; d],
                        vec![0.0 as $F; d],
                    );
                    cpu::layernorm::layernorm_backward(
                        &mut dx,
                        &mut dw,
                        &mut db,
                        &to::<$F>(&dout),
                        &xv,
                        &mean,
                        &rstd,
                        &wv,
                        d,
                    );
                    [
                        back(&out),
                        back(&rstd),
                        back(&dx),
                        back(&dw),
                        back(&db),
                        back(&mean),
                    ]
                }};
            }
            if f32_run {
                go!(f32)
            } else {
                go!(f64)
            }
        };
        let [out, rstd, dx, dw, db, _] = run(&x);
        println!("  {tag} tolerance {tol:.1e}");
        assert_norm(&format!("{tag} layernorm.out"), &out, &want, tol);
        assert_norm(&format!("{tag} layernorm.rstd"), &rstd, &want_rstd, tol);
        assert_norm(&format!("{tag} layernorm.dx"), &dx, &want_dx, tol);
        assert_norm(&format!("{tag} layernorm.dweight"), &dw, &want_dw, tol);
        assert_norm(&format!("{tag} layernorm.dbias"), &db, &want_db, tol);
        // Constant rows normalise to exactly the bias.
        for row in (1..r).step_by(2) {
            assert_eq!(
                &out[row * d..(row + 1) * d],
                &b[..],
                "{tag}: constant row {row} is not the bias"
            );
        }
    }
}
