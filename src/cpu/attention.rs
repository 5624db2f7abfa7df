//! Multi-head softmax attention over the fused QKV activations.
//!
//! qkv [B, T, 3D] holds, per token, q | k | v, each split into H heads of hd = D/H
//! (timm's layout: head h of q is columns h·hd..(h+1)·hd). Per (batch, head):
//! S = scale · Q Kᵀ [T, T], P = softmax(S) (saved), O = P V, written to out [B, T, D] at the
//! head's columns (the input layout of the projection).

use super::matmul::{matmul, MatMut, MatRef, Par};
use super::reduce::{sum_map, sum_map3};
use super::Float;
use rayon::prelude::*;

/// Shape of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub batch: usize,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    fn dim(&self) -> usize {
        self.heads * self.head_dim
    }
    fn scale<F: Float>(&self) -> F {
        F::one() / F::of(self.head_dim as f64).sqrt()
    }
}

/// Forward: out [B, T, D], probs [B, H, T, T] from qkv [B, T, 3D].
/// Parallel over the batch; heads run serially inside each batch element.
pub fn attention_forward<F: Float>(out: &mut [F], probs: &mut [F], qkv: &[F], s: AttnShape) {
    let (t, d, hd) = (s.tokens, s.dim(), s.head_dim);
    assert_eq!(qkv.len(), s.batch * t * 3 * d, "attention_forward: qkv");
    assert_eq!(out.len(), s.batch * t * d, "attention_forward: out");
    assert_eq!(
        probs.len(),
        s.batch * s.heads * t * t,
        "attention_forward: probs"
    );
    let scale = s.scale::<F>();
    out.par_chunks_mut(t * d)
        .zip(probs.par_chunks_mut(s.heads * t * t))
        .zip(qkv.par_chunks(t * 3 * d))
        .for_each(|((out_b, probs_b), qkv_b)| {
            for (h, p) in probs_b.chunks_exact_mut(t * t).enumerate() {
                let q = MatRef::strided(&qkv_b[h * hd..], t, hd, 3 * d);
                let k = MatRef::strided(&qkv_b[d + h * hd..], t, hd, 3 * d);
                let v = MatRef::strided(&qkv_b[2 * d + h * hd..], t, hd, 3 * d);
                matmul(MatMut::rows(p, t, t), q, k.t(), scale, false, Par::Serial);
                for row in p.chunks_exact_mut(t) {
                    softmax_in_place(row);
                }
                let o = MatMut::strided(&mut out_b[h * hd..], t, hd, d);
                matmul(o, MatRef::rows(p, t, t), v, F::one(), false, Par::Serial);
            }
        });
}

/// Numerically stable softmax of one row, in place.
pub fn softmax_in_place<F: Float>(row: &mut [F]) {
    let max = row.iter().copied().fold(F::neg_infinity(), F::max);
    for v in row.iter_mut() {
        *v = (*v - max).exp_neg();
    }
    let inv = F::one() / sum_map(row, |v| v);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// Backward: dqkv [B, T, 3D] (overwritten) from dout [B, T, D], the saved probs and qkv.
/// Per (b, h): dP = dO Vᵀ, dV = Pᵀ dO, dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale,
/// dQ = dS K, dK = dSᵀ Q.
pub fn attention_backward<F: Float>(
    dqkv: &mut [F],
    dout: &[F],
    probs: &[F],
    qkv: &[F],
    s: AttnShape,
) {
    let (t, d, hd) = (s.tokens, s.dim(), s.head_dim);
    assert_eq!(dqkv.len(), s.batch * t * 3 * d, "attention_backward: dqkv");
    assert_eq!(qkv.len(), s.batch * t * 3 * d, "attention_backward: qkv");
    assert_eq!(dout.len(), s.batch * t * d, "attention_backward: dout");
    assert_eq!(
        probs.len(),
        s.batch * s.heads * t * t,
        "attention_backward: probs"
    );
    let scale = s.scale::<F>();
    dqkv.par_chunks_mut(t * 3 * d)
        .zip(dout.par_chunks(t * d))
        .zip(
            probs
                .par_chunks(s.heads * t * t)
                .zip(qkv.par_chunks(t * 3 * d)),
        )
        .for_each_init(
            || vec![F::zero(); t * t],
            |ds, ((dqkv_b, dout_b), (probs_b, qkv_b))| {
                for (h, p) in probs_b.chunks_exact(t * t).enumerate() {
                    let p_mat = MatRef::rows(p, t, t);
                    let q = MatRef::strided(&qkv_b[h * hd..], t, hd, 3 * d);
                    let k = MatRef::strided(&qkv_b[d + h * hd..], t, hd, 3 * d);
                    let v = MatRef::strided(&qkv_b[2 * d + h * hd..], t, hd, 3 * d);
                    let d_o = MatRef::strided(&dout_b[h * hd..], t, hd, d);
                    // dV = Pᵀ dO
                    let dv = MatMut::strided(&mut dqkv_b[2 * d + h * hd..], t, hd, 3 * d);
                    matmul(dv, p_mat.t(), d_o, F::one(), false, Par::Serial);
                    // dP = dO Vᵀ, then the softmax backward in place: dS = P ⊙ (dP − Σ dP⊙P)
                    matmul(
                        MatMut::rows(ds, t, t),
                        d_o,
                        v.t(),
                        F::one(),
                        false,
                        Par::Serial,
                    );
                    for (ds_row, p_row) in ds.chunks_exact_mut(t).zip(p.chunks_exact(t)) {
                        let dot = sum_map3(ds_row, p_row, p_row, |g, pv, _| g * pv);
                        for (g, &pv) in ds_row.iter_mut().zip(p_row) {
                            *g = pv * (*g - dot);
                        }
                    }
                    let ds_mat = MatRef::rows(&ds[..], t, t);
                    // dQ = scale · dS K, dK = scale · dSᵀ Q
                    let dq = MatMut::strided(&mut dqkv_b[h * hd..], t, hd, 3 * d);
                    matmul(dq, ds_mat, k, scale, false, Par::Serial);
                    let dk = MatMut::strided(&mut dqkv_b[d + h * hd..], t, hd, 3 * d);
                    matmul(dk, ds_mat.t(), q, scale, false, Par::Serial);
                }
            },
        );
}
