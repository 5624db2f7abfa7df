//! Forward values of each op against hand-computed or independently computed results.

mod common;

use common::{assert_close, rand_vec};
use vitk::cpu::attention::{attention_forward, softmax_in_place, AttnShape};
use vitk::cpu::gelu::gelu_forward;
use vitk::cpu::layernorm::layernorm_forward;
use vitk::cpu::linear::{linear_forward, linear_residual_forward};
use vitk::cpu::loss::cross_entropy;
use vitk::cpu::matmul::{matmul, MatMut, MatRef, Par};
use vitk::cpu::patch_embed::im2col;
use vitk::cpu::pooling::pool_forward;
use vitk::cpu::tokens::tokens_forward;
use vitk::model::Pool;

#[test]
fn linear_by_hand() {
    // x [2, 3], w [2, 3], b [2]
    let x = [1.0, 2.0, 3.0, -1.0, 0.5, 2.0];
    let w = [1.0, 0.0, -1.0, 2.0, 1.0, 0.5];
    let b = [0.5, -1.0];
    let mut y = [0.0; 4];
    linear_forward(&mut y, &x, &w, Some(&b), 2, 3, 2);
    // row 0: [1-3+0.5, 2+2+1.5-1], row 1: [-1-2+0.5, -2+0.5+1-1]
    assert_eq!(y, [-1.5, 4.5, -2.5, -1.5]);
    let res = [10.0, 20.0, 30.0, 40.0];
    linear_residual_forward(&mut y, &res, &x, &w, &b, 2, 3, 2);
    assert_eq!(y, [8.5, 24.5, 27.5, 38.5]);
}

/// The strided gemm wrapper against a triple loop, on odd sizes and transposed views.
#[test]
fn matmul_matches_naive_loops() {
    let (m, n, k) = (13, 11, 17);
    let a = rand_vec(k * m, 1, 1.0); // stored as [K, M], used transposed
    let b = rand_vec(k * 2 * n, 2, 1.0); // [K, 2N], the left half of each row used
    let mut want = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            want[i * n + j] = 0.5 * (0..k).map(|l| a[l * m + i] * b[l * 2 * n + j]).sum::<f64>();
        }
    }
    let mut got = vec![f64::NAN; m * n];
    let lhs = MatRef::rows(&a, k, m).t();
    let rhs = MatRef::strided(&b, k, n, 2 * n);
    matmul(
        MatMut::rows(&mut got, m, n),
        lhs,
        rhs,
        0.5,
        false,
        Par::Rayon,
    );
    assert_close("matmul", &got, &want, 1e-14);
}

#[test]
fn layernorm_by_hand() {
    let x = [1.0, 2.0, 3.0, 4.0];
    let (mut y, mut mean, mut rstd) = ([0.0; 4], [0.0], [0.0]);
    layernorm_forward(
        &mut y,
        &mut mean,
        &mut rstd,
        &x,
        &[1.0, 2.0, 1.0, 1.0],
        &[0.0, 0.0, 0.0, 1.0],
        4,
    );
    let r = 1.0 / (1.25f64 + 1e-6).sqrt(); // variance of 1..4 is 1.25
    assert_eq!(mean[0], 2.5);
    assert!((rstd[0] - r).abs() < 1e-15);
    let want = [-1.5 * r, -0.5 * r * 2.0, 0.5 * r, 1.5 * r + 1.0];
    assert_close("layernorm", &y, &want, 1e-15);
}

#[test]
fn gelu_reference_values() {
    // gelu(x) = x·Φ(x); Φ(1) = 0.8413447460685429, Φ(-1) = 0.15865525393145707,
    // Φ(2) = 0.9772498680518208.
    let x = [0.0, 1.0, -1.0, 2.0];
    let mut y = [0.0; 4];
    gelu_forward(&mut y, &x);
    let want = [
        0.0,
        0.8413447460685429,
        -0.15865525393145707,
        2.0 * 0.9772498680518208,
    ];
    assert_close("gelu f64", &y, &want, 1e-15);
    let mut y32 = [0.0f32; 4];
    gelu_forward(&mut y32, &[0.0f32, 1.0, -1.0, 2.0]);
    let y32: Vec<f64> = y32.iter().map(|&v| v as f64).collect();
    assert_close("gelu f32", &y32, &want, 1e-6);
}

#[test]
fn softmax_by_hand() {
    let mut row = [0.0, 2f64.ln(), 0.0];
    softmax_in_place(&mut row);
    assert_close("softmax", &row, &[0.25, 0.5, 0.25], 1e-15);
}

/// One head, hd = 1, two tokens: scores q_i·k_j, softmax, weighted values, by hand.
#[test]
fn attention_by_hand() {
    let s = AttnShape {
        batch: 1,
        tokens: 2,
        heads: 1,
        head_dim: 1,
    };
    // per token: q, k, v
    let qkv = [1.0, 0.0, 10.0, 2.0, 3f64.ln(), 20.0];
    let (mut out, mut probs) = ([0.0; 2], [0.0; 4]);
    attention_forward(&mut out, &mut probs, &qkv, s);
    // token 0: scores [0, ln 3] -> [1/4, 3/4]; token 1: scores [0, 2 ln 3] -> [1/10, 9/10]
    assert_close("probs", &probs, &[0.25, 0.75, 0.1, 0.9], 1e-15);
    assert_close("out", &out, &[0.25 * 10.0 + 0.75 * 20.0, 1.0 + 18.0], 1e-15);
}

