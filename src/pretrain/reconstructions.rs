//! reconstructions.png: for up to [`MAX_IMAGES`] images, one column each and three rows, the
//! original, the masked input (masked patches filled grey) and the model's reconstruction, each
//! panel titled, under a header line. Plus the conversions between a model's per-patch pixel
//! predictions and images: [`patchify`] / [`unpatchify`] in MAE's patch order.
//!
//! Images are u8 planar RGB [3, S_h, S_w] (as the model sees them: resized, not normalised);
//! masks are [N] per patch, non-zero = masked, N = (S_h/P)·(S_w/P) in row-major order.
//!
//! Layout (pixels): every panel is S_h·z x S_w·z, z = ⌈128 / max(S_h, S_w)⌉ (at least 1) so a
//! 32-pixel image shows at 128; see [`sheet_size`] and [`panel_origin`]. The picture is returned,
//! not written (`attention_maps::render::png_bytes` encodes it; write with `atomic::write_atomic`).

use crate::model::ImageSize;
use image::RgbImage;
use plotters::prelude::*;

/// Most images in a picture (columns).
pub const MAX_IMAGES: usize = 8;
/// Smallest side a panel is zoomed up to.
const MIN_PANEL: usize = 128;
const GAP: usize = 8;
const TITLE: usize = 20;
const HEADER: usize = 30;
/// The rows: original, masked input, reconstruction.
const ROWS: usize = 3;
/// The fill of a masked patch in the masked row.
pub const MASK_GREY: u8 = 128;

/// One column of the picture: the original image, its patch mask and the reconstruction.
pub struct Reconstruction<'a> {
    /// [3, S_h, S_w] u8 planar RGB.
    pub original: &'a [u8],
    /// [N] non-zero = masked.
    pub mask: &'a [u8],
    /// [3, S_h, S_w] u8 planar RGB (see [`unpatchify`]).
    pub reconstruction: &'a [u8],
}

/// (height, width) of one panel for an image of `size`.
pub fn panel_size(size: ImageSize) -> (usize, usize) {
    let zoom = MIN_PANEL
        .div_ceil(size.height.max(size.width).max(1))
        .max(1);
    (size.height * zoom, size.width * zoom)
}

/// (width, height) of the picture of `images` images (at most [`MAX_IMAGES`] are drawn):
/// width = GAP + columns·(P_w + GAP), height = HEADER + 3·(TITLE + P_h + GAP), P the panel.
pub fn sheet_size(images: usize, size: ImageSize) -> (usize, usize) {
    let cols = images.clamp(1, MAX_IMAGES);
    let (ph, pw) = panel_size(size);
    (GAP + cols * (pw + GAP), HEADER + ROWS * (TITLE + ph + GAP))
}

/// (x, y) of the top-left pixel of the panel in `row` (0 original, 1 masked, 2 reconstruction)
/// and column `col`.
pub fn panel_origin(row: usize, col: usize, size: ImageSize) -> (usize, usize) {
    let (ph, pw) = panel_size(size);
    (
        GAP + col * (pw + GAP),
        HEADER + row * (TITLE + ph + GAP) + TITLE,
    )
}

/// The masked input of `image` [3, S_h, S_w]: masked patches ([N] non-zero) filled with
/// [`MASK_GREY`], the others unchanged.
pub fn masked_image(
    image: &[u8],
    size: ImageSize,
    patch: usize,
    mask: &[u8],
) -> Result<Vec<u8>, String> {
    let (h, w) = (size.height, size.width);
    check_image("masked_image", image, size, patch)?;
    let (_, gw) = size.grid(patch);
    if mask.len() != size.grid(patch).0 * gw {
        return Err(format!(
            "masked_image: {} mask values for a {size} image of patch {patch}",
            mask.len()
        ));
    }
    let mut out = image.to_vec();
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                if mask[(y / patch) * gw + x / patch] != 0 {
                    out[(c * h + y) * w + x] = MASK_GREY;
                }
            }
        }
    }
    Ok(out)
}

fn check_image(what: &str, image: &[u8], size: ImageSize, patch: usize) -> Result<(), String> {
    let (h, w) = (size.height, size.width);
    if patch == 0 || !h.is_multiple_of(patch) || !w.is_multiple_of(patch) || h == 0 || w == 0 {
        return Err(format!(
            "{what}: image {size} is not a multiple of patch {patch}"
        ));
    }
    if image.len() != 3 * h * w {
        return Err(format!(
            "{what}: {} bytes for a {h}x{w} RGB image",
            image.len()
        ));
    }
    Ok(())
}

