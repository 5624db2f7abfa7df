//! Both matmul kernels (fp32 SIMT and bf16 tensor cores) against plain f64 loops, for every
//! epilogue, the forward (A and B K-major), dX (B N-major) and the split-K weight gradient
//! (A M-major) layouts, at odd shapes (M, N, K multiples of no tile), at model scale, and with
//! a misaligned operand (the element-by-element load path). Outputs are poisoned (NaN) first.
//!
//! Tolerances, element by element, from the rounding of the inputs and of the arithmetic
//! (Higham, Accuracy and Stability of Numerical Algorithms, §3.1):
//! - bf16 operands: each input is rounded to bf16 (unit roundoff u16 = 2⁻⁸), so a product
//!   a·b is off by at most (2·u16 + u16²)·|a·b|; the fp32 accumulation of K terms adds at most
//!   γ_K = K·u32/(1 − K·u32), u32 = 2⁻²⁴, of Σ|a·b|. The bound is (2·u16 + u16² + γ_K)·Σ|a·b|.
//! - fp32 operands: γ_K·Σ|a·b| only.
//! - then the epilogue: + bias and + residual add one rounding each (u32 of the result); GELU
//!   carries its input's error times |gelu'| ≤ 1.13, plus a few ulps of erfc; GELU_GRAD scales
//!   by |gelu'(pre)| and adds a few ulps of gelu'; a bf16 output adds u16·|y|.
//!
//! NaN never passes.

mod common;
mod gpu_common;
mod reference;

use std::sync::Arc;

use gpu_common::{device, rng, uniform, Dev, U16, U32};
use vitk::engine::Precision;
use vitk::gpu::kernels::{self, LinearEpilogue, Operand};
use vitk::gpu::Runtime;

fn gamma(n: usize) -> f64 {
    n as f64 * U32 / (1.0 - n as f64 * U32)
}

/// Bound on |computed − exact| of a K-term dot product with these magnitudes Σ|a·b|.
fn dot_bound(p: Precision, k: usize, abs: f64) -> f64 {
    let inputs = match p {
        Precision::Fp32 => 0.0,
        Precision::Bf16 => 2.0 * U16 + U16 * U16,
    };
    (inputs + gamma(k + 2)) * abs
}

fn out_round(p: Precision) -> f64 {
    match p {
        Precision::Fp32 => U32,
        Precision::Bf16 => U16,
    }
}

