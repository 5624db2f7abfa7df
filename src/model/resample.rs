//! Resampling of pretrained weights to another patch grid or patch size, as timm does on
//! checkpoint load, so that a checkpoint moved between vitk and timm gives the same weights:
//!
//! - `pos_embed` to a new grid: timm's `resample_abs_pos_embed`, i.e. PyTorch's
//!   `F.interpolate(mode='bicubic', antialias=True, align_corners=False)` over the grid, with
//!   the class-token row (the prefix) kept as it is;
//! - `patch_embed.proj.weight` to a new patch size: timm's `resample_patch_embed` (FlexiViT),
//!   the kernel times the pseudo-inverse of the resize matrix, so that a patch resized to the
//!   new size and embedded with the new kernel gives (in the least-squares sense) the
//!   embedding of the original patch with the original kernel.
//!
//! The antialiased bicubic resize of PyTorch (the same filter as PIL's): for output index i
//! of an axis resized from `n_in` to `n_out`, scale = n_in / n_out, centre = scale·(i + ½),
//! support = 2·max(scale, 1); the taps are the inputs j in [centre − support + ½,
//! centre + support + ½) clipped to the axis, weighted by the Keys cubic (a = −0.5) at
//! (j − centre + ½) / max(scale, 1) and normalised to sum 1. It is separable: the width
//! first, then the height. Weights and sums here are f64 (PyTorch uses f32), which agrees with
//! timm to ~1e-6.

/// The Keys cubic convolution kernel with a = −0.5 (PyTorch's antialiased bicubic filter).
fn keys_cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The resize of one axis from `n_in` to `n_out` as a dense [n_out, n_in] matrix.
pub fn axis_weights(n_in: usize, n_out: usize) -> Vec<f64> {
    let scale = n_in as f64 / n_out as f64;
    let stretch = scale.max(1.0);
    let support = 2.0 * stretch;
    let mut w = vec![0.0; n_out * n_in];
    for (i, row) in w.chunks_exact_mut(n_in).enumerate() {
        let centre = scale * (i as f64 + 0.5);
        // PyTorch truncates toward zero, then clips to the axis.
        let lo = ((centre - support + 0.5) as i64).max(0) as usize;
        let hi = ((centre + support + 0.5) as i64).clamp(0, n_in as i64) as usize;
        let mut total = 0.0;
        for (j, v) in row.iter_mut().enumerate().take(hi).skip(lo) {
            *v = keys_cubic((j as f64 - centre + 0.5) / stretch);
            total += *v;
        }
        if total != 0.0 {
            row[lo..hi].iter_mut().for_each(|v| *v /= total);
        }
    }
    w
}

/// A grid size (rows, columns).
pub type Grid = (usize, usize);

