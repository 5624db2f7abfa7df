//! Plain f64 reference implementations of every op, written as the textbook loops (no
//! blocking, no parallelism, no shared code with src/cpu), for the model-scale tests: an op
//! that mishandles its row blocks, chunks or tiles disagrees with these at O(1).
#![allow(dead_code, clippy::needless_range_loop)]

/// erfc-based Φ(x): keeps full relative precision in the lower tail, where 1 + erf cancels.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x * std::f64::consts::FRAC_1_SQRT_2)
}

pub fn normal_pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

pub fn gelu(x: f64) -> f64 {
    x * normal_cdf(x)
}

pub fn gelu_grad(x: f64) -> f64 {
    normal_cdf(x) + x * normal_pdf(x)
}

/// y [R, O] = x [R, I] · w [O, I]ᵀ (+ b).
pub fn linear(x: &[f64], w: &[f64], b: Option<&[f64]>, r: usize, i: usize, o: usize) -> Vec<f64> {
    let mut y = vec![0.0; r * o];
    for row in 0..r {
        for col in 0..o {
            let mut s = b.map_or(0.0, |b| b[col]);
            for k in 0..i {
                s += x[row * i + k] * w[col * i + k];
            }
            y[row * o + col] = s;
        }
    }
    y
}

/// Σ_k |x[row, k]| |w[col, k]| for every output of [`linear`]: what the rounding error of a
/// floating-point dot product is proportional to (Higham, Accuracy and Stability, §3.1).
pub fn linear_abs(
    x: &[f64],
    w: &[f64],
    b: Option<&[f64]>,
    r: usize,
    i: usize,
    o: usize,
) -> Vec<f64> {
    let ax: Vec<f64> = x.iter().map(|v| v.abs()).collect();
    let aw: Vec<f64> = w.iter().map(|v| v.abs()).collect();
    let ab: Option<Vec<f64>> = b.map(|b| b.iter().map(|v| v.abs()).collect());
    linear(&ax, &aw, ab.as_deref(), r, i, o)
}

/// [R, C] transposed to [C, R].
pub fn transpose(m: &[f64], r: usize, c: usize) -> Vec<f64> {
    let mut t = vec![0.0; m.len()];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = m[i * c + j];
        }
    }
    t
}

/// Gradients of [`linear`]: dx [R, I] = dy · w, dw [O, I] = dyᵀ · x, db [O] = Σ_r dy.
pub fn linear_grads(
    dy: &[f64],
    x: &[f64],
    w: &[f64],
    r: usize,
    i: usize,
    o: usize,
) -> [Vec<f64>; 3] {
    let dx = linear(dy, &transpose(w, o, i), None, r, o, i);
    let dw = linear(&transpose(dy, r, o), &transpose(x, r, i), None, o, r, i);
    let mut db = vec![0.0; o];
    for row in dy.chunks(o) {
        for (s, v) in db.iter_mut().zip(row) {
            *s += v;
        }
    }
    [dx, dw, db]
}

/// LayerNorm rows of width `d` with eps 1e-6: (out, mean, rstd).
pub fn layernorm(x: &[f64], w: &[f64], b: &[f64], d: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut out, mut mean, mut rstd) = (vec![0.0; x.len()], vec![], vec![]);
    for (row, o) in x.chunks(d).zip(out.chunks_mut(d)) {
        let m = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / d as f64;
        let rs = 1.0 / (var + 1e-6).sqrt();
        for c in 0..d {
            o[c] = (row[c] - m) * rs * w[c] + b[c];
        }
        mean.push(m);
        rstd.push(rs);
    }
    (out, mean, rstd)
}

/// Gradients of [`layernorm`] given dout: (dx, dweight, dbias), not accumulated.
pub fn layernorm_grads(dout: &[f64], x: &[f64], w: &[f64], d: usize) -> [Vec<f64>; 3] {
    let (_, mean, rstd) = layernorm(x, w, &vec![0.0; d], d);
    let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; d], vec![0.0; d]);
    for (r, (xr, gr)) in x.chunks(d).zip(dout.chunks(d)).enumerate() {
        let xhat: Vec<f64> = xr.iter().map(|v| (v - mean[r]) * rstd[r]).collect();
        let g: Vec<f64> = (0..d).map(|c| gr[c] * w[c]).collect();
        let mg = g.iter().sum::<f64>() / d as f64;
        let mgx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / d as f64;
        for c in 0..d {
            dx[r * d + c] = rstd[r] * (g[c] - mg - xhat[c] * mgx);
            dw[c] += gr[c] * xhat[c];
            db[c] += gr[c];
        }
    }
    [dx, dw, db]
}