fn check(case: &str, name: &str, got: &[f32], want: &[f64], bound: &[f64]) {
    assert_eq!(got.len(), want.len(), "{case} {name}: length");
    let got: Vec<f64> = got.iter().map(|&v| v as f64).collect();
    let mut worst = 0.0f64;
    for i in 0..got.len() {
        let err = (got[i] - want[i]).abs();
        assert!(
            err <= bound[i],
            "{case} {name}[{i}]: {} vs {}: error {err:e} above the bound {:e}",
            got[i],
            want[i],
            bound[i]
        );
        if bound[i] > 0.0 {
            worst = worst.max(err / bound[i]);
        }
    }
    println!("  {case} {name}: worst error {worst:.3} of its bound");
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Every forward epilogue and output type, dX with and without GELU_GRAD, and dW + db.
fn linear_case(rt: &Arc<dyn Runtime>, p: Precision, (r, i, o): (usize, usize, usize), skew: usize) {
    let mut rng = rng(&format!("matmul {p} R={r} I={i} O={o}"));
    let case = format!("{p} R={r} I={i} O={o} skew={skew}");
    let mut dev = Dev::new(rt);
    let x = uniform(&mut rng, r * i, 1.0);
    let w = uniform(&mut rng, o * i, 0.5);
    let b = uniform(&mut rng, o, 0.5);
    let res = uniform(&mut rng, r * o, 1.0);
    let dy = uniform(&mut rng, r * o, 1.0);
    let pre = uniform(&mut rng, r * i, 3.0);
    let dw0 = uniform(&mut rng, o * i, 1.0);
    let db0 = uniform(&mut rng, o, 1.0);
    let (x64, w64, b64) = (widen(&x), widen(&w), widen(&b));

    // Forward: pre-activation, its magnitude and bound.
    let y = reference::linear(&x64, &w64, Some(&b64), r, i, o);
    let abs = reference::linear_abs(&x64, &w64, None, r, i, o);
    let e_pre: Vec<f64> = (0..r * o)
        .map(|e| dot_bound(p, i, abs[e]) + U32 * (y[e].abs() + b64[e % o].abs()))
        .collect();
    let (gx, gw) = (dev.operand(p, &x, skew), dev.operand(p, &w, 0));
    let gb = dev.f32(&b);
    let outs: &[Precision] = match p {
        Precision::Fp32 => &[Precision::Fp32],
        Precision::Bf16 => &[Precision::Fp32, Precision::Bf16],
    };
    for &out in outs {
        let gy = dev.out(out, r * o);
        kernels::linear_forward(&**rt, gy, gx, gw, gb, LinearEpilogue::Bias, r, i, o).unwrap();
        let bound: Vec<f64> = (0..r * o)
            .map(|e| e_pre[e] + out_round(out) * y[e].abs())
            .collect();
        check(&case, &format!("y ({out} out)"), &dev.get(gy), &y, &bound);

        // GELU: the output and the saved pre-activation, both in the output precision.
        let (gy, gpre) = (dev.out(out, r * o), dev.out(out, r * o));
        kernels::linear_forward(
            &**rt,
            gy,
            gx,
            gw,
            gb,
            LinearEpilogue::Gelu { pre: gpre },
            r,
            i,
            o,
        )
        .unwrap();
        let want: Vec<f64> = y.iter().map(|&v| reference::gelu(v)).collect();
        // gelu' ≤ 1.13 carries the pre-activation's error; erfc of x/√2 has condition ≈ x²,
        // so its fp32 evaluation is good to (x² + 8)·u32 relatively.
        let bound: Vec<f64> = (0..r * o)
            .map(|e| {
                let ev = (y[e] * y[e] + 8.0) * U32 + out_round(out);
                1.13 * e_pre[e] + ev * want[e].abs() + 1e-30
            })
            .collect();
        check(
            &case,
            &format!("gelu ({out} out)"),
            &dev.get(gy),
            &want,
            &bound,
        );
        let bound: Vec<f64> = (0..r * o)
            .map(|e| e_pre[e] + out_round(out) * y[e].abs())
            .collect();
        check(
            &case,
            &format!("pre ({out} out)"),
            &dev.get(gpre),
            &y,
            &bound,
        );
    }
    // Residual (fp32 output: the residual stream).
    let gres = dev.f32(&res);
    let gy = dev.out(Precision::Fp32, r * o);
    kernels::linear_forward(
        &**rt,
        gy,
        gx,
        gw,
        gb,
        LinearEpilogue::Residual(gres),
        r,
        i,
        o,
    )
    .unwrap();
    let want: Vec<f64> = y.iter().zip(&res).map(|(a, &c)| a + c as f64).collect();
    let bound: Vec<f64> = (0..r * o)
        .map(|e| e_pre[e] + U32 * (want[e].abs() + res[e].abs() as f64))
        .collect();
    check(&case, "y_residual", &dev.get(gy), &want, &bound);

    // dX = dy · w, then (dy · w) ⊙ gelu'(pre) with pre held in the operands' precision.
    let [dx, dw, db] = reference::linear_grads(&widen(&dy), &x64, &w64, r, i, o);
    let ady: Vec<f64> = dy.iter().map(|v| v.abs() as f64).collect();
    let aw: Vec<f64> = w.iter().map(|v| v.abs() as f64).collect();
    let ax: Vec<f64> = x.iter().map(|v| v.abs() as f64).collect();
    let [dx_abs, dw_abs, db_abs] = reference::linear_grads(&ady, &ax, &aw, r, i, o);
    let gdy = dev.operand(p, &dy, 0);
    for &out in outs {
        let gdx = dev.out(out, r * i);
        kernels::linear_backward_dx(&**rt, gdx, gdy, gw, None, r, i, o).unwrap();
        let bound: Vec<f64> = (0..r * i)
            .map(|e| dot_bound(p, o, dx_abs[e]) + out_round(out) * dx[e].abs())
            .collect();
        check(
            &case,
            &format!("dx ({out} out)"),
            &dev.get(gdx),
            &dx,
            &bound,
        );

        // The saved pre-activation has the output's type (the kernel reads aux as C's type).
        let (gpre, pre_held) = (
            dev.operand(out, &pre, 0),
            widen(&gpu_common::held(out, &pre)),
        );
        let gdx = dev.out(out, r * i);
        kernels::linear_backward_dx(&**rt, gdx, gdy, gw, Some(gpre), r, i, o).unwrap();
        let grad: Vec<f64> = pre_held.iter().map(|&v| reference::gelu_grad(v)).collect();
        let want: Vec<f64> = (0..r * i).map(|e| dx[e] * grad[e]).collect();
        // gelu' = Φ(x) + x·φ(x) cancels near x = −0.75: its fp32 evaluation is good to a few
        // ulps of the two terms (8·u32), not of their sum.
        let bound: Vec<f64> = (0..r * i)
            .map(|e| {
                let v = pre_held[e];
                let terms = reference::normal_cdf(v) + (v * reference::normal_pdf(v)).abs();
                grad[e].abs() * dot_bound(p, o, dx_abs[e])
                    + dx[e].abs() * 8.0 * U32 * terms
                    + out_round(out) * want[e].abs()
                    + 1e-30
            })
            .collect();
        check(
            &case,
            &format!("dx*gelu' ({out} out)"),
            &dev.get(gdx),
            &want,
            &bound,
        );
    }

    // dW += dyᵀ x and db += Σ dy, through the split-K plan of this device.
    let ws_len = kernels::splitk_workspace_len(&**rt, p, r, i, o);
    let ws = dev.f32(&vec![f32::NAN; ws_len.max(1)]);
    let (gdw, gdb) = (dev.f32(&dw0), dev.f32(&db0));
    kernels::linear_backward_dw(&**rt, gdw, Some(gdb), ws, gdy, gx, r, i, o).unwrap();
    let want: Vec<f64> = dw.iter().zip(&dw0).map(|(a, &c)| a + c as f64).collect();
    let bound: Vec<f64> = (0..o * i)
        .map(|e| dot_bound(p, r + 2, dw_abs[e]) + U32 * (want[e].abs() + dw0[e].abs() as f64))
        .collect();
    check(&case, "dw", &dev.get(Operand::F32(gdw)), &want, &bound);
    let want: Vec<f64> = db.iter().zip(&db0).map(|(a, &c)| a + c as f64).collect();
    // db sums dy held in the operands' precision: the same bound as a dot product with 1.
    let bound: Vec<f64> = (0..o)
        .map(|e| dot_bound(p, r + 2, db_abs[e]) + U32 * (want[e].abs() + db0[e].abs() as f64))
        .collect();
    check(&case, "db", &dev.get(Operand::F32(gdb)), &want, &bound);
}

/// (R, I, O): tiny, odd (multiples of no tile and of neither 8 nor 16), K = 9 (a patch
/// embedding of 1-channel images with patch 3), and 16 images of 65 tokens (model scale:
/// several tiles, several K stages, a split-K weight gradient).
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (3, 5, 7),
    (67, 45, 70),
    (130, 17, 65),
    (9, 100, 3),
    (33, 9, 20),
    (1040, 192, 200),
];

