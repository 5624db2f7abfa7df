//! Linear layer y = x · Wᵀ + b with PyTorch's weight layout W [out, in].
//!
//! Used for the patch embedding (after im2col), the fused QKV product, the attention
//! projection, both MLP layers and the head.

use super::matmul::{matmul, MatMut, MatRef, Par};
use super::Float;
use rayon::prelude::*;

/// y [R, O] = x [R, I] · w [O, I]ᵀ + b [O].
pub fn linear_forward<F: Float>(
    y: &mut [F],
    x: &[F],
    w: &[F],
    b: Option<&[F]>,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) {
    assert_eq!(y.len(), rows * out_dim, "linear_forward: y");
    // The bias is written first and the product accumulated onto it: one pass over y.
    if let Some(b) = b {
        assert_eq!(b.len(), out_dim, "linear_forward: b");
        y.par_chunks_mut(out_dim)
            .for_each(|row| row.copy_from_slice(b));
    }
    accumulate_product(y, x, w, b.is_some(), rows, in_dim, out_dim);
}

/// y [R, O] = residual [R, O] + x [R, I] · w [O, I]ᵀ + b [O]: a linear layer whose output
/// joins the residual stream (attention projection, fc2), fused into one pass over y.
#[allow(clippy::too_many_arguments)]
pub fn linear_residual_forward<F: Float>(
    y: &mut [F],
    residual: &[F],
    x: &[F],
    w: &[F],
    b: &[F],
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) {
    assert_eq!(y.len(), rows * out_dim, "linear_residual_forward: y");
    assert_eq!(
        residual.len(),
        rows * out_dim,
        "linear_residual_forward: residual"
    );
    assert_eq!(b.len(), out_dim, "linear_residual_forward: b");
    y.par_chunks_mut(out_dim)
        .zip(residual.par_chunks(out_dim))
        .for_each(|(yr, rr)| {
            for ((o, &r), &bias) in yr.iter_mut().zip(rr).zip(b) {
                *o = r + bias;
            }
        });
    accumulate_product(y, x, w, true, rows, in_dim, out_dim);
}

/// y (+)= x · wᵀ.
fn accumulate_product<F: Float>(
    y: &mut [F],
    x: &[F],
    w: &[F],
    accumulate: bool,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) {
    assert_eq!(x.len(), rows * in_dim, "linear: x");
    assert_eq!(w.len(), out_dim * in_dim, "linear: w");
    let wt = MatRef::rows(w, out_dim, in_dim).t();
    row_blocks(y, x, out_dim, in_dim, |yb, xb, r| {
        matmul(
            MatMut::rows(yb, r, out_dim),
            MatRef::rows(xb, r, in_dim),
            wt,
            F::one(),
            accumulate,
            Par::Serial,
        )
    });
}

/// Rows of one block in [`row_blocks`].
const ROW_BLOCK: usize = 512;

/// Runs `f(dst block, src block, rows)` over matching blocks of rows of dst [R, dst_cols]
/// and src [R, src_cols] in parallel. Products with many rows (R = B·T) and a modest
/// weight run fastest as independent single-threaded products over row blocks.
fn row_blocks<F: Float>(
    dst: &mut [F],
    src: &[F],
    dst_cols: usize,
    src_cols: usize,
    f: impl Fn(&mut [F], &[F], usize) + Sync + Send,
) {
    dst.par_chunks_mut(ROW_BLOCK * dst_cols)
        .zip(src.par_chunks(ROW_BLOCK * src_cols))
        .for_each(|(d, s)| f(d, s, d.len() / dst_cols));
}

