//! reconstructions.png (`pretrain::reconstructions`): the picture's size for 8 and 3 images,
//! the panels' pixels (original, masked input with only the masked patches grey,
//! reconstruction), and MAE's patchify / unpatchify round trip on a non-square image.

use rand::{Rng, SeedableRng};
use vitk::attention_maps::render::png_bytes;
use vitk::model::ImageSize;
use vitk::pretrain::reconstructions::{
    masked_image, panel_origin, panel_size, patch_stats, patchify, render, sheet_size, unpatchify,
    Reconstruction, MASK_GREY,
};

const MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
const STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random()).collect()
}

/// Normalised image [3, H, W] from bytes, as the data pipeline gives it.
fn normalise(bytes: &[u8], plane: usize) -> Vec<f32> {
    bytes
        .iter()
        .enumerate()
        .map(|(i, &u)| (u as f32 / 255.0 - MEAN[i / plane]) / STD[i / plane])
        .collect()
}

/// `count` columns of `size` images, patch 4, with every third patch unmasked.
fn columns(count: usize, size: ImageSize) -> Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let n = (size.height / 4) * (size.width / 4);
    (0..count)
        .map(|i| {
            let bytes = 3 * size.height * size.width;
            let mask = (0..n).map(|p| u8::from((p + i) % 3 != 0)).collect();
            (
                random_bytes(bytes, 2 * i as u64),
                mask,
                random_bytes(bytes, 2 * i as u64 + 1),
            )
        })
        .collect()
}

fn draw(cols: &[(Vec<u8>, Vec<u8>, Vec<u8>)], size: ImageSize) -> image::RgbImage {
    let items: Vec<Reconstruction> = cols
        .iter()
        .map(|(o, m, r)| Reconstruction {
            original: o,
            mask: m,
            reconstruction: r,
        })
        .collect();
    render(&items, size, 4, "step 1000: masked L2 0.123").unwrap()
}

#[test]
fn picture_sizes_for_8_and_3_images() {
    let size = ImageSize::square(32);
    // Panels of 32·4 = 128 px; columns of 128 + 8 px after a gap of 8; three rows of a
    // 20-px title, the panel and a gap of 8, under a 30-px header.
    assert_eq!(panel_size(size), (128, 128));
    for (count, width) in [(8, 8 + 8 * 136), (3, 8 + 3 * 136), (12, 8 + 8 * 136)] {
        let sheet = draw(&columns(count, size), size);
        assert_eq!(sheet_size(count, size), (width, 30 + 3 * (20 + 128 + 8)));
        assert_eq!(sheet.dimensions(), (width as u32, 498), "{count} images");
        let png = image::load_from_memory(&png_bytes(&sheet).unwrap()).unwrap();
        assert_eq!((png.width(), png.height()), (width as u32, 498));
    }
    // A non-square image: zoom ⌈128 / 40⌉ = 4.
    let size = ImageSize {
        height: 24,
        width: 40,
    };
    assert_eq!(panel_size(size), (96, 160));
    let sheet = draw(&columns(3, size), size);
    assert_eq!(
        sheet.dimensions(),
        ((8 + 3 * 168) as u32, (30 + 3 * (20 + 96 + 8)) as u32)
    );
}

#[test]
fn panels_show_original_masked_and_reconstruction() {
    let size = ImageSize {
        height: 12,
        width: 20,
    };
    let (h, w) = (size.height, size.width);
    let cols = columns(3, size);
    let sheet = draw(&cols, size);
    let (ph, pw) = panel_size(size);
    let zoom = ph / h;
    assert_eq!(pw / w, zoom);
    let at = |img: &[u8], y: usize, x: usize| [0, 1, 2].map(|c| img[(c * h + y) * w + x]);
    for (col, (orig, mask, recon)) in cols.iter().enumerate() {
        let masked = masked_image(orig, size, 4, mask).unwrap();
        let (mut grey, mut kept) = (0, 0);
        for y in 0..h {
            for x in 0..w {
                let is_masked = mask[(y / 4) * (w / 4) + x / 4] != 0;
                // The library's masked image: grey where masked, the original elsewhere.
                let want = if is_masked {
                    grey += 1;
                    [MASK_GREY; 3]
                } else {
                    kept += 1;
                    at(orig, y, x)
                };
                assert_eq!(at(&masked, y, x), want);
                // Every display pixel of this image pixel, in the three panels.
                for (row, img) in [(0, at(orig, y, x)), (1, want), (2, at(recon, y, x))] {
                    let (x0, y0) = panel_origin(row, col, size);
                    for dy in 0..zoom {
                        for dx in 0..zoom {
                            let px = sheet.get_pixel(
                                (x0 + x * zoom + dx) as u32,
                                (y0 + y * zoom + dy) as u32,
                            );
                            assert_eq!(px.0, img, "column {col} row {row} pixel ({y}, {x})");
                        }
                    }
                }
            }
        }
        assert!(grey > 0 && kept > 0);
    }
}

#[test]
fn unpatchify_inverts_patchify_on_a_non_square_image() {
    let size = ImageSize {
        height: 12,
        width: 20,
    };
    let p = 4;
    let bytes = random_bytes(3 * 12 * 20, 9);
    let x = normalise(&bytes, 12 * 20);
    let patches = patchify(&x, size, p);
    assert_eq!(patches.len(), 15 * 48);
    // MAE's order: patch (py, px) row-major, then row p, column q, channel c fastest.
    let (py, px, pp, q, c) = (1, 3, 2, 1, 2);
    assert_eq!(
        patches[(py * 5 + px) * 48 + (pp * p + q) * 3 + c],
        x[(c * 12 + py * p + pp) * 20 + px * p + q]
    );
    let back = unpatchify(&patches, size, p, MEAN, STD, None).unwrap();
    assert_eq!(back, bytes);
    // Per-patch normalised targets (MAE's norm_pix_loss) mapped back with the original
    // patches' statistics.
    let stats = patch_stats(&patches, 48, 1e-6);
    let targets: Vec<f32> = patches
        .chunks_exact(48)
        .zip(&stats)
        .flat_map(|(v, &(m, s))| v.iter().map(move |&x| (x - m) / s))
        .collect();
    let back = unpatchify(&targets, size, p, MEAN, STD, Some(&stats)).unwrap();
    assert_eq!(back, bytes);
    // Shapes are checked.
    assert!(unpatchify(&patches[1..], size, p, MEAN, STD, None).is_err());
    assert!(unpatchify(&targets, size, p, MEAN, STD, Some(&stats[1..])).is_err());
}
