//! Patch embedding as im2col + matmul: timm's Conv2d(C, D, kernel = stride = P).
//!
//! im2col turns images [B, C, S, S] into patches [B·N, C·P·P], N = (S/P)², patches in
//! row-major (py, px) order and each patch vector in (c, ky, kx) order, which is the order
//! of the conv weight [D, C, P, P] flattened to [D, C·P·P]. The product with that weight is
//! a plain linear layer (see `linear`); no gradient flows to the images.

use super::Float;
use rayon::prelude::*;

/// patches [B·N, C·P·P] from images [B, C, S, S].
pub fn im2col<F: Float>(
    patches: &mut [F],
    images: &[F],
    batch: usize,
    channels: usize,
    side: usize,
    patch: usize,
) {
    assert!(
        patch > 0 && side.is_multiple_of(patch),
        "im2col: side {side} not a multiple of patch {patch}"
    );
    let grid = side / patch;
    let n = grid * grid;
    let cpp = channels * patch * patch;
    assert_eq!(
        images.len(),
        batch * channels * side * side,
        "im2col: images"
    );
    assert_eq!(patches.len(), batch * n * cpp, "im2col: patches");
    patches
        .par_chunks_mut(cpp)
        .enumerate()
        .for_each(|(row, out)| {
            let (b, p) = (row / n, row % n);
            let (py, px) = (p / grid, p % grid);
            let img = &images[b * channels * side * side..(b + 1) * channels * side * side];
            for c in 0..channels {
                for ky in 0..patch {
                    let src = c * side * side + (py * patch + ky) * side + px * patch;
                    let dst = (c * patch + ky) * patch;
                    out[dst..dst + patch].copy_from_slice(&img[src..src + patch]);
                }
            }
        });
}
