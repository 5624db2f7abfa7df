//! Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", 2020) and
//! the per-head maps of one image, as pure functions over the engines' probabilities.
//!
//! Shapes: T tokens (N patches, plus the class token first with `Pool::Cls`), H heads, L
//! blocks. A block's probabilities for one image are [H, T, T], row i the softmax of query i
//! over the T keys.

use crate::model::Pool;

/// Attention rollout of one image: `blocks[l]` is block l's probabilities [H, T, T]. Per block
/// A = mean over heads [T, T]; Â = 0.5·A + 0.5·I with each row renormalised to sum 1 (the
/// residual connection); returns R = Â_L · … · Â_1, [T, T] row-major. Row i of R is how much
/// the output at token i draws on each input token through all blocks.
pub fn rollout(blocks: &[&[f32]], heads: usize, tokens: usize) -> Vec<f64> {
    let t = tokens;
    let mut r = identity(t);
    for (l, probs) in blocks.iter().enumerate() {
        assert_eq!(
            probs.len(),
            heads * t * t,
            "rollout: block {l} probabilities"
        );
        let a = residual_mixed(&head_mean(probs, heads, t), t);
        r = matmul(&a, &r, t); // Â_l · (Â_{l-1} · … · Â_1)
    }
    r
}

/// The mean over heads of [H, T, T] probabilities: [T, T].
pub fn head_mean(probs: &[f32], heads: usize, tokens: usize) -> Vec<f64> {
    let tt = tokens * tokens;
    let mut mean = vec![0.0f64; tt];
    for head in probs.chunks_exact(tt) {
        for (m, &p) in mean.iter_mut().zip(head) {
            *m += f64::from(p);
        }
    }
    let inv = 1.0 / heads as f64;
    mean.iter_mut().for_each(|m| *m *= inv);
    mean
}

/// 0.5·A + 0.5·I, rows renormalised to sum 1 (a row of A summing to 0 stays the identity's).
fn residual_mixed(a: &[f64], t: usize) -> Vec<f64> {
    let mut out = a.to_vec();
    for (i, row) in out.chunks_exact_mut(t).enumerate() {
        row.iter_mut().for_each(|v| *v *= 0.5);
        row[i] += 0.5;
        let sum: f64 = row.iter().sum();
        if sum > 0.0 {
            row.iter_mut().for_each(|v| *v /= sum);
        }
    }
    out
}

fn identity(t: usize) -> Vec<f64> {
    let mut m = vec![0.0; t * t];
    for i in 0..t {
        m[i * t + i] = 1.0;
    }
    m
}

/// a · b for [T, T] row-major matrices.
fn matmul(a: &[f64], b: &[f64], t: usize) -> Vec<f64> {
    let mut c = vec![0.0; t * t];
    for (c_row, a_row) in c.chunks_exact_mut(t).zip(a.chunks_exact(t)) {
        for (&a_ik, b_row) in a_row.iter().zip(b.chunks_exact(t)) {
            for (c_ij, &b_kj) in c_row.iter_mut().zip(b_row) {
                *c_ij += a_ik * b_kj;
            }
        }
    }
    c
}

/// The row of a [T, T] map that stands for the whole image, [T]: the class token's row with
/// `Pool::Cls`; with `Pool::Mean` (no class token; the head reads the mean token) the mean of
/// the rows, i.e. the mean attention each token receives.
pub fn image_row(map: &[f64], tokens: usize, pool: Pool) -> Vec<f64> {
    assert_eq!(map.len(), tokens * tokens, "image_row: map");
    match pool {
        Pool::Cls => map[..tokens].to_vec(),
        Pool::Mean => {
            let mut row = vec![0.0; tokens];
            for r in map.chunks_exact(tokens) {
                row.iter_mut().zip(r).for_each(|(s, v)| *s += v);
            }
            row.iter_mut().for_each(|s| *s /= tokens as f64);
            row
        }
    }
}

/// The patch entries of a row over T tokens, [N] in the patch grid's row-major order: the
/// class token's entry (first) dropped with `Pool::Cls`.
pub fn patch_values(row: &[f64], pool: Pool) -> &[f64] {
    match pool {
        Pool::Cls => &row[1..],
        Pool::Mean => row,
    }
}

/// The map of each head of one block's probabilities [H, T, T]: [H][N], the image row
/// ([`image_row`]) of the head's [T, T] over the patches.
pub fn head_maps(probs: &[f32], heads: usize, tokens: usize, pool: Pool) -> Vec<Vec<f64>> {
    assert_eq!(probs.len(), heads * tokens * tokens, "head_maps: probs");
    probs
        .chunks_exact(tokens * tokens)
        .map(|p| {
            let p: Vec<f64> = p.iter().map(|&v| f64::from(v)).collect();
            patch_values(&image_row(&p, tokens, pool), pool).to_vec()
        })
        .collect()
}

/// `values` scaled to [0, 1] for display: (v − min) / (max − min); all zeros when they are all
/// equal (nothing stands out) or not finite.
pub fn normalise(values: &[f64]) -> Vec<f64> {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = max - min;
    if !(span > 0.0 && span.is_finite()) {
        return vec![0.0; values.len()];
    }
    values.iter().map(|v| (v - min) / span).collect()
}
