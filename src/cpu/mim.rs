//! Masked image modelling (SimMIM / MAE style pixel prediction): mask-token substitution,
//! patch-pixel targets and the masked L1/L2 loss.
//!
//! Shapes: B batch, N = (S_h/P)·(S_w/P) patches, D embedding width, C channels, P patch side,
//! K = P·P·C pixel values per patch. A mask [B, N] is true where a patch is masked (and
//! predicted).

use super::Float;
use crate::model::ImageSize;
use rayon::prelude::*;

/// x [B, N, D] (overwritten) = mask[b, n] ? token [D] : pe[b, n] from patch embeddings
/// pe [B, N, D] (before pos_embed is added, as SimMIM does).
pub fn mask_tokens_forward<F: Float>(x: &mut [F], pe: &[F], mask: &[bool], token: &[F]) {
    let dim = token.len();
    assert_eq!(x.len(), mask.len() * dim, "mask_tokens_forward: x");
    assert_eq!(pe.len(), x.len(), "mask_tokens_forward: pe");
    x.par_chunks_mut(dim)
        .zip(pe.par_chunks(dim))
        .zip(mask.par_iter())
        .for_each(|((xr, pr), &m)| xr.copy_from_slice(if m { token } else { pr }));
}

/// Gradients of [`mask_tokens_forward`] given dx [B, N, D]: dpe [B, N, D] (overwritten) =
/// mask ? 0 : dx; dtoken [D] += Σ over masked (b, n) of dx[b, n], rows in order.
pub fn mask_tokens_backward<F: Float>(dpe: &mut [F], dtoken: &mut [F], dx: &[F], mask: &[bool]) {
    let dim = dtoken.len();
    assert_eq!(dx.len(), mask.len() * dim, "mask_tokens_backward: dx");
    assert_eq!(dpe.len(), dx.len(), "mask_tokens_backward: dpe");
    dpe.par_chunks_mut(dim)
        .zip(dx.par_chunks(dim))
        .zip(mask.par_iter())
        .for_each(|((dr, gr), &m)| {
            if m {
                dr.fill(F::zero());
            } else {
                dr.copy_from_slice(gr);
            }
        });
    // One column per task, rows in order: deterministic.
    dtoken.par_iter_mut().enumerate().for_each(|(c, a)| {
        for (row, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
            *a += dx[row * dim + c];
        }
    });
}

/// Added to the per-patch variance before the square root in `norm_pix` (MAE's 1e-6).
pub const NORM_PIX_EPS: f64 = 1e-6;

/// Pixel targets [B, N, K] (overwritten) from images [B, C, S_h, S_w], K = P·P·C, in the
/// order of MAE's `patchify` (`einsum('nchpwq->nhwpqc')`): patches row-major over the
/// (S_h/P) x (S_w/P) grid, and within a patch k = (ky·P + kx)·C + c, channel last. (This is
/// not the (c, ky, kx) order of the patch-embedding im2col: the targets follow MAE so that a
/// decoder head trained here predicts what MAE's does.)
///
/// `norm_pix` (MAE's `norm_pix_loss`): each patch becomes (t − mean) / sqrt(var + 1e-6) with
/// the mean and the UNBIASED variance (÷ (K − 1), as `torch.var`'s default in MAE's
/// `target.var(dim=-1)`) over its K values; with K = 1 the variance is taken as 0, not NaN.
pub fn patch_targets<F: Float>(
    targets: &mut [F],
    images: &[F],
    channels: usize,
    size: ImageSize,
    patch: usize,
    norm_pix: bool,
) {
    let (sh, sw) = (size.height, size.width);
    assert!(
        patch > 0 && sh.is_multiple_of(patch) && sw.is_multiple_of(patch),
        "patch_targets: {sh}x{sw} images are not a grid of {patch}-pixel patches"
    );
    let (gh, gw) = (sh / patch, sw / patch);
    let k = patch * patch * channels;
    let image_len = channels * sh * sw;
    assert_eq!(images.len() % image_len.max(1), 0, "patch_targets: images");
    let batch = images.len() / image_len.max(1);
    assert_eq!(targets.len(), batch * gh * gw * k, "patch_targets: targets");
    targets
        .par_chunks_mut(k)
        .enumerate()
        .for_each(|(row, out)| {
            let (b, n) = (row / (gh * gw), row % (gh * gw));
            let (py, px) = (n / gw, n % gw);
            let img = &images[b * image_len..(b + 1) * image_len];
            for ky in 0..patch {
                for kx in 0..patch {
                    let (y, x) = (py * patch + ky, px * patch + kx);
                    for c in 0..channels {
                        out[(ky * patch + kx) * channels + c] = img[(c * sh + y) * sw + x];
                    }
                }
            }
            if norm_pix {
                let kf = F::of(k as f64);
                let mean = out.iter().copied().sum::<F>() / kf;
                // Two passes (mean first): no cancellation for patches far from zero.
                let ss = out.iter().map(|&v| (v - mean) * (v - mean)).sum::<F>();
                let var = if k > 1 {
                    ss / F::of((k - 1) as f64)
                } else {
                    F::zero()
                };
                let rstd = F::one() / (var + F::of(NORM_PIX_EPS)).sqrt();
                for v in out.iter_mut() {
                    *v = (*v - mean) * rstd;
                }
            }
        });
}

/// The per-value error of the pixel loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelLoss {
    /// |pred − target| (SimMIM).
    L1,
    /// (pred − target)² (MAE).
    L2,
}

