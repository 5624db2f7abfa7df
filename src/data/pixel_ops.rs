//! The pixel operations of AutoAugment and RandAugment on u8 images, with PIL's arithmetic.
//!
//! Images are [C, S_h, S_w] bytes (C planes, row-major), C in 1..=3; C = 3 is RGB, C = 1 is
//! PIL's "L" mode. Each op is written to give the bytes Pillow (13.0) gives for the same op on
//! the same image, as timm's `auto_augment.py` calls it: the definition and PIL's rounding are
//! written beside each op. The tests compare against a fixture made with Pillow and timm
//! (scripts/make_augment_fixture.py).
//!
//! Notation: `v` is a byte of the input, `trunc` is C's float -> integer conversion (toward
//! zero), f32 / f64 say in which precision PIL computes.

use super::DataError;
use crate::model::ImageSize;

/// One pixel operation with its argument (what timm's level functions produce).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PixelOp {
    /// No change.
    Identity,
    /// `ImageOps.autocontrast(img)`: per channel, stretches [lo, hi] (the smallest and largest
    /// byte present) onto [0, 255].
    AutoContrast,
    /// `ImageOps.equalize(img)`: per channel histogram equalisation.
    Equalize,
    /// `ImageOps.invert(img)`: 255 - v.
    Invert,
    /// `ImageOps.solarize(img, threshold)`: v < threshold ? v : 255 - v. The threshold is a
    /// float because torchvision's AutoAugment bins are (e.g. 198.33); timm's are integers.
    Solarize { threshold: f64 },
    /// timm's `solarize_add`: v < threshold ? min(255, v + add) : v.
    SolarizeAdd { add: i32, threshold: i32 },
    /// `ImageOps.posterize(img, bits)`: keeps the `bits` high bits (v & !(2^(8-bits) - 1));
    /// 8 or more bits is the identity (timm skips the call), 0 bits gives 0.
    Posterize { bits: u8 },
    /// `ImageEnhance.Color(img).enhance(factor)`: blend of the grey image and the image.
    Color { factor: f64 },
    /// `ImageEnhance.Contrast(img).enhance(factor)`: blend of the mean grey and the image.
    Contrast { factor: f64 },
    /// `ImageEnhance.Brightness(img).enhance(factor)`: blend of black and the image.
    Brightness { factor: f64 },
    /// `ImageEnhance.Sharpness(img).enhance(factor)`: blend of the smoothed image and the image.
    Sharpness { factor: f64 },
    /// `img.transform(size, AFFINE, (1, factor, 0, 0, 1, 0))`: input x = x + factor * y.
    ShearX { factor: f64 },
    /// `img.transform(size, AFFINE, (1, 0, 0, factor, 1, 0))`: input y = factor * x + y.
    ShearY { factor: f64 },
    /// `img.transform(size, AFFINE, (1, 0, pixels, 0, 1, 0))`: input x = x + pixels (content
    /// moves left for positive `pixels`).
    TranslateX { pixels: f64 },
    /// `img.transform(size, AFFINE, (1, 0, 0, 0, 1, pixels))`: input y = y + pixels.
    TranslateY { pixels: f64 },
    /// `img.rotate(degrees)`: counter-clockwise about the image centre, same size.
    Rotate { degrees: f64 },
}

/// Fill colour of the affine ops where the source point falls outside the image.
pub type Fill = [u8; 3];

/// timm's fill for an affine op: `img_mean = tuple(min(255, round(255 * m)) for m in mean)`,
/// as its `transforms_imagenet_train` passes from the normalisation mean (Python's round:
/// half to even).
pub fn fill_from_mean(mean: [f32; 3]) -> Fill {
    mean.map(|m| (255.0 * m as f64).round_ties_even().clamp(0.0, 255.0) as u8)
}

