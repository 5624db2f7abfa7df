//! Random erasing with timm's `RandomErasing(probability, mode='pixel')` semantics, on the
//! normalised image (timm applies it after normalisation, so the noise is N(0, 1) in the
//! normalised space).
//!
//! Per image, with probability p (timm: skip when random() > p): one box (`max_count` 1) is
//! searched in at most 10 attempts: target area = U(0.02, 1/3) * S_h * S_w, aspect =
//! exp(U(ln 0.3, ln(1 / 0.3))) (timm's default `max_aspect = 1 / min_aspect`, about 3.33),
//! h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)) (Python's round: half to
//! even); the first attempt with h < S_h and w < S_w places the box at top ~ U{0..S_h-h},
//! left ~ U{0..S_w-w} and fills every channel of it with independent N(0, 1) values. When no
//! attempt fits, the image is unchanged.

use super::rng::Rng64;
use crate::model::ImageSize;

/// timm's defaults for the erased fraction of the image and the log-aspect range.
pub const MIN_AREA: f64 = 0.02;
pub const MAX_AREA: f64 = 1.0 / 3.0;
pub const MIN_ASPECT: f64 = 0.3;
/// Attempts per box before giving up (timm's 10).
pub const ATTEMPTS: usize = 10;

/// An erased box: rows top..top+h, columns left..left+w, every channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EraseBox {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// Draws whether and where to erase in an image of `size`: None when the p coin says no or
/// no attempt fits. The draws: one uniform, then per attempt two uniforms and, for the
/// fitting one, the two corner integers.
pub fn draw_box(rng: &mut Rng64, prob: f64, size: ImageSize) -> Option<EraseBox> {
    if rng.unit64() > prob {
        return None;
    }
    let area = size.pixels() as f64;
    let (lo, hi) = (MIN_ASPECT.ln(), (1.0 / MIN_ASPECT).ln());
    for _ in 0..ATTEMPTS {
        let target = (MIN_AREA + (MAX_AREA - MIN_AREA) * rng.unit64()) * area;
        let aspect = (lo + (hi - lo) * rng.unit64()).exp();
        let h = (target * aspect).sqrt().round_ties_even() as usize;
        let w = (target / aspect).sqrt().round_ties_even() as usize;
        if w < size.width && h < size.height {
            let top = rng.range(0, (size.height - h) as i64) as usize;
            let left = rng.range(0, (size.width - w) as i64) as usize;
            return Some(EraseBox {
                top,
                left,
                height: h,
                width: w,
            });
        }
    }
    None
}

/// Erases in place: `image` is [C, S_h, S_w] normalised floats. Draws the box with
/// [`draw_box`], then the noise in [C, h, w] order.
pub fn erase(image: &mut [f32], channels: usize, size: ImageSize, prob: f64, rng: &mut Rng64) {
    let Some(b) = draw_box(rng, prob, size) else {
        return;
    };
    let plane = size.pixels();
    for c in 0..channels {
        for y in b.top..b.top + b.height {
            let row = c * plane + y * size.width;
            for v in &mut image[row + b.left..row + b.left + b.width] {
                *v = rng.normal() as f32;
            }
        }
    }
}