/// Masked pixel loss of pred [B, N, K] against target [B, N, K] with mask [B, N]: the mean
/// over masked patches of the per-patch mean over K of the error, which is SimMIM's
/// Σ err·mask / (masked · K) and MAE's `(loss.mean(-1) * mask).sum() / mask.sum()`. With no
/// masked patch the loss is 0 and dpred is 0 (no NaN). Writes dpred when
/// given (dpred [B, N, K], overwritten); the L1 gradient at pred == target is 0 (PyTorch's sign(0)).
pub fn masked_pixel_loss<F: Float>(
    pred: &[F],
    target: &[F],
    mask: &[bool],
    kind: PixelLoss,
    dpred: Option<&mut [F]>,
) -> f64 {
    let rows = mask.len();
    assert!(rows > 0, "masked_pixel_loss: no patches");
    let k = pred.len() / rows;
    assert_eq!(pred.len(), rows * k, "masked_pixel_loss: pred");
    assert_eq!(target.len(), pred.len(), "masked_pixel_loss: target");
    let masked = mask.iter().filter(|&&m| m).count();
    let scale = if masked == 0 {
        F::zero()
    } else {
        F::one() / F::of((masked * k) as f64)
    };
    if let Some(d) = dpred {
        assert_eq!(d.len(), pred.len(), "masked_pixel_loss: dpred");
        d.par_chunks_mut(k.max(1))
            .zip(pred.par_chunks(k.max(1)))
            .zip(target.par_chunks(k.max(1)))
            .zip(mask.par_iter())
            .for_each(|(((dr, pr), tr), &m)| {
                for ((g, &p), &t) in dr.iter_mut().zip(pr).zip(tr) {
                    let e = p - t;
                    *g = if !m {
                        F::zero()
                    } else {
                        match kind {
                            PixelLoss::L1 => {
                                if e > F::zero() {
                                    scale
                                } else if e < F::zero() {
                                    -scale
                                } else {
                                    F::zero()
                                }
                            }
                            PixelLoss::L2 => F::of(2.0) * e * scale,
                        }
                    };
                }
            });
    }
    if masked == 0 || k == 0 {
        return 0.0;
    }
    // Per-patch means, then their mean over the masked patches, rows in order.
    let mut total = 0.0f64;
    for (row, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
        let s: F = pred[row * k..(row + 1) * k]
            .iter()
            .zip(&target[row * k..(row + 1) * k])
            .map(|(&p, &t)| match kind {
                PixelLoss::L1 => (p - t).abs(),
                PixelLoss::L2 => (p - t) * (p - t),
            })
            .sum();
        total += s.to_f64() / k as f64;
    }
    total / masked as f64
}

/// Source marker of [`substitute_forward`]: the patch takes the mask token.
pub const SOURCE_MASK_TOKEN: i32 = -1;

/// The BERT-style corruption of the ViT paper as a gather: x [B, N, D] (overwritten) with
/// x[b, n] = src[b, n] < 0 ? token [D] : pe[b, src[b, n]], src [B, N] indexing patches of the
/// same image (src[b, n] = n leaves a patch as it is; see `data::masking::corruption_sources`).
pub fn substitute_forward<F: Float>(
    x: &mut [F],
    pe: &[F],
    src: &[i32],
    n_patches: usize,
    token: &[F],
) {
    let dim = token.len();
    assert_eq!(x.len(), src.len() * dim, "substitute_forward: x");
    assert_eq!(pe.len(), x.len(), "substitute_forward: pe");
    assert!(
        n_patches > 0 && src.len().is_multiple_of(n_patches),
        "substitute_forward: src"
    );
    x.par_chunks_mut(dim)
        .zip(src.par_iter())
        .enumerate()
        .for_each(|(row, (xr, &s))| {
            if s < 0 {
                xr.copy_from_slice(token);
            } else {
                let s = s as usize;
                assert!(
                    s < n_patches,
                    "substitute_forward: source {s} >= N = {n_patches}"
                );
                let r = row - row % n_patches + s;
                xr.copy_from_slice(&pe[r * dim..(r + 1) * dim]);
            }
        });
}

/// Gradients of [`substitute_forward`] given dx [B, N, D]: dpe [B, N, D] (overwritten) with
/// dpe[b, m] = Σ over n with src[b, n] = m of dx[b, n] (n in order: a patch that is copied
/// elsewhere gets both gradients); dtoken [D] += Σ over src < 0 of dx, rows in order.
pub fn substitute_backward<F: Float>(
    dpe: &mut [F],
    dtoken: &mut [F],
    dx: &[F],
    src: &[i32],
    n_patches: usize,
) {
    let dim = dtoken.len();
    assert_eq!(dx.len(), src.len() * dim, "substitute_backward: dx");
    assert_eq!(dpe.len(), dx.len(), "substitute_backward: dpe");
    assert!(
        n_patches > 0 && src.len().is_multiple_of(n_patches),
        "substitute_backward: src"
    );
    dpe.par_chunks_mut(dim).enumerate().for_each(|(row, dr)| {
        let (b, m) = (row / n_patches, row % n_patches);
        dr.fill(F::zero());
        for n in 0..n_patches {
            if src[b * n_patches + n] == m as i32 {
                let g = &dx[(b * n_patches + n) * dim..(b * n_patches + n + 1) * dim];
                for (a, &v) in dr.iter_mut().zip(g) {
                    *a += v;
                }
            }
        }
    });
    dtoken.par_iter_mut().enumerate().for_each(|(c, a)| {
        for (row, _) in src.iter().enumerate().filter(|(_, &s)| s < 0) {
            *a += dx[row * dim + c];
        }
    });
}
