//! Every op's backward against central finite differences in f64, on shapes that are not
//! powers of two. Each loss is L = Σ out ⊙ G for a random G, so dL/dout = G.

mod common;

use common::{assert_close, dot, fd_grad, rand_vec, FD_STEP, GRAD_TOL};
use vitk::cpu::attention::{attention_backward, attention_forward, AttnShape};
use vitk::cpu::drop_path::{drop_path_add, drop_path_backward, drop_path_scales};
use vitk::cpu::gelu::{gelu_backward, gelu_forward};
use vitk::cpu::layernorm::{layernorm_backward, layernorm_forward};
use vitk::cpu::linear::{linear_backward, linear_forward, linear_residual_forward};
use vitk::cpu::loss::cross_entropy;
use vitk::cpu::pooling::{pool_backward, pool_forward};
use vitk::cpu::soft_loss::soft_target_cross_entropy;
use vitk::cpu::tokens::{tokens_backward, tokens_forward};
use vitk::model::Pool;

#[test]
fn linear_gradients() {
    let (rows, i, o) = (5, 7, 6);
    let x = rand_vec(rows * i, 1, 1.0);
    let w = rand_vec(o * i, 2, 1.0);
    let b = rand_vec(o, 3, 1.0);
    let g = rand_vec(rows * o, 4, 1.0);
    let loss = |x: &[f64], w: &[f64], b: &[f64]| {
        let mut y = vec![0.0; rows * o];
        linear_forward(&mut y, x, w, Some(b), rows, i, o);
        dot(&y, &g)
    };
    let (mut dx, mut dw, mut db) = (vec![0.0; rows * i], vec![0.0; o * i], vec![0.0; o]);
    linear_backward(
        Some(&mut dx),
        false,
        &mut dw,
        Some(&mut db),
        &g,
        &x,
        &w,
        rows,
        i,
        o,
    );
    assert_close(
        "linear dx",
        &dx,
        &fd_grad(&x, FD_STEP, |v| loss(v, &w, &b)),
        GRAD_TOL,
    );
    assert_close(
        "linear dw",
        &dw,
        &fd_grad(&w, FD_STEP, |v| loss(&x, v, &b)),
        GRAD_TOL,
    );
    assert_close(
        "linear db",
        &db,
        &fd_grad(&b, FD_STEP, |v| loss(&x, &w, v)),
        GRAD_TOL,
    );

    // Accumulating variants add onto what is there.
    let mut dx2 = vec![1.0; rows * i];
    let mut dw2 = vec![1.0; o * i];
    linear_backward(Some(&mut dx2), true, &mut dw2, None, &g, &x, &w, rows, i, o);
    let plus_one = |v: &[f64]| v.iter().map(|a| a + 1.0).collect::<Vec<_>>();
    assert_close("linear dx accumulate", &dx2, &plus_one(&dx), 1e-14);
    assert_close("linear dw accumulate", &dw2, &plus_one(&dw), 1e-14);
}

#[test]
fn linear_residual_gradients() {
    let (rows, i, o) = (3, 5, 7);
    let x = rand_vec(rows * i, 5, 1.0);
    let res = rand_vec(rows * o, 6, 1.0);
    let w = rand_vec(o * i, 7, 1.0);
    let b = rand_vec(o, 8, 1.0);
    let g = rand_vec(rows * o, 9, 1.0);
    let loss = |res: &[f64], x: &[f64]| {
        let mut y = vec![0.0; rows * o];
        linear_residual_forward(&mut y, res, x, &w, &b, rows, i, o);
        dot(&y, &g)
    };
    // The residual's gradient is the output gradient itself.
    assert_close(
        "residual d(residual)",
        &g,
        &fd_grad(&res, FD_STEP, |v| loss(v, &x)),
        GRAD_TOL,
    );
    let mut dx = vec![0.0; rows * i];
    let mut dw = vec![0.0; o * i];
    linear_backward(Some(&mut dx), false, &mut dw, None, &g, &x, &w, rows, i, o);
    assert_close(
        "residual dx",
        &dx,
        &fd_grad(&x, FD_STEP, |v| loss(&res, v)),
        GRAD_TOL,
    );
}