/// Gradients of [`linear_forward`] given dy [R, O]:
/// dx [R, I] = dy · w (overwritten, or added with `accumulate_dx`; skipped when `None`),
/// dw [O, I] += dyᵀ · x, db [O] += Σ_r dy[r].
#[allow(clippy::too_many_arguments)]
pub fn linear_backward<F: Float>(
    dx: Option<&mut [F]>,
    accumulate_dx: bool,
    dw: &mut [F],
    db: Option<&mut [F]>,
    dy: &[F],
    x: &[F],
    w: &[F],
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) {
    assert_eq!(dy.len(), rows * out_dim, "linear_backward: dy");
    assert_eq!(x.len(), rows * in_dim, "linear_backward: x");
    assert_eq!(dw.len(), out_dim * in_dim, "linear_backward: dw");
    if let Some(dx) = dx {
        assert_eq!(dx.len(), rows * in_dim, "linear_backward: dx");
        let w = MatRef::rows(w, out_dim, in_dim);
        row_blocks(dx, dy, in_dim, out_dim, |dxb, dyb, r| {
            matmul(
                MatMut::rows(dxb, r, in_dim),
                MatRef::rows(dyb, r, out_dim),
                w,
                F::one(),
                accumulate_dx,
                Par::Serial,
            )
        });
    }
    if let Some(db) = &db {
        assert_eq!(db.len(), out_dim, "linear_backward: db");
    }
    weight_grad_into(dw, db, dy, x, in_dim, out_dim);
}

/// Rows of one partial product in [`weight_grad_into`]: fixed, so the summation order (and
/// the bits of the result) does not depend on the thread count.
const WEIGHT_GRAD_ROWS: usize = 1024;

/// dw [O, I] += dy [R, O]ᵀ · x [R, I] and db [O] += Σ_r dy[r]. The reduction over R is long
/// (B·T rows) and the output small, so the rows are split into fixed blocks whose products
/// (and bias sums, while the block of dy is in cache) run serially on separate threads and
/// are then added in block order.
fn weight_grad_into<F: Float>(
    dw: &mut [F],
    db: Option<&mut [F]>,
    dy: &[F],
    x: &[F],
    in_dim: usize,
    out_dim: usize,
) {
    let with_bias = db.is_some();
    let partials: Vec<(Vec<F>, Vec<F>)> = dy
        .par_chunks(WEIGHT_GRAD_ROWS * out_dim)
        .zip(x.par_chunks(WEIGHT_GRAD_ROWS * in_dim))
        .map(|(dyb, xb)| {
            let r = dyb.len() / out_dim;
            let mut pw = vec![F::zero(); out_dim * in_dim];
            let lhs = MatRef::rows(dyb, r, out_dim).t();
            matmul(
                MatMut::rows(&mut pw, out_dim, in_dim),
                lhs,
                MatRef::rows(xb, r, in_dim),
                F::one(),
                false,
                Par::Serial,
            );
            let mut pb = Vec::new();
            if with_bias {
                pb = vec![F::zero(); out_dim];
                for row in dyb.chunks_exact(out_dim) {
                    for (s, &v) in pb.iter_mut().zip(row) {
                        *s += v;
                    }
                }
            }
            (pw, pb)
        })
        .collect();
    let mut db = db;
    for (pw, pb) in partials {
        dw.par_chunks_mut(CHUNK_ADD)
            .zip(pw.par_chunks(CHUNK_ADD))
            .for_each(|(d, p)| {
                for (a, &b) in d.iter_mut().zip(p) {
                    *a += b;
                }
            });
        if let Some(db) = db.as_deref_mut() {
            for (a, &b) in db.iter_mut().zip(&pb) {
                *a += b;
            }
        }
    }
}

const CHUNK_ADD: usize = 1 << 14;

/// Rows per partial sum in column reductions. Fixed (not derived from the thread count) so
/// that results are bitwise identical whatever the number of threads.
pub const REDUCE_ROWS: usize = 64;

/// acc [C] += Σ_r m[r, :] for a row-major m [R, C], deterministic: partial sums over fixed
/// blocks of rows, then added in block order.
pub fn column_sums_into<F: Float>(acc: &mut [F], m: &[F], cols: usize) {
    let partials: Vec<Vec<F>> = m
        .par_chunks(REDUCE_ROWS * cols)
        .map(|block| {
            let mut p = vec![F::zero(); cols];
            for row in block.chunks_exact(cols) {
                for (s, &v) in p.iter_mut().zip(row) {
                    *s += v;
                }
            }
            p
        })
        .collect();
    for p in partials {
        for (a, v) in acc.iter_mut().zip(p) {
            *a += v;
        }
    }
}
