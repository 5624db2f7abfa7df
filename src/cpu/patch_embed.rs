//! Patch embedding as im2col + matmul: timm's Conv2d(C, D, kernel = stride = P).
//!
//! im2col turns images [B, C, S_h, S_w] into patches [B·N, C·P·P], N = (S_h/P)·(S_w/P), patches in
//! row-major (py, px) order and each patch vector in (c, ky, kx) order, which is the order
//! of the conv weight [D, C, P, P] flattened to [D, C·P·P]. The product with that weight is
//! a plain linear layer (see `linear`); no gradient flows to the images.

use super::Float;
use crate::model::ImageSize;
use rayon::prelude::*;

/// patches [B·N, C·P·P] from images [B, C, S_h, S_w].
pub fn im2col<F: Float>(
    patches: &mut [F],
    images: &[F],
    batch: usize,
    channels: usize,
    size: impl Into<ImageSize>,
    patch: usize,
) {
    let size = size.into();
    let (h, w) = (size.height, size.width);
    assert!(
        patch > 0 && h.is_multiple_of(patch) && w.is_multiple_of(patch),
        "im2col: image {size} not a multiple of patch {patch}"
    );
    // grid (rows, columns) = (gh, gw)
    let (gh, gw) = size.grid(patch);
    let n = gh * gw;
    let cpp = channels * patch * patch;
    let image = channels * h * w;
    assert_eq!(images.len(), batch * image, "im2col: images");
    assert_eq!(patches.len(), batch * n * cpp, "im2col: patches");
    patches
        .par_chunks_mut(cpp)
        .enumerate()
        .for_each(|(row, out)| {
            let (b, p) = (row / n, row % n);
            let (py, px) = (p / gw, p % gw);
            let img = &images[b * image..(b + 1) * image];
            for c in 0..channels {
                for ky in 0..patch {
                    let src = c * h * w + (py * patch + ky) * w + px * patch;
                    let dst = (c * patch + ky) * patch;
                    out[dst..dst + patch].copy_from_slice(&img[src..src + patch]);
                }
            }
        });
}