/// Attention with several heads equals attention of each head on its own columns.
#[test]
fn attention_heads_are_independent() {
    let full = AttnShape {
        batch: 2,
        tokens: 5,
        heads: 3,
        head_dim: 2,
    };
    let (t, d, hd) = (5, 6, 2);
    let qkv = rand_vec(2 * t * 3 * d, 3, 1.0);
    let mut out = vec![0.0; 2 * t * d];
    let mut probs = vec![0.0; 2 * 3 * t * t];
    attention_forward(&mut out, &mut probs, &qkv, full);
    let one = AttnShape {
        batch: 1,
        tokens: t,
        heads: 1,
        head_dim: hd,
    };
    for b in 0..2 {
        for h in 0..3 {
            let mut q1 = Vec::new();
            for tok in 0..t {
                let row = &qkv[(b * t + tok) * 3 * d..(b * t + tok + 1) * 3 * d];
                for part in 0..3 {
                    q1.extend_from_slice(&row[part * d + h * hd..part * d + (h + 1) * hd]);
                }
            }
            let (mut o1, mut p1) = (vec![0.0; t * hd], vec![0.0; t * t]);
            attention_forward(&mut o1, &mut p1, &q1, one);
            let got: Vec<f64> = (0..t)
                .flat_map(|tok| {
                    out[(b * t + tok) * d + h * hd..(b * t + tok) * d + (h + 1) * hd].to_vec()
                })
                .collect();
            assert_close("head output", &got, &o1, 1e-14);
        }
    }
}

#[test]
fn im2col_by_hand() {
    // One 2-channel 4x4 image, values c*100 + y*4 + x, patch 2: 4 patches in (py, px) order,
    // each vector in (c, ky, kx) order.
    let img: Vec<f64> = (0..2)
        .flat_map(|c| (0..16).map(move |i| (c * 100 + i) as f64))
        .collect();
    let mut patches = vec![0.0; 4 * 8];
    im2col(&mut patches, &img, 1, 2, 4, 2);
    let p = |y0: usize, x0: usize| -> Vec<f64> {
        (0..2)
            .flat_map(|c| {
                [(0, 0), (0, 1), (1, 0), (1, 1)]
                    .map(|(ky, kx)| (c * 100 + (y0 + ky) * 4 + x0 + kx) as f64)
            })
            .collect()
    };
    let want: Vec<f64> = [p(0, 0), p(0, 2), p(2, 0), p(2, 2)].concat();
    assert_eq!(patches, want);
}

#[test]
fn tokens_and_pooling_by_hand() {
    // B 1, N 2, D 2 with a cls token: T 3.
    let patch = [1.0, 2.0, 3.0, 4.0];
    let pos = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
    let mut x = [0.0; 6];
    tokens_forward(&mut x, &patch, &pos, Some(&[10.0, 20.0]), 2);
    assert_close("tokens cls", &x, &[10.1, 20.2, 1.3, 2.4, 3.5, 4.6], 1e-15);
    let mut pooled = [0.0; 2];
    pool_forward(&mut pooled, &x, 3, 2, Pool::Cls);
    assert_eq!(pooled, [x[0], x[1]]);
    pool_forward(&mut pooled, &x, 3, 2, Pool::Mean);
    assert_close(
        "mean pool",
        &pooled,
        &[(10.1 + 1.3 + 3.5) / 3.0, (20.2 + 2.4 + 4.6) / 3.0],
        1e-15,
    );
    let mut x2 = [0.0; 4];
    tokens_forward(&mut x2, &patch, &pos[..4], None, 2);
    assert_close("tokens no cls", &x2, &[1.1, 2.2, 3.3, 4.4], 1e-15);
}

#[test]
fn cross_entropy_by_hand() {
    // Two equal logits: loss ln 2 with or without smoothing; the arg-max tie goes to class 0.
    let s = cross_entropy(&[0.0, 0.0], &[0], 2, 0.0, None);
    assert!((s.loss - 2f64.ln()).abs() < 1e-15);
    assert_eq!(s.correct, 1);
    // logits [ln 3, 0, 0] -> p = [0.6, 0.2, 0.2]; label 1, smoothing 0.3:
    // 0.7·(−ln 0.2) + 0.3·mean(−ln p)
    let logits = [3f64.ln(), 0.0, 0.0];
    let want = 0.7 * -(0.2f64.ln()) + 0.3 * -(0.6f64.ln() + 2.0 * 0.2f64.ln()) / 3.0;
    let mut d = [0.0; 3];
    let s = cross_entropy(&logits, &[1], 3, 0.3, Some(&mut d));
    assert!((s.loss - want).abs() < 1e-14, "{} vs {want}", s.loss);
    assert_eq!(s.correct, 0);
    // dlogits = p − target, target = [0.1, 0.8, 0.1]
    assert_close("dlogits", &d, &[0.5, -0.6, 0.1], 1e-14);
}