/// Attention of token-major qkv [B, T, 3D]: (out [B, T, D], probs [B, H, T, T]).
pub fn attention(qkv: &[f64], b: usize, t: usize, h: usize, hd: usize) -> (Vec<f64>, Vec<f64>) {
    let d = h * hd;
    let scale = 1.0 / (hd as f64).sqrt();
    let at = |bi: usize, ti: usize, s: usize, hi: usize, e: usize| {
        qkv[(bi * t + ti) * 3 * d + s * d + hi * hd + e]
    };
    let mut out = vec![0.0; b * t * d];
    let mut probs = vec![0.0; b * h * t * t];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..t {
                let p = &mut probs[((bi * h + hi) * t + i) * t..][..t];
                for j in 0..t {
                    p[j] = scale
                        * (0..hd)
                            .map(|e| at(bi, i, 0, hi, e) * at(bi, j, 1, hi, e))
                            .sum::<f64>();
                }
                let mx = p.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = p.iter().map(|s| (s - mx).exp()).sum();
                for v in p.iter_mut() {
                    *v = (*v - mx).exp() / z;
                }
                for e in 0..hd {
                    out[(bi * t + i) * d + hi * hd + e] =
                        (0..t).map(|j| p[j] * at(bi, j, 2, hi, e)).sum();
                }
            }
        }
    }
    (out, probs)
}

/// Gradient of [`attention`] with respect to qkv, given dout [B, T, D].
pub fn attention_grad(
    qkv: &[f64],
    dout: &[f64],
    b: usize,
    t: usize,
    h: usize,
    hd: usize,
) -> Vec<f64> {
    let d = h * hd;
    let scale = 1.0 / (hd as f64).sqrt();
    let (_, probs) = attention(qkv, b, t, h, hd);
    let idx = |bi: usize, ti: usize, s: usize, hi: usize, e: usize| {
        (bi * t + ti) * 3 * d + s * d + hi * hd + e
    };
    let mut g = vec![0.0; qkv.len()];
    for bi in 0..b {
        for hi in 0..h {
            let p = &probs[(bi * h + hi) * t * t..][..t * t];
            let dov = |i: usize, e: usize| dout[(bi * t + i) * d + hi * hd + e];
            // dP = dO Vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P))
            let mut ds = vec![0.0; t * t];
            for i in 0..t {
                for j in 0..t {
                    ds[i * t + j] = (0..hd).map(|e| dov(i, e) * qkv[idx(bi, j, 2, hi, e)]).sum();
                }
                let dot: f64 = (0..t).map(|j| ds[i * t + j] * p[i * t + j]).sum();
                for j in 0..t {
                    ds[i * t + j] = p[i * t + j] * (ds[i * t + j] - dot);
                }
            }
            for i in 0..t {
                for e in 0..hd {
                    g[idx(bi, i, 0, hi, e)] = scale
                        * (0..t)
                            .map(|j| ds[i * t + j] * qkv[idx(bi, j, 1, hi, e)])
                            .sum::<f64>();
                    g[idx(bi, i, 1, hi, e)] = scale
                        * (0..t)
                            .map(|j| ds[j * t + i] * qkv[idx(bi, j, 0, hi, e)])
                            .sum::<f64>();
                    g[idx(bi, i, 2, hi, e)] = (0..t).map(|j| p[j * t + i] * dov(j, e)).sum();
                }
            }
        }
    }
    g
}

/// Softmax cross-entropy with label smoothing: (mean loss, correct count, dlogits).
pub fn cross_entropy(logits: &[f64], labels: &[u32], k: usize, eps: f64) -> (f64, usize, Vec<f64>) {
    let b = labels.len();
    let mut loss = 0.0;
    let mut correct = 0;
    let mut dl = vec![0.0; logits.len()];
    for (r, row) in logits.chunks(k).enumerate() {
        let y = labels[r] as usize;
        let mut arg = 0;
        for c in 1..k {
            if row[c] > row[arg] {
                arg = c;
            }
        }
        correct += usize::from(arg == y);
        let mx = row[arg];
        let lse = row.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
        let mean = row.iter().sum::<f64>() / k as f64;
        loss += (1.0 - eps) * ((mx - row[y]) + lse) + eps * ((mx - mean) + lse);
        for c in 0..k {
            let target = eps / k as f64 + if c == y { 1.0 - eps } else { 0.0 };
            dl[r * k + c] = (((row[c] - mx) - lse).exp() - target) / b as f64;
        }
    }
    (loss / b as f64, correct, dl)
}