#[test]
fn layernorm_gradients() {
    let (rows, d) = (67, 7); // more rows than one reduction block (64)
    let x = rand_vec(rows * d, 10, 2.0);
    let w = rand_vec(d, 11, 1.5);
    let b = rand_vec(d, 12, 1.0);
    let g = rand_vec(rows * d, 13, 1.0);
    let loss = |x: &[f64], w: &[f64], b: &[f64]| {
        let (mut y, mut m, mut r) = (vec![0.0; rows * d], vec![0.0; rows], vec![0.0; rows]);
        layernorm_forward(&mut y, &mut m, &mut r, x, w, b, d);
        dot(&y, &g)
    };
    let (mut y, mut m, mut r) = (vec![0.0; rows * d], vec![0.0; rows], vec![0.0; rows]);
    layernorm_forward(&mut y, &mut m, &mut r, &x, &w, &b, d);
    let (mut dx, mut dw, mut db) = (vec![0.0; rows * d], vec![0.0; d], vec![0.0; d]);
    layernorm_backward(&mut dx, &mut dw, &mut db, &g, &x, &m, &r, &w, d);
    assert_close(
        "layernorm dx",
        &dx,
        &fd_grad(&x, FD_STEP, |v| loss(v, &w, &b)),
        GRAD_TOL,
    );
    assert_close(
        "layernorm dweight",
        &dw,
        &fd_grad(&w, FD_STEP, |v| loss(&x, v, &b)),
        GRAD_TOL,
    );
    assert_close(
        "layernorm dbias",
        &db,
        &fd_grad(&b, FD_STEP, |v| loss(&x, &w, v)),
        GRAD_TOL,
    );
}

#[test]
fn gelu_gradients() {
    let x = rand_vec(37, 14, 4.0);
    let g = rand_vec(37, 15, 1.0);
    let loss = |x: &[f64]| {
        let mut y = vec![0.0; x.len()];
        gelu_forward(&mut y, x);
        dot(&y, &g)
    };
    let mut dx = vec![0.0; 37];
    gelu_backward(&mut dx, &g, &x);
    assert_close("gelu dx", &dx, &fd_grad(&x, FD_STEP, loss), GRAD_TOL);
}

#[test]
fn attention_gradients() {
    let s = AttnShape {
        batch: 2,
        tokens: 5,
        heads: 3,
        head_dim: 2,
    };
    let d = s.heads * s.head_dim;
    let qkv = rand_vec(s.batch * s.tokens * 3 * d, 16, 1.5);
    let g = rand_vec(s.batch * s.tokens * d, 17, 1.0);
    let forward = |qkv: &[f64]| {
        let mut out = vec![0.0; s.batch * s.tokens * d];
        let mut probs = vec![0.0; s.batch * s.heads * s.tokens * s.tokens];
        attention_forward(&mut out, &mut probs, qkv, s);
        (out, probs)
    };
    let (_, probs) = forward(&qkv);
    let mut dqkv = vec![f64::NAN; qkv.len()]; // fully overwritten
    attention_backward(&mut dqkv, &g, &probs, &qkv, s);
    let fd = fd_grad(&qkv, FD_STEP, |v| dot(&forward(v).0, &g));
    assert_close("attention dqkv", &dqkv, &fd, GRAD_TOL);
}

#[test]
fn token_assembly_gradients() {
    for with_cls in [true, false] {
        let (b, n, d) = (3, 5, 7);
        let t = n + usize::from(with_cls);
        let patch = rand_vec(b * n * d, 18, 1.0);
        let pos = rand_vec(t * d, 19, 1.0);
        let cls = rand_vec(d, 20, 1.0);
        let g = rand_vec(b * t * d, 21, 1.0);
        let loss = |patch: &[f64], pos: &[f64], cls: &[f64]| {
            let mut x = vec![0.0; b * t * d];
            tokens_forward(&mut x, patch, pos, with_cls.then_some(cls), d);
            dot(&x, &g)
        };
        let (mut dpatch, mut dpos, mut dcls) =
            (vec![0.0; b * n * d], vec![0.0; t * d], vec![0.0; d]);
        tokens_backward(
            &mut dpatch,
            &mut dpos,
            with_cls.then_some(&mut dcls[..]),
            &g,
            d,
        );
        let tag = if with_cls { "cls" } else { "no cls" };
        assert_close(
            &format!("tokens dpatch ({tag})"),
            &dpatch,
            &fd_grad(&patch, FD_STEP, |v| loss(v, &pos, &cls)),
            GRAD_TOL,
        );
        assert_close(
            &format!("tokens dpos ({tag})"),
            &dpos,
            &fd_grad(&pos, FD_STEP, |v| loss(&patch, v, &cls)),
            GRAD_TOL,
        );
        if with_cls {
            let fd = fd_grad(&cls, FD_STEP, |v| loss(&patch, &pos, v));
            assert_close("tokens dcls", &dcls, &fd, GRAD_TOL);
        }
    }
}

#[test]
fn pooling_gradients() {
    for pool in [Pool::Cls, Pool::Mean] {
        let (b, t, d) = (3, 5, 7);
        let x = rand_vec(b * t * d, 22, 1.0);
        let g = rand_vec(b * d, 23, 1.0);
        let loss = |x: &[f64]| {
            let mut p = vec![0.0; b * d];
            pool_forward(&mut p, x, t, d, pool);
            dot(&p, &g)
        };
        let mut dx = vec![f64::NAN; b * t * d]; // fully overwritten
        pool_backward(&mut dx, &g, t, d, pool);
        assert_close(
            &format!("pool dx ({pool})"),
            &dx,
            &fd_grad(&x, FD_STEP, loss),
            GRAD_TOL,
        );
    }
}