#[test]
fn fp32_matmul_matches_f64_loops() {
    let rt = device();
    for &s in SHAPES {
        linear_case(&rt, Precision::Fp32, s, 0);
    }
}

#[test]
fn bf16_tensor_core_matmul_matches_f64_loops() {
    let rt = device();
    for &s in SHAPES {
        linear_case(&rt, Precision::Bf16, s, 0);
    }
    // A misaligned A operand: 16-byte loads impossible, the element-by-element path.
    linear_case(&rt, Precision::Bf16, (67, 48, 70), 1);
}

#[test]
fn split_k_plans_fill_the_gpu() {
    let rt = device();
    // The weight gradients of `seed` at batch 128 (R = 8320) on this device's SM count.
    let sms = rt.sm_count();
    for p in [Precision::Fp32, Precision::Bf16] {
        for (o, i) in [(768, 256), (256, 256), (1024, 256), (256, 1024), (256, 48)] {
            let plan =
                kernels::matmul_plan(sms, p, false, false, Precision::Fp32, (o, i, 8320), true)
                    .unwrap();
            let blocks = plan.cfg.grid.0 * plan.cfg.grid.1 * plan.cfg.grid.2;
            println!("  {p} dW [{o}, {i}] over 8320 rows: {plan:?}, {blocks} blocks");
            assert!(plan.splits > 1, "{p} [{o}, {i}]: not split");
            assert!(
                blocks as usize >= sms,
                "{p} [{o}, {i}]: {blocks} blocks < {sms} SMs"
            );
            assert!(plan.k_chunk * plan.splits >= 8320 && plan.k_chunk * (plan.splits - 1) < 8320);
        }
    }
}