/// im2col of images [B, C, S, S] into patches [B·N, C·P·P], column order (c, ky, kx).
pub fn im2col(images: &[f64], b: usize, c: usize, (h, w): (usize, usize), p: usize) -> Vec<f64> {
    let (gh, gw) = (h / p, w / p);
    let mut out = Vec::with_capacity(b * gh * gw * c * p * p);
    for bi in 0..b {
        for py in 0..gh {
            for px in 0..gw {
                for ci in 0..c {
                    for ky in 0..p {
                        for kx in 0..p {
                            out.push(images[((bi * c + ci) * h + py * p + ky) * w + px * p + kx]);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Tokens x [B, T, D] = [cls] + patch [B, N, D], plus pos [T, D].
pub fn tokens(
    patch: &[f64],
    pos: &[f64],
    cls: Option<&[f64]>,
    b: usize,
    n: usize,
    d: usize,
) -> Vec<f64> {
    let prefix = usize::from(cls.is_some());
    let t = n + prefix;
    let mut x = vec![0.0; b * t * d];
    for bi in 0..b {
        for ti in 0..t {
            for c in 0..d {
                let e = if ti < prefix {
                    cls.unwrap()[c]
                } else {
                    patch[(bi * n + ti - prefix) * d + c]
                };
                x[(bi * t + ti) * d + c] = e + pos[ti * d + c];
            }
        }
    }
    x
}

/// Gradients of [`tokens`]: (dpatch, dpos, dcls).
pub fn tokens_grads(dx: &[f64], b: usize, t: usize, d: usize, cls: bool) -> [Vec<f64>; 3] {
    let prefix = usize::from(cls);
    let mut dpatch = Vec::with_capacity(b * (t - prefix) * d);
    let (mut dpos, mut dcls) = (vec![0.0; t * d], vec![0.0; d]);
    for bi in 0..b {
        for ti in 0..t {
            let row = &dx[(bi * t + ti) * d..][..d];
            if ti >= prefix {
                dpatch.extend_from_slice(row);
            } else {
                dcls.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
            dpos[ti * d..][..d]
                .iter_mut()
                .zip(row)
                .for_each(|(a, v)| *a += v);
        }
    }
    [dpatch, dpos, dcls]
}

/// Pooling of x [B, T, D]: token 0, or the mean over tokens.
pub fn pool(x: &[f64], b: usize, t: usize, d: usize, mean: bool) -> Vec<f64> {
    let mut out = vec![0.0; b * d];
    for bi in 0..b {
        for c in 0..d {
            out[bi * d + c] = if mean {
                (0..t).map(|ti| x[(bi * t + ti) * d + c]).sum::<f64>() / t as f64
            } else {
                x[bi * t * d + c]
            };
        }
    }
    out
}

/// Gradient of [`pool`] given dpooled [B, D].
pub fn pool_grad(dp: &[f64], b: usize, t: usize, d: usize, mean: bool) -> Vec<f64> {
    let mut dx = vec![0.0; b * t * d];
    for bi in 0..b {
        for ti in 0..t {
            for c in 0..d {
                dx[(bi * t + ti) * d + c] = if mean {
                    dp[bi * d + c] / t as f64
                } else if ti == 0 {
                    dp[bi * d + c]
                } else {
                    0.0
                };
            }
        }
    }
    dx
}

/// Logits [B, K] (K ≥ 4, B ≥ 16) and labels with the cases a loss kernel gets wrong first:
/// rows 0 and 1 an exact tie between classes 1 and 2 labelled 1, row 2 the same tie labelled 2
/// (the first arg-max counts: rows 0 and 1 correct, row 2 wrong), rows 3 and 4 all equal
/// labelled 0 (correct) and K − 1 (wrong): the rows are not symmetric, so a kernel that breaks
/// ties the other way, or counts every tied class, changes the count. Rows 5..16 have logits
/// of ±1e4 within a few units of each other: exp overflows without the max subtraction, and
/// log Σ exp is a few units on top of 1e4, where computing log_z = max + lse before
/// subtracting it rounds the probabilities by ~1e-3. The rest are random in ±4. Every value
/// is an exact f32.
pub fn hostile_logits(b: usize, k: usize, seed: u64) -> (Vec<f64>, Vec<u32>) {
    assert!(k >= 4 && b >= 16);
    let mut logits: Vec<f64> = crate::common::rand_vec(b * k, seed, 4.0)
        .iter()
        .map(|&v| v as f32 as f64)
        .collect();
    let mut labels: Vec<u32> = (0..b).map(|i| ((i * 7 + 3) % k) as u32).collect();
    for (row, label) in [(0, 1), (1, 1), (2, 2)] {
        let r = &mut logits[row * k..(row + 1) * k];
        r.fill(0.0);
        r[..3].copy_from_slice(&[-1.0, 2.0, 2.0]);
        labels[row] = label;
    }
    logits[3 * k..5 * k].fill(0.75);
    labels[3] = 0;
    labels[4] = (k - 1) as u32;
    for row in 5..16 {
        let sign = if row % 2 == 0 { 1.0 } else { -1.0 };
        for v in &mut logits[row * k..(row + 1) * k] {
            // 1e4 ± 2 in steps of 1/8: exact in f32
            *v = sign * 1e4 + (*v * 4.0).round() / 8.0;
        }
    }
    (logits, labels)
}

/// LayerNorm inputs [R, D] (R ≥ 4, D a power of two) whose rows defeat careless statistics:
/// even rows have variance ≈ 1e-6 (the size of eps) around an offset of `offset`, odd rows
/// are the constant `offset` (variance exactly 0: the output is the bias). Exact f32 values.
pub fn hostile_layernorm_rows(r: usize, d: usize, offset: f64, seed: u64) -> Vec<f64> {
    let noise = crate::common::rand_vec(r * d, seed, 1.7e-3);
    let mut x = vec![offset; r * d];
    for (row, nr) in x.chunks_mut(d).zip(noise.chunks(d)).step_by(2) {
        for (v, n) in row.iter_mut().zip(nr) {
            *v = (offset + n) as f32 as f64;
        }
    }
    x
}

/// The log-sum-exp of each scaled score row of [`attention`]: [B, H, T].
pub fn attention_lse(qkv: &[f64], b: usize, t: usize, h: usize, hd: usize) -> Vec<f64> {
    let d = h * hd;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut lse = Vec::with_capacity(b * h * t);
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..t {
                let s: Vec<f64> = (0..t)
                    .map(|j| {
                        scale
                            * (0..hd)
                                .map(|e| {
                                    qkv[(bi * t + i) * 3 * d + hi * hd + e]
                                        * qkv[(bi * t + j) * 3 * d + d + hi * hd + e]
                                })
                                .sum::<f64>()
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                lse.push(mx + s.iter().map(|v| (v - mx).exp()).sum::<f64>().ln());
            }
        }
    }
    lse
}

/// Half the spacing of bf16's subnormals (2⁻¹³³ apart: bf16 has fp32's exponent range and 7
/// mantissa bits): the absolute error floor of a bf16 rounding, which the relative bound u16
/// misses below 2⁻¹²⁶ (scores of ±200 make probabilities and their gradients that small).
pub const BF16_SUBNORMAL_HALF_ULP: f64 = 4.591774807899561e-41; // 2^-134

/// Rounding bounds of a bf16 fused attention (P and dS enter their products as bf16, every
/// output is stored as bf16, everything else is fp32), element by element: (out [B, T, D],
/// dqkv [B, T, 3D]). `u16` bounds one bf16 rounding relatively, with the absolute floor
/// [`BF16_SUBNORMAL_HALF_ULP`] for results in bf16's subnormal range; `g` the fp32 rounding of a sum of the
/// lengths involved. Each P_ij carries the fp32 error of its score and of lse (relative
/// g·(scale·Σ|q k| + |lse| + 1), 4x), and the bf16 rounding where it enters P·V and Pᵀ·dO;
/// each dS_ij the errors of P, dP and D (D = rowsum(dO ⊙ O) from the bf16-rounded O: u16 of
/// Σ|dO O|), and its bf16 rounding; the products add g of their magnitudes and the output its
/// bf16 rounding.
pub fn attention_bf16_bounds(
    qkv: &[f64],
    dout: &[f64],
    (b, t, h, hd): (usize, usize, usize, usize),
    u16: f64,
    g: f64,
) -> (Vec<f64>, Vec<f64>) {
    let d = h * hd;
    let scale = 1.0 / (hd as f64).sqrt();
    let (out, probs) = attention(qkv, b, t, h, hd);
    let lse = attention_lse(qkv, b, t, h, hd);
    let grad = attention_grad(qkv, dout, b, t, h, hd);
    let at = |bi: usize, ti: usize, s: usize, hi: usize, e: usize| {
        qkv[(bi * t + ti) * 3 * d + s * d + hi * hd + e]
    };
    let mut bo = vec![0.0; out.len()];
    let mut bg = vec![0.0; grad.len()];
    for bi in 0..b {
        for hi in 0..h {
            let p = &probs[(bi * h + hi) * t * t..][..t * t];
            let dov = |i: usize, e: usize| dout[(bi * t + i) * d + hi * hd + e];
            let ov = |i: usize, e: usize| out[(bi * t + i) * d + hi * hd + e];
            // per (i, j): the error of P (fp32) and of P as bf16, and of dS as bf16
            let (mut e_p, mut e_ds, mut ds) =
                (vec![0.0; t * t], vec![0.0; t * t], vec![0.0; t * t]);
            for i in 0..t {
                let dot: f64 = (0..hd).map(|e| dov(i, e) * ov(i, e)).sum();
                let adot: f64 = (0..hd).map(|e| (dov(i, e) * ov(i, e)).abs()).sum();
                let l = lse[(bi * h + hi) * t + i].abs();
                for j in 0..t {
                    let k = i * t + j;
                    let aqk: f64 = (0..hd)
                        .map(|e| (at(bi, i, 0, hi, e) * at(bi, j, 1, hi, e)).abs())
                        .sum();
                    let fp32 = p[k] * 4.0 * g * (scale * aqk + l + 1.0);
                    e_p[k] = u16 * p[k] + BF16_SUBNORMAL_HALF_ULP + fp32;
                    let dp: f64 = (0..hd).map(|e| dov(i, e) * at(bi, j, 2, hi, e)).sum();
                    let adp: f64 = (0..hd)
                        .map(|e| (dov(i, e) * at(bi, j, 2, hi, e)).abs())
                        .sum();
                    ds[k] = p[k] * (dp - dot);
                    // D is computed from the bf16 output: u16 of Σ|dO O| besides the fp32 terms
                    e_ds[k] = u16 * ds[k].abs()
                        + BF16_SUBNORMAL_HALF_ULP
                        + fp32 * (dp - dot).abs()
                        + p[k] * (u16 * adot + 4.0 * g * (adp + adot));
                }
            }
            for i in 0..t {
                for e in 0..hd {
                    let o = (bi * t + i) * d + hi * hd + e;
                    let err: f64 = (0..t)
                        .map(|j| (e_p[i * t + j] + g * p[i * t + j]) * at(bi, j, 2, hi, e).abs())
                        .sum();
                    bo[o] = err + u16 * out[o].abs() + BF16_SUBNORMAL_HALF_ULP;
                    // dQ_i = scale Σ_j dS_ij K_j
                    let gq = (bi * t + i) * 3 * d + hi * hd + e;
                    let err: f64 = (0..t)
                        .map(|j| {
                            (e_ds[i * t + j] + g * ds[i * t + j].abs()) * at(bi, j, 1, hi, e).abs()
                        })
                        .sum();
                    bg[gq] = scale * err + u16 * grad[gq].abs() + BF16_SUBNORMAL_HALF_ULP;
                    // dK_j = scale Σ_i dS_ij Q_i and dV_j = Σ_i P_ij dO_i, with j = i here
                    let j = i;
                    let gk = (bi * t + j) * 3 * d + d + hi * hd + e;
                    let err: f64 = (0..t)
                        .map(|ii| {
                            (e_ds[ii * t + j] + g * ds[ii * t + j].abs())
                                * at(bi, ii, 0, hi, e).abs()
                        })
                        .sum();
                    bg[gk] = scale * err + u16 * grad[gk].abs() + BF16_SUBNORMAL_HALF_ULP;
                    let gv = gk + d;
                    let err: f64 = (0..t)
                        .map(|ii| (e_p[ii * t + j] + g * p[ii * t + j]) * dov(ii, e).abs())
                        .sum();
                    bg[gv] = err + u16 * grad[gv].abs() + BF16_SUBNORMAL_HALF_ULP;
                }
            }
        }
    }
    (bo, bg)
}