/// Draws the picture of the first [`MAX_IMAGES`] of `images` (at least one), all of `size`
/// with patches of `patch`: `header` on top, then per column the original, the masked input
/// ([`masked_image`]) and the reconstruction, each zoomed (nearest) to [`panel_size`].
pub fn render(
    images: &[Reconstruction],
    size: ImageSize,
    patch: usize,
    header: &str,
) -> Result<RgbImage, String> {
    if images.is_empty() {
        return Err("reconstructions: no image".into());
    }
    let images = &images[..images.len().min(MAX_IMAGES)];
    let (w, h) = sheet_size(images.len(), size);
    let (ph, pw) = panel_size(size);
    let (sh, sw) = (size.height, size.width);
    let plane = sh * sw;
    let mut sheet = RgbImage::from_pixel(w as u32, h as u32, image::Rgb([255, 255, 255]));
    let mut titles = Vec::new();
    for (col, item) in images.iter().enumerate() {
        check_image("reconstructions: original", item.original, size, patch)?;
        check_image(
            "reconstructions: reconstruction",
            item.reconstruction,
            size,
            patch,
        )?;
        let masked = masked_image(item.original, size, patch, item.mask)?;
        let n_masked = item.mask.iter().filter(|&&m| m != 0).count();
        let rows: [(&[u8], String); ROWS] = [
            (item.original, format!("#{} original", col + 1)),
            (&masked, format!("masked {n_masked}/{}", item.mask.len())),
            (item.reconstruction, "reconstruction".into()),
        ];
        for (row, (img, title)) in rows.into_iter().enumerate() {
            let (x0, y0) = panel_origin(row, col, size);
            for y in 0..ph {
                for x in 0..pw {
                    // The image pixel under this display pixel (nearest), [0, S_h) x [0, S_w).
                    let (iy, ix) = (y * sh / ph, x * sw / pw);
                    let px = [0, 1, 2].map(|c| img[c * plane + iy * sw + ix]);
                    sheet.put_pixel((x0 + x) as u32, (y0 + y) as u32, image::Rgb(px));
                }
            }
            titles.push((x0, y0 - TITLE + 3, title));
        }
    }
    crate::train::metrics::register_font();
    {
        let buf: &mut [u8] = &mut sheet;
        let root = BitMapBackend::with_buffer(buf, (w as u32, h as u32)).into_drawing_area();
        let big = ("sans-serif", 18).into_font().color(&BLACK);
        let small = ("sans-serif", 14).into_font().color(&BLACK);
        root.draw_text(header, &big, (GAP as i32, 6))
            .map_err(|e| e.to_string())?;
        for (x, y, title) in &titles {
            root.draw_text(title, &small, (*x as i32, *y as i32))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(sheet)
}

/// Patches [N, P·P·3] of an image [3, S_h, S_w] in MAE's order: patches row-major, within a
/// patch row p, column q, channel c, channel fastest (index (p·P + q)·3 + c).
pub fn patchify(image: &[f32], size: ImageSize, patch: usize) -> Vec<f32> {
    let (h, w) = (size.height, size.width);
    assert!(
        patch > 0 && h.is_multiple_of(patch) && w.is_multiple_of(patch),
        "patchify: image {size} not a multiple of patch {patch}"
    );
    assert_eq!(image.len(), 3 * h * w, "patchify: image");
    let (gh, gw) = size.grid(patch);
    let mut out = Vec::with_capacity(image.len());
    for py in 0..gh {
        for px in 0..gw {
            for p in 0..patch {
                for q in 0..patch {
                    for c in 0..3 {
                        out.push(image[(c * h + py * patch + p) * w + px * patch + q]);
                    }
                }
            }
        }
    }
    out
}

/// Per patch (mean, √(var + eps)) of patches [N, D] with the unbiased variance, as MAE's
/// `norm_pix_loss` targets (eps = 1e-6 there): the statistics [`unpatchify`] re-applies to
/// predictions of per-patch-normalised targets.
pub fn patch_stats(patches: &[f32], dim: usize, eps: f64) -> Vec<(f32, f32)> {
    assert!(
        dim > 1 && patches.len().is_multiple_of(dim),
        "patch_stats: dim"
    );
    patches
        .chunks_exact(dim)
        .map(|v| {
            let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / dim as f64;
            let var = v
                .iter()
                .map(|&x| (f64::from(x) - mean).powi(2))
                .sum::<f64>()
                / (dim - 1) as f64;
            (mean as f32, (var + eps).sqrt() as f32)
        })
        .collect()
}

/// A value in [0, 1] as a byte: round(v·255) clamped to [0, 255] (NaN → 0).
pub fn to_byte(v: f32) -> u8 {
    (v * 255.0).round().clamp(0.0, 255.0) as u8
}

/// The image [3, S_h, S_w] (u8) of a per-patch prediction `pred` [N, P·P·3] in [`patchify`]'s
/// order, of images normalised per channel with `mean`/`std`. With `patch_norm` [N] (a patch's
/// (mean, std), e.g. the original's from [`patch_stats`]), the prediction is of per-patch
/// normalised targets and is first mapped back: x = pred·std_patch + mean_patch. Then
/// v = x·std_c + mean_c and the byte [`to_byte`]\(v).
pub fn unpatchify(
    pred: &[f32],
    size: ImageSize,
    patch: usize,
    mean: [f32; 3],
    std: [f32; 3],
    patch_norm: Option<&[(f32, f32)]>,
) -> Result<Vec<u8>, String> {
    let (h, w) = (size.height, size.width);
    if patch == 0 || !h.is_multiple_of(patch) || !w.is_multiple_of(patch) {
        return Err(format!(
            "unpatchify: image {size} is not a multiple of patch {patch}"
        ));
    }
    let (gh, gw) = size.grid(patch);
    let dim = patch * patch * 3;
    if pred.len() != gh * gw * dim {
        return Err(format!(
            "unpatchify: {} values for {} patches of {dim}",
            pred.len(),
            gh * gw
        ));
    }
    if let Some(s) = patch_norm {
        if s.len() != gh * gw {
            return Err(format!(
                "unpatchify: {} patch statistics for {} patches",
                s.len(),
                gh * gw
            ));
        }
    }
    let mut out = vec![0u8; 3 * h * w];
    for (n, v) in pred.chunks_exact(dim).enumerate() {
        let (py, px) = (n / gw, n % gw);
        let (pm, ps) = patch_norm.map_or((0.0, 1.0), |s| s[n]);
        for p in 0..patch {
            for q in 0..patch {
                for c in 0..3 {
                    let x = v[(p * patch + q) * 3 + c] * ps + pm;
                    out[(c * h + py * patch + p) * w + px * patch + q] =
                        to_byte(x * std[c] + mean[c]);
                }
            }
        }
    }
    Ok(out)
}