/// Resizes a grid of D-vectors, `src` [gh·gw, D] row-major, to `[nh·nw, D]`.
pub fn resize_grid(src: &[f32], from: Grid, to: Grid, d: usize) -> Vec<f32> {
    let ((gh, gw), (nh, nw)) = (from, to);
    assert_eq!(
        src.len(),
        gh * gw * d,
        "resize_grid: source is not [gh·gw, D]"
    );
    let (wx, wy) = (axis_weights(gw, nw), axis_weights(gh, nh));
    // Width: [gh, gw, D] -> [gh, nw, D].
    let mut mid = vec![0.0f64; gh * nw * d];
    for y in 0..gh {
        for x in 0..nw {
            let dst = &mut mid[(y * nw + x) * d..][..d];
            for (j, &w) in wx[x * gw..][..gw].iter().enumerate() {
                if w != 0.0 {
                    let s = &src[(y * gw + j) * d..][..d];
                    dst.iter_mut().zip(s).for_each(|(o, &v)| *o += w * v as f64);
                }
            }
        }
    }
    // Height: [gh, nw, D] -> [nh, nw, D].
    let mut out = vec![0.0f64; nh * nw * d];
    for y in 0..nh {
        for (j, &w) in wy[y * gh..][..gh].iter().enumerate() {
            if w != 0.0 {
                let s = &mid[j * nw * d..][..nw * d];
                let dst = &mut out[y * nw * d..][..nw * d];
                dst.iter_mut().zip(s).for_each(|(o, &v)| *o += w * v);
            }
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

/// `pos_embed` [prefix + gh·gw, D] resampled to [prefix + nh·nw, D]; the first `prefix` rows
/// (the class token's position) are kept.
pub fn resample_pos_embed(pos: &[f32], prefix: usize, from: Grid, to: Grid, d: usize) -> Vec<f32> {
    let (head, grid) = pos.split_at(prefix * d);
    let mut out = head.to_vec();
    out.extend(resize_grid(grid, from, to, d));
    out
}

/// The Moore–Penrose pseudo-inverse of a full-rank `a` [rows, cols], [cols, rows], through
/// the normal equations of its smaller side (each axis's resize matrix is).
fn pinv(a: &[f64], rows: usize, cols: usize) -> Option<Vec<f64>> {
    // at [cols, rows]
    let at: Vec<f64> = (0..cols * rows)
        .map(|k| a[(k % rows) * cols + k / rows])
        .collect();
    let mul = |x: &[f64], y: &[f64], n: usize, k: usize, m: usize| -> Vec<f64> {
        // [n, k] · [k, m]
        let mut z = vec![0.0; n * m];
        for i in 0..n {
            for p in 0..k {
                let xv = x[i * k + p];
                z[i * m..][..m]
                    .iter_mut()
                    .zip(&y[p * m..][..m])
                    .for_each(|(o, &v)| *o += xv * v);
            }
        }
        z
    };
    if rows >= cols {
        // pinv = (AᵀA)⁻¹ Aᵀ
        let ata = mul(&at, a, cols, rows, cols);
        solve(ata, at, cols, rows)
    } else {
        // pinv = Aᵀ (AAᵀ)⁻¹ = ((AAᵀ)⁻¹ A)ᵀ, AAᵀ symmetric
        let aat = mul(a, &at, rows, cols, rows);
        let x = solve(aat, a.to_vec(), rows, cols)?;
        Some(
            (0..cols * rows)
                .map(|k| x[(k % rows) * cols + k / rows])
                .collect(),
        )
    }
}

/// X = M⁻¹ B for M [n, n], B [n, m], by Gauss–Jordan elimination with partial pivoting;
/// None when M is singular.
fn solve(mut m: Vec<f64>, mut b: Vec<f64>, n: usize, cols: usize) -> Option<Vec<f64>> {
    for c in 0..n {
        let p = (c..n).max_by(|&i, &j| m[i * n + c].abs().total_cmp(&m[j * n + c].abs()))?;
        if m[p * n + c].abs() < 1e-12 {
            return None;
        }
        for k in 0..n {
            m.swap(c * n + k, p * n + k);
        }
        for k in 0..cols {
            b.swap(c * cols + k, p * cols + k);
        }
        let inv = 1.0 / m[c * n + c];
        for r in 0..n {
            if r == c {
                continue;
            }
            let f = m[r * n + c] * inv;
            if f == 0.0 {
                continue;
            }
            for k in 0..n {
                m[r * n + k] -= f * m[c * n + k];
            }
            for k in 0..cols {
                b[r * cols + k] -= f * b[c * cols + k];
            }
        }
    }
    for r in 0..n {
        let inv = 1.0 / m[r * n + r];
        b[r * cols..][..cols].iter_mut().for_each(|v| *v *= inv);
    }
    Some(b)
}

/// `patch_embed.proj.weight` [D, C, ph, pw] resampled to [D, C, nh, nw] (FlexiViT); None when
/// an axis's resize matrix is singular (it is not for any sizes in practice).
///
/// The plane's resize matrix is the Kronecker product Wy ⊗ Wx of the axes' matrices, so its
/// pseudo-inverse is pinv(Wy) ⊗ pinv(Wx) (exact, also where the product is rank-deficient,
/// e.g. one axis up and the other down), applied axis by axis.
pub fn resample_patch_kernel(w: &[f32], from: Grid, to: Grid) -> Option<Vec<f32>> {
    let ((h, wd), (nh, nw)) = (from, to);
    assert!(
        w.len().is_multiple_of(h * wd),
        "resample_patch_kernel: kernel"
    );
    // py [h, nh], px [wd, nw]: pinv of the [n_out, n_in] axis matrices.
    let py = pinv(&axis_weights(h, nh), nh, h)?;
    let px = pinv(&axis_weights(wd, nw), nw, wd)?;
    let mut out = Vec::with_capacity(w.len() / (h * wd) * nh * nw);
    for k in w.chunks_exact(h * wd) {
        // k [h, wd] -> t = k · px [h, nw] -> out = pyᵀ · t [nh, nw]
        let mut t = vec![0.0f64; h * nw];
        for iy in 0..h {
            for ix in 0..wd {
                let kv = k[iy * wd + ix] as f64;
                t[iy * nw..][..nw]
                    .iter_mut()
                    .zip(&px[ix * nw..][..nw])
                    .for_each(|(o, &v)| *o += kv * v);
            }
        }
        let mut o = vec![0.0f64; nh * nw];
        for iy in 0..h {
            for oy in 0..nh {
                let f = py[iy * nh + oy];
                o[oy * nw..][..nw]
                    .iter_mut()
                    .zip(&t[iy * nw..][..nw])
                    .for_each(|(d, &v)| *d += f * v);
            }
        }
        out.extend(o.into_iter().map(|v| v as f32));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_every_axis_matrix_sum_to_one() {
        for (a, b) in [(8, 12), (8, 6), (8, 3), (5, 5), (1, 4), (4, 1)] {
            let w = axis_weights(a, b);
            for row in w.chunks_exact(a) {
                assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{a}->{b}");
            }
        }
    }

    #[test]
    fn same_size_is_the_identity() {
        let w = axis_weights(7, 7);
        for i in 0..7 {
            for j in 0..7 {
                assert_eq!(w[i * 7 + j], f64::from(u8::from(i == j)), "{i},{j}");
            }
        }
    }

    #[test]
    fn pinv_inverts_on_both_sides() {
        // [2, 3] and its transpose: A·pinv(A)·A = A.
        let a = [1.0, 2.0, 0.5, -1.0, 0.25, 3.0];
        for (rows, cols, a) in [
            (2, 3, a.to_vec()),
            (3, 2, vec![1.0, -1.0, 2.0, 0.25, 0.5, 3.0]),
        ] {
            let p = pinv(&a, rows, cols).expect("full rank");
            for i in 0..rows {
                for j in 0..cols {
                    let mut v = 0.0;
                    for k in 0..cols {
                        for l in 0..rows {
                            v += a[i * cols + k] * p[k * rows + l] * a[l * cols + j];
                        }
                    }
                    assert!((v - a[i * cols + j]).abs() < 1e-12);
                }
            }
        }
    }
}