#[test]
fn cross_entropy_gradients() {
    for smoothing in [0.0, 0.1] {
        let (b, k) = (4, 7);
        let logits = rand_vec(b * k, 24, 3.0);
        let labels = [0u32, 6, 3, 3];
        let mut dlogits = vec![0.0; b * k];
        cross_entropy(&logits, &labels, k, smoothing, Some(&mut dlogits));
        let fd = fd_grad(&logits, FD_STEP, |v| {
            cross_entropy(v, &labels, k, smoothing, None).loss
        });
        assert_close(
            &format!("cross-entropy dlogits (smoothing {smoothing})"),
            &dlogits,
            &fd,
            GRAD_TOL,
        );
    }
}

#[test]
fn soft_target_cross_entropy_gradients() {
    let (b, k) = (5, 9);
    let logits = rand_vec(b * k, 25, 3.0);
    // Targets as mixup makes them (rows summing to one, two classes dominant) and arbitrary
    // non-negative ones that do not sum to one: the gradient is autograd's exact p·Σt − t.
    let mixed: Vec<f64> = (0..b * k)
        .map(|i| {
            let (row, col) = (i / k, i % k);
            let off = 0.1 / k as f64;
            let on = |c: usize| if col == c { 0.9 + off } else { off };
            0.7 * on(row % k) + 0.3 * on((row * 4 + 2) % k)
        })
        .collect();
    let loose: Vec<f64> = rand_vec(b * k, 26, 1.0).iter().map(|v| v.abs()).collect();
    for (what, targets) in [("mixed", &mixed), ("unnormalised", &loose)] {
        let mut dlogits = vec![f64::NAN; b * k]; // fully overwritten
        soft_target_cross_entropy(&logits, targets, k, Some(&mut dlogits));
        let fd = fd_grad(&logits, FD_STEP, |v| {
            soft_target_cross_entropy(v, targets, k, None).loss
        });
        assert_close(
            &format!("soft cross-entropy dlogits ({what} targets)"),
            &dlogits,
            &fd,
            GRAD_TOL,
        );
    }
}

#[test]
fn soft_target_cross_entropy_of_one_hot_targets_is_the_hard_loss() {
    let (b, k) = (4, 7);
    let logits = rand_vec(b * k, 27, 3.0);
    let labels = [0u32, 6, 3, 3];
    for smoothing in [0.0, 0.1] {
        let targets: Vec<f64> = (0..b * k)
            .map(|i| {
                let off = smoothing / k as f64;
                if i % k == labels[i / k] as usize {
                    1.0 - smoothing + off
                } else {
                    off
                }
            })
            .collect();
        let (mut soft_d, mut hard_d) = (vec![0.0; b * k], vec![0.0; b * k]);
        let soft = soft_target_cross_entropy(&logits, &targets, k, Some(&mut soft_d));
        let hard = cross_entropy(&logits, &labels, k, smoothing, Some(&mut hard_d));
        assert_close("soft vs hard loss", &[soft.loss], &[hard.loss], 1e-14);
        assert_close("soft vs hard dlogits", &soft_d, &hard_d, 1e-14);
        assert_eq!(soft.correct, hard.correct);
    }
}

#[test]
fn drop_path_gradients() {
    let (b, t, d) = (5, 3, 7);
    let x = rand_vec(b * t * d, 28, 1.0);
    let f = rand_vec(b * t * d, 29, 1.0);
    let g = rand_vec(b * t * d, 30, 1.0);
    let p = 0.3;
    let keep = [true, false, true, true, false];
    let scales: Vec<f64> = drop_path_scales(&keep, p);
    assert_eq!(scales[0], 1.0 / 0.7);
    assert_eq!(scales[1], 0.0);
    let loss = |x: &[f64], f: &[f64]| {
        let mut y = x.to_vec();
        drop_path_add(&mut y, f, &scales);
        dot(&y, &g)
    };
    let mut df = vec![f64::NAN; b * t * d]; // fully overwritten
    drop_path_backward(&mut df, &g, &scales);
    assert_close(
        "drop-path dbranch",
        &df,
        &fd_grad(&f, FD_STEP, |v| loss(&x, v)),
        GRAD_TOL,
    );
    // The residual passes its gradient through unchanged.
    assert_close(
        "drop-path dx",
        &g,
        &fd_grad(&x, FD_STEP, |v| loss(v, &f)),
        GRAD_TOL,
    );
    // A dropped sample's branch gets no gradient, and its output is the residual itself.
    let mut y = x.clone();
    drop_path_add(&mut y, &f, &scales);
    let per = t * d;
    assert!(df[per..2 * per].iter().all(|&v| v == 0.0));
    assert_eq!(&y[per..2 * per], &x[per..2 * per]);
}