/// The QKV scatter (head-major q | k | v) in both precisions and output types.
#[test]
fn qkv_matmul_writes_head_major() {
    let rt = device();
    let mut rng = rng("qkv");
    for p in [Precision::Fp32, Precision::Bf16] {
        for (b, t, h, hd) in [(2, 5, 2, 3), (3, 17, 3, 7), (1, 70, 1, 5), (2, 65, 8, 32)] {
            let case = format!("{p} B={b} T={t} H={h} hd={hd}");
            let mut dev = Dev::new(&rt);
            let d = h * hd;
            let x = uniform(&mut rng, b * t * d, 1.0);
            let w = uniform(&mut rng, 3 * d * d, 0.5);
            let bias = uniform(&mut rng, 3 * d, 0.5);
            let y = reference::linear(&widen(&x), &widen(&w), Some(&widen(&bias)), b * t, d, 3 * d);
            let abs = reference::linear_abs(&widen(&x), &widen(&w), None, b * t, d, 3 * d);
            let hm = |v: &[f64]| -> Vec<f64> {
                let mut out = vec![0.0; v.len()];
                for s in 0..3 {
                    for bi in 0..b {
                        for hi in 0..h {
                            for ti in 0..t {
                                for e in 0..hd {
                                    out[(((s * b + bi) * h + hi) * t + ti) * hd + e] =
                                        v[(bi * t + ti) * 3 * d + s * d + hi * hd + e];
                                }
                            }
                        }
                    }
                }
                out
            };
            let (want, abs) = (hm(&y), hm(&abs));
            let (gx, gw, gb) = (dev.operand(p, &x, 0), dev.operand(p, &w, 0), dev.f32(&bias));
            let out = dev.out(p, want.len());
            kernels::qkv_forward(&*rt, out, gx, gw, gb, b, t, h, d).unwrap();
            let bound: Vec<f64> = (0..want.len())
                .map(|e| dot_bound(p, d, abs[e]) + (U32 + out_round(p)) * want[e].abs() + U32)
                .collect();
            check(&case, "qkv", &dev.get(out), &want, &bound);
        }
    }
}

/// GELU and its derivative at the ends of erf's and exp's ranges, through the epilogues: with
/// K = 1, A = 1 and B = 0 the pre-activation is exactly the bias.
#[test]
fn gelu_epilogues_at_the_ends_of_their_range() {
    let rt = device();
    let mut xs: Vec<f32> = Vec::new();
    for i in 0..=280 {
        let v = -12.0 + i as f32 * 0.025; // −12 .. −5
        xs.extend([v, -v]);
    }
    xs.extend([40.0, 88.0, 1e4, -1e4, 0.0, -0.0, 1e-30, -1e-30]);
    let n = xs.len();
    let mut dev = Dev::new(&rt);
    let (one, zero) = (
        dev.operand(Precision::Fp32, &[1.0], 0),
        dev.operand(Precision::Fp32, &vec![0.0; n], 0),
    );
    let bias = dev.f32(&xs);
    let (y, pre) = (dev.out(Precision::Fp32, n), dev.out(Precision::Fp32, n));
    // y [1, n] = gelu(1 · 0 + x)
    kernels::linear_forward(
        &*rt,
        y,
        one,
        zero,
        bias,
        LinearEpilogue::Gelu { pre },
        1,
        1,
        n,
    )
    .unwrap();
    // dx [1, n] = (1 · 1) ⊙ gelu'(x): dy = 1 [1, 1], w = 1 [1, n]
    let ones = dev.operand(Precision::Fp32, &vec![1.0; n], 0);
    let dx = dev.out(Precision::Fp32, n);
    let xop = dev.operand(Precision::Fp32, &xs, 0);
    kernels::linear_backward_dx(&*rt, dx, one, ones, Some(xop), 1, n, 1).unwrap();
    let (gy, gdx) = (widen(&dev.get(y)), widen(&dev.get(dx)));
    for e in 0..n {
        let v = xs[e] as f64;
        // erfc(z) and exp(−z²) have condition number ≈ 2z² = x²: the rounding of x/√2 and
        // x²/2 costs x²·u32 relative, plus a few ulps of erfcf and expf themselves.
        let tol = (2.0 * v * v + 32.0) * U32;
        for (name, got, want) in [
            ("gelu", gy[e], reference::gelu(v)),
            ("gelu'", gdx[e], reference::gelu_grad(v)),
        ] {
            let err = (got - want).abs();
            assert!(
                err <= tol * want.abs() + 1e-37,
                "{name}({v}) = {got} vs {want}: relative error {:e} > {tol:e}",
                err / want.abs()
            );
        }
    }
}