/// Applies `op` to `image` ([C, S_h, S_w] bytes) in place. `scratch` is reused between calls
/// (the affine ops and Sharpness need a copy of the input).
///
/// Errors: C outside 1..=3 or a buffer that is not C * S_h * S_w bytes.
pub fn apply(
    op: PixelOp,
    image: &mut [u8],
    scratch: &mut Vec<u8>,
    channels: usize,
    size: ImageSize,
    fill: Fill,
) -> Result<(), DataError> {
    if !(1..=3).contains(&channels) || image.len() != channels * size.pixels() {
        return Err(DataError::invalid(
            "pixel operation",
            format!(
                "{} bytes for a {channels}x{}x{} image (expected 1 to 3 channels and C*S_h*S_w bytes)",
                image.len(),
                size.height,
                size.width
            ),
        ));
    }
    apply_checked(op, image, scratch, channels, size, fill);
    Ok(())
}

/// [`apply`] without the checks (callers checked the shape once).
pub(crate) fn apply_checked(
    op: PixelOp,
    image: &mut [u8],
    scratch: &mut Vec<u8>,
    channels: usize,
    size: ImageSize,
    fill: Fill,
) {
    let plane = size.pixels();
    match op {
        PixelOp::Identity => {}
        PixelOp::AutoContrast => per_plane_lut(image, plane, autocontrast_lut),
        PixelOp::Equalize => per_plane_lut(image, plane, equalize_lut),
        PixelOp::Invert => image.iter_mut().for_each(|v| *v = 255 - *v),
        PixelOp::Solarize { threshold } => {
            // PIL builds the table `i if i < threshold else 255 - i` for i in 0..256.
            let lut: [u8; 256] = std::array::from_fn(|i| {
                if (i as f64) < threshold {
                    i as u8
                } else {
                    255 - i as u8
                }
            });
            image.iter_mut().for_each(|v| *v = lut[*v as usize]);
        }
        PixelOp::SolarizeAdd { add, threshold } => {
            let lut: [u8; 256] = std::array::from_fn(|i| {
                let i = i as i32;
                (if i < threshold { (i + add).min(255) } else { i }).clamp(0, 255) as u8
            });
            image.iter_mut().for_each(|v| *v = lut[*v as usize]);
        }
        PixelOp::Posterize { bits } => {
            if bits < 8 {
                // mask = ~(2^(8 - bits) - 1): bits = 0 keeps nothing.
                let mask = !((1u16 << (8 - bits)) - 1) as u8;
                image.iter_mut().for_each(|v| *v &= mask);
            }
        }
        PixelOp::Color { factor } => {
            if channels == 3 {
                // Degenerate: img.convert("L").convert("RGB"), the grey L = (19595 R +
                // 38470 G + 7471 B + 0x8000) >> 16 (PIL's ITU-R 601-2 luma in 16-bit fixed
                // point, rounded), in all three channels.
                let (r, rest) = image.split_at_mut(plane);
                let (g, b) = rest.split_at_mut(plane);
                let alpha = factor as f32;
                for i in 0..plane {
                    let l = luma(r[i], g[i], b[i]);
                    r[i] = blend(l, r[i], alpha);
                    g[i] = blend(l, g[i], alpha);
                    b[i] = blend(l, b[i], alpha);
                }
            }
            // One or two channels: PIL's degenerate is the image itself, so the blend is the
            // identity.
        }
        PixelOp::Contrast { factor } => {
            // Degenerate: the constant int(mean(L) + 0.5), mean over the grey image in f64
            // (ImageStat), L as in Color (the image itself for one channel; the first channel,
            // PIL's LA -> L, for two).
            let sum: u64 = if channels == 3 {
                (0..plane)
                    .map(|i| luma(image[i], image[plane + i], image[2 * plane + i]) as u64)
                    .sum()
            } else {
                image[..plane].iter().map(|&v| v as u64).sum()
            };
            let mean = (sum as f64 / plane as f64 + 0.5) as u8;
            let alpha = factor as f32;
            image.iter_mut().for_each(|v| *v = blend(mean, *v, alpha));
        }
        PixelOp::Brightness { factor } => {
            // Degenerate: black.
            let alpha = factor as f32;
            image.iter_mut().for_each(|v| *v = blend(0, *v, alpha));
        }
        PixelOp::Sharpness { factor } => {
            // Degenerate: img.filter(SMOOTH), the 3x3 kernel [1 1 1; 1 5 1; 1 1 1] / 13 on the
            // interior, border pixels copied.
            scratch.clear();
            scratch.extend_from_slice(image);
            let alpha = factor as f32;
            for c in 0..channels {
                let src = &scratch[c * plane..(c + 1) * plane];
                let dst = &mut image[c * plane..(c + 1) * plane];
                sharpen_plane(src, dst, size, alpha);
            }
        }
        PixelOp::ShearX { factor } => affine(
            image,
            scratch,
            channels,
            size,
            [1.0, factor, 0.0, 0.0, 1.0, 0.0],
            fill,
        ),
        PixelOp::ShearY { factor } => affine(
            image,
            scratch,
            channels,
            size,
            [1.0, 0.0, 0.0, factor, 1.0, 0.0],
            fill,
        ),
        PixelOp::TranslateX { pixels } => affine(
            image,
            scratch,
            channels,
            size,
            [1.0, 0.0, pixels, 0.0, 1.0, 0.0],
            fill,
        ),
        PixelOp::TranslateY { pixels } => affine(
            image,
            scratch,
            channels,
            size,
            [1.0, 0.0, 0.0, 0.0, 1.0, pixels],
            fill,
        ),
        PixelOp::Rotate { degrees } => rotate(image, scratch, channels, size, degrees, fill),
    }
}

/// PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 0x8000) >> 16.
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// `Image.blend(degenerate, image, alpha)` on one byte, as PIL's ImagingBlend: alpha is a C
/// float and `out = trunc(d + alpha * (v - d))` in f32, clipped to [0, 255] when alpha is
/// outside [0, 1] (inside, the value cannot leave the range).
fn blend(degenerate: u8, v: u8, alpha: f32) -> u8 {
    let d = degenerate as i32;
    let t = d as f32 + alpha * ((v as i32 - d) as f32);
    if t <= 0.0 {
        0
    } else if t >= 255.0 {
        255
    } else {
        t as u8
    }
}

/// Applies a per-channel table built from each plane's histogram.
fn per_plane_lut(image: &mut [u8], plane: usize, make: fn(&[u64; 256]) -> [u8; 256]) {
    for p in image.chunks_exact_mut(plane) {
        let mut h = [0u64; 256];
        p.iter().for_each(|&v| h[v as usize] += 1);
        let lut = make(&h);
        p.iter_mut().for_each(|v| *v = lut[*v as usize]);
    }
}

/// AutoContrast's table (cutoff 0): with lo, hi the smallest and largest byte present,
/// identity when hi <= lo, else scale = 255 / (hi - lo), offset = -lo * scale (f64) and
/// lut[i] = clamp(trunc(i * scale + offset), 0, 255).
fn autocontrast_lut(h: &[u64; 256]) -> [u8; 256] {
    let lo = h.iter().position(|&n| n > 0).unwrap_or(0);
    let hi = h.iter().rposition(|&n| n > 0).unwrap_or(0);
    if hi <= lo {
        return std::array::from_fn(|i| i as u8);
    }
    let scale = 255.0 / (hi - lo) as f64;
    let offset = -(lo as f64) * scale;
    std::array::from_fn(|i| ((i as f64 * scale + offset) as i64).clamp(0, 255) as u8)
}

/// Equalize's table: with the counts of the bytes present, identity when only one value is
/// present; else step = (total - count of the largest value present) / 255 (integer division),
/// identity when step is 0, else lut[i] = (step / 2 + sum of h[0..i]) / step (integers).
fn equalize_lut(h: &[u64; 256]) -> [u8; 256] {
    let present: Vec<u64> = h.iter().copied().filter(|&n| n > 0).collect();
    let identity = std::array::from_fn(|i| i as u8);
    if present.len() <= 1 {
        return identity;
    }
    let total: u64 = present.iter().sum();
    let step = (total - present[present.len() - 1]) / 255;
    if step == 0 {
        return identity;
    }
    let mut n = step / 2;
    std::array::from_fn(|i| {
        let v = (n / step).min(255) as u8;
        n += h[i];
        v
    })
}

