//! Per-sample image transforms: u8 -> normalised f32, and the standard CIFAR training
//! augmentation (torchvision `RandomCrop(S, padding=4)` + `RandomHorizontalFlip()`).
//!
//! Images are [C, S, S] bytes; outputs are [C, S, S] floats,
//! `(byte / 255 - mean[c]) / std[c]`.

use rand::RngCore;

use super::DataError;
use crate::model::ImageSize;

/// Per-channel normalisation constants, applied after scaling bytes to [0, 1].
/// Sets with C < 3 use the first C values; C > 3 is rejected by [`Normalize::check`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalize {
    /// CIFAR-10 training-set statistics (the values of the usual PyTorch recipes).
    pub const CIFAR10: Normalize = Normalize {
        mean: [0.4914, 0.4822, 0.4465],
        std: [0.2470, 0.2435, 0.2616],
    };
    /// ImageNet statistics (timm's IMAGENET_DEFAULT_MEAN / _STD).
    pub const IMAGENET: Normalize = Normalize {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    /// Only the scaling to [0, 1].
    pub const NONE: Normalize = Normalize {
        mean: [0.0; 3],
        std: [1.0; 3],
    };

    /// Checks that `channels` images can be normalised (1..=3 channels, finite positive std).
    pub fn check(&self, channels: usize) -> Result<(), DataError> {
        if channels == 0 || channels > 3 {
            return Err(DataError::invalid(
                "normalisation",
                format!("images have {channels} channels (expected 1, 2 or 3: one mean/std pair per channel)"),
            ));
        }
        for c in 0..channels {
            let (m, s) = (self.mean[c], self.std[c]);
            if !m.is_finite() || !s.is_finite() || s <= 0.0 {
                return Err(DataError::invalid(
                    "normalisation",
                    format!(
                        "channel {c} has mean {m} and std {s} (expected finite values, std > 0)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// (scale, shift) with `byte * scale + shift == (byte / 255 - mean) / std`, per channel.
    fn affine(&self, c: usize) -> (f32, f32) {
        let scale = 1.0 / (255.0 * self.std[c]);
        (scale, -self.mean[c] / self.std[c])
    }
}

/// Checks the buffer sizes shared by both transforms.
fn check_shapes(
    image: &[u8],
    out: &[f32],
    channels: usize,
    size: ImageSize,
    norm: &Normalize,
) -> Result<(), DataError> {
    norm.check(channels)?;
    let len = channels * size.pixels();
    if image.len() != len || out.len() != len {
        return Err(DataError::invalid(
            "image transform",
            format!(
                "input of {} bytes and output of {} floats for a {channels}x{}x{} image (expected {len} each)",
                image.len(),
                out.len(),
                size.height,
                size.width
            ),
        ));
    }
    Ok(())
}

/// [C, S_h, S_w] bytes -> [C, S_h, S_w] normalised floats, no augmentation (evaluation path).
/// `image.len()` must equal `out.len()` and be a multiple of `channels`.
pub fn to_tensor(
    image: &[u8],
    out: &mut [f32],
    channels: usize,
    norm: &Normalize,
) -> Result<(), DataError> {
    norm.check(channels)?;
    if image.len() != out.len() || !image.len().is_multiple_of(channels) {
        return Err(DataError::invalid(
            "image transform",
            format!(
                "input of {} bytes and output of {} floats for {channels} channels (expected equal lengths, a multiple of {channels})",
                image.len(),
                out.len()
            ),
        ));
    }
    to_tensor_checked(image, out, channels, norm);
    Ok(())
}

/// [`to_tensor`] without the checks (callers have checked the shapes once).
pub(crate) fn to_tensor_checked(image: &[u8], out: &mut [f32], channels: usize, norm: &Normalize) {
    let plane = image.len() / channels;
    for c in 0..channels {
        let (scale, shift) = norm.affine(c);
        let src = &image[c * plane..(c + 1) * plane];
        let dst = &mut out[c * plane..(c + 1) * plane];
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s as f32 * scale + shift;
        }
    }
}

/// One draw of the training augmentation. The crop window's top-left corner in the
/// padded (S_h + 2 pad) x (S_w + 2 pad) image is (`top`, `left`), each in `0..=2 pad`: output pixel
/// (y, x) is input pixel (y + top - pad, x + left - pad), or 0 outside the input.
/// `flip` then mirrors the crop left-right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropFlip {
    pub top: usize,
    pub left: usize,
    pub flip: bool,
}

impl CropFlip {
    /// Draws uniform `top`, `left` in `0..=2 pad` and, when `flip` is allowed, a fair coin.
    /// Uses exactly two 64-bit draws whatever the options, so the stream stays aligned.
    pub fn random<R: RngCore + ?Sized>(rng: &mut R, pad: usize, flip: bool) -> Self {
        let span = 2 * pad as u64 + 1;
        let a = rng.next_u64();
        let b = rng.next_u64();
        // Multiply-shift maps 32 random bits onto 0..span; the bias (< span / 2^32) is negligible.
        CropFlip {
            top: (((a >> 32) * span) >> 32) as usize,
            left: (((a & 0xFFFF_FFFF) * span) >> 32) as usize,
            flip: flip && (b >> 63) == 1,
        }
    }

    /// The identity transform for padding `pad`.
    pub fn identity(pad: usize) -> Self {
        CropFlip {
            top: pad,
            left: pad,
            flip: false,
        }
    }
}

/// Applies a given crop/flip and normalises: [C, S_h, S_w] bytes -> [C, S_h, S_w] floats.
/// Padding is 0 in byte space (before normalisation), as torchvision pads the PIL image.
pub fn crop_flip_into(
    image: &[u8],
    out: &mut [f32],
    channels: usize,
    size: impl Into<ImageSize>,
    pad: usize,
    t: CropFlip,
    norm: &Normalize,
) -> Result<(), DataError> {
    let size = size.into();
    check_shapes(image, out, channels, size, norm)?;
    if t.top > 2 * pad || t.left > 2 * pad {
        return Err(DataError::invalid(
            "image transform",
            format!(
                "crop corner ({}, {}) outside 0..={} for padding {pad}",
                t.top,
                t.left,
                2 * pad
            ),
        ));
    }
    crop_flip_checked(image, out, channels, size, pad, t, norm);
    Ok(())
}

/// [`crop_flip_into`] without the checks.
pub(crate) fn crop_flip_checked(
    image: &[u8],
    out: &mut [f32],
    channels: usize,
    size: ImageSize,
    pad: usize,
    t: CropFlip,
    norm: &Normalize,
) {
    let plane = size.pixels();
    // Signed shift of the source relative to the output.
    let dy = t.top as isize - pad as isize;
    let dx = t.left as isize - pad as isize;
    let (h, s) = (size.height as isize, size.width as isize);
    for c in 0..channels {
        let (scale, shift) = norm.affine(c);
        let src = &image[c * plane..(c + 1) * plane];
        let dst = &mut out[c * plane..(c + 1) * plane];
        for y in 0..h {
            let sy = y + dy;
            let row = &mut dst[(y * s) as usize..((y + 1) * s) as usize];
            if sy < 0 || sy >= h {
                row.fill(shift); // byte 0 normalised
                continue;
            }
            let src_row = &src[(sy * s) as usize..((sy + 1) * s) as usize];
            for (x, d) in row.iter_mut().enumerate() {
                // Flip mirrors the output column: out(y, x) = crop(y, S_w-1-x).
                let cx = if t.flip {
                    s - 1 - x as isize
                } else {
                    x as isize
                };
                let sx = cx + dx;
                let byte = if sx < 0 || sx >= s {
                    0
                } else {
                    src_row[sx as usize]
                };
                *d = byte as f32 * scale + shift;
            }
        }
    }
}

/// [`crop_flip_checked`] without normalisation: [C, S_h, S_w] bytes -> [C, S_h, S_w] bytes,
/// 0 where the crop window leaves the image (the byte-space pipeline of AutoAugment).
pub(crate) fn crop_flip_bytes_checked(
    image: &[u8],
    out: &mut [u8],
    channels: usize,
    size: ImageSize,
    pad: usize,
    t: CropFlip,
) {
    let plane = size.pixels();
    let dy = t.top as isize - pad as isize;
    let dx = t.left as isize - pad as isize;
    let (h, w) = (size.height as isize, size.width as isize);
    for c in 0..channels {
        let src = &image[c * plane..(c + 1) * plane];
        let dst = &mut out[c * plane..(c + 1) * plane];
        for y in 0..h {
            let sy = y + dy;
            let row = &mut dst[(y * w) as usize..((y + 1) * w) as usize];
            if sy < 0 || sy >= h {
                row.fill(0);
                continue;
            }
            let src_row = &src[(sy * w) as usize..((sy + 1) * w) as usize];
            for (x, d) in row.iter_mut().enumerate() {
                let cx = if t.flip {
                    w - 1 - x as isize
                } else {
                    x as isize
                };
                let sx = cx + dx;
                *d = if sx < 0 || sx >= w {
                    0
                } else {
                    src_row[sx as usize]
                };
            }
        }
    }
}

/// Training augmentation: random crop of S_h x S_w from the image zero-padded by `pad`
/// pixels on each side, horizontal flip with probability 0.5 when `flip`, then
/// normalisation. The randomness comes only from `rng` (two 64-bit draws).
#[allow(clippy::too_many_arguments)]
pub fn augment_into<R: RngCore + ?Sized>(
    image: &[u8],
    out: &mut [f32],
    channels: usize,
    size: impl Into<ImageSize>,
    rng: &mut R,
    pad: usize,
    flip: bool,
    norm: &Normalize,
) -> Result<(), DataError> {
    let t = CropFlip::random(rng, pad, flip);
    crop_flip_into(image, out, channels, size, pad, t, norm)
}