/// Sharpness on one plane: degenerate s = SMOOTH(src), then blend(s, src, alpha).
///
/// PIL's ImagingFilter3x3 in f32 with k = 1/13 and c = 5/13 (each divided in f32):
/// ss = 0.5 + (r[y+1][x-1] k + r[y+1][x] k + r[y+1][x+1] k) + (r[y][x-1] k + r[y][x] c +
/// r[y][x+1] k) + (r[y-1][x-1] k + r[y-1][x] k + r[y-1][x+1] k), added left to right, and
/// s = trunc(clamp(ss, 0, 255)) (the 0.5 makes it round to nearest). The first and last row
/// and column are copied.
fn sharpen_plane(src: &[u8], dst: &mut [u8], size: ImageSize, alpha: f32) {
    let (h, w) = (size.height, size.width);
    let k = 1.0f32 / 13.0;
    let c = 5.0f32 / 13.0;
    let row3 = |r: &[u8], x: usize, mid: f32| -> f32 {
        r[x - 1] as f32 * k + r[x] as f32 * mid + r[x + 1] as f32 * k
    };
    for y in 0..h {
        for x in 0..w {
            let v = src[y * w + x];
            let s = if y == 0 || y + 1 == h || x == 0 || x + 1 == w {
                v
            } else {
                let up = &src[(y - 1) * w..y * w];
                let mid = &src[y * w..(y + 1) * w];
                let down = &src[(y + 1) * w..(y + 2) * w];
                let mut ss = 0.5f32;
                ss += row3(down, x, k);
                ss += row3(mid, x, c);
                ss += row3(up, x, k);
                ss.clamp(0.0, 255.0) as u8
            };
            dst[y * w + x] = blend(s, v, alpha);
        }
    }
}

/// `Image.transform(size, AFFINE, a, resample=BILINEAR, fillcolor=fill)` in f64, as PIL's
/// ImagingGenericTransform with its bilinear filter:
/// - output pixel (x, y) samples the input at xi = a0 (x + 0.5) + a1 (y + 0.5) + a2,
///   yi = a3 (x + 0.5) + a4 (y + 0.5) + a5;
/// - outside 0 <= xi < S_w, 0 <= yi < S_h: the fill colour;
/// - else, with u = xi - 0.5, v = yi - 0.5, x0 = floor(u), y0 = floor(v), dx = u - x0,
///   dy = v - y0 and indices clamped to the image: top = p(x0, y0) + (p(x0+1, y0) -
///   p(x0, y0)) dx, bottom likewise on row y0 + 1 (the top row's value when y0 + 1 is past
///   the last row), value = top + (bottom - top) dy, stored as trunc(value).
fn affine(
    image: &mut [u8],
    scratch: &mut Vec<u8>,
    channels: usize,
    size: ImageSize,
    a: [f64; 6],
    fill: Fill,
) {
    scratch.clear();
    scratch.extend_from_slice(image);
    let (h, w) = (size.height, size.width);
    let plane = h * w;
    let clampx = |x: i64| x.clamp(0, w as i64 - 1) as usize;
    for y in 0..h {
        let yc = y as f64 + 0.5;
        for x in 0..w {
            let xc = x as f64 + 0.5;
            let xi = a[0] * xc + a[1] * yc + a[2];
            let yi = a[3] * xc + a[4] * yc + a[5];
            let o = y * w + x;
            if !(xi >= 0.0 && xi < w as f64 && yi >= 0.0 && yi < h as f64) {
                for (c, f) in fill.iter().enumerate().take(channels) {
                    image[c * plane + o] = *f;
                }
                continue;
            }
            let (u, v) = (xi - 0.5, yi - 0.5);
            let (x0, y0) = (u.floor() as i64, v.floor() as i64);
            let (dx, dy) = (u - x0 as f64, v - y0 as f64);
            let (c0, c1) = (clampx(x0), clampx(x0 + 1));
            let r0 = y0.clamp(0, h as i64 - 1) as usize;
            let r1 = (y0 + 1 < h as i64).then(|| (y0 + 1) as usize);
            for c in 0..channels {
                let src = &scratch[c * plane..(c + 1) * plane];
                let lerp = |p: f64, q: f64, d: f64| p + (q - p) * d;
                let top = lerp(src[r0 * w + c0] as f64, src[r0 * w + c1] as f64, dx);
                let bottom = match r1 {
                    Some(r1) => lerp(src[r1 * w + c0] as f64, src[r1 * w + c1] as f64, dx),
                    None => top,
                };
                image[c * plane + o] = lerp(top, bottom, dy) as u8;
            }
        }
    }
}

/// `img.rotate(degrees, resample=BILINEAR, fillcolor=fill)` as Pillow computes it:
/// angle = degrees mod 360 (Python's float %); 0 is the identity; 180, and 90 / 270 on a
/// square image, are exact pixel transposes; otherwise, with t = -angle * (pi / 180) and
/// r15 = round to 15 decimals, the affine map (r15(cos t), r15(sin t), c, r15(-sin t),
/// r15(cos t), f) about the centre (S_w / 2, S_h / 2): c = a * (-cx) + b * (-cy) + cx,
/// f = d * (-cx) + e * (-cy) + cy, then [`affine`].
fn rotate(
    image: &mut [u8],
    scratch: &mut Vec<u8>,
    channels: usize,
    size: ImageSize,
    degrees: f64,
    fill: Fill,
) {
    let angle = degrees.rem_euclid(360.0);
    let (h, w) = (size.height, size.width);
    let square = h == w;
    if angle == 0.0 {
        return;
    }
    // Transposes: output (r, c) of an h x w image reads input (src_r, src_c).
    type Transpose = fn(usize, usize, usize, usize) -> (usize, usize);
    let transpose: Option<Transpose> = if angle == 180.0 {
        Some(|r, c, h, w| (h - 1 - r, w - 1 - c))
    } else if angle == 90.0 && square {
        // Counter-clockwise: the input's right column becomes the top row.
        Some(|r, c, _h, w| (c, w - 1 - r))
    } else if angle == 270.0 && square {
        Some(|r, c, h, _w| (h - 1 - c, r))
    } else {
        None
    };
    if let Some(map) = transpose {
        scratch.clear();
        scratch.extend_from_slice(image);
        let plane = h * w;
        for c in 0..channels {
            for r in 0..h {
                for col in 0..w {
                    let (sr, sc) = map(r, col, h, w);
                    image[c * plane + r * w + col] = scratch[c * plane + sr * w + sc];
                }
            }
        }
        return;
    }
    let r15 = |v: f64| (v * 1e15).round() / 1e15;
    let t = -(angle * (std::f64::consts::PI / 180.0));
    let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
    let (a, b, d, e) = (r15(t.cos()), r15(t.sin()), r15(-t.sin()), r15(t.cos()));
    let c = a * -cx + b * -cy + 0.0 + cx;
    let f = d * -cx + e * -cy + 0.0 + cy;
    affine(image, scratch, channels, size, [a, b, c, d, e, f], fill);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_rounds_half_to_even() {
        assert_eq!(fill_from_mean([0.4914, 0.4822, 0.4465]), [125, 123, 114]);
        assert_eq!(fill_from_mean([0.5, 0.0, 1.0]), [128, 0, 255]);
    }

    #[test]
    fn blend_truncates_and_clips() {
        assert_eq!(blend(0, 200, 0.5), 100);
        assert_eq!(blend(0, 201, 0.5), 100); // 100.5 truncated
        assert_eq!(blend(100, 200, 1.9), 255);
        assert_eq!(blend(200, 100, 1.9), 10);
    }
}
