//! kernels/mim.cu against src/cpu/mim.rs run in f64 on the same inputs: mask-token
//! substitution, patch-pixel targets and the masked pixel loss, on fresh random inputs at
//! shapes that are not multiples of any block size and at model scale (B = 4, N = 64, D = 64,
//! K = 48), with outputs poisoned (NaN) before the launch. The gradients that feed a matmul
//! (dpe, dpred) are checked in both precisions; the BERT-style substitution runs on the
//! sampler's own corruption tables; everything else is fp32 only (the kernels
//! have no bf16 inputs). Device: the emulator, or a GPU with VITK_TEST_DEVICE=cuda.

mod common;
mod gpu_common;

use gpu_common::{check, device, rng, tol, uniform, widen, Dev, U16};
use rand::Rng;
use vitk::cpu::mim::{self, PixelLoss};
use vitk::data::masking::{bert_corruption, corruption_sources};
use vitk::engine::Precision;
use vitk::gpu::kernels;
use vitk::gpu::DeviceBuffer;
use vitk::model::ImageSize;

/// Norm-wise relative error allowed per tensor in fp32. Copies and selections are exact; the
/// sums (dtoken: at most 64 rows per chunk then the chunks in order; loss: a fixed tree over
/// ≤ 256 partials; norm_pix: mean and variance over K) are fp32 sums of a few hundred terms,
/// well inside 1e-5 for inputs of one sign-mixed scale. A bf16 output adds U16.
const TOLERANCES: &[(&str, f64)] = &[
    ("mask_tokens.x", 0.0),
    ("mask_tokens.dpe", 0.0),
    ("mask_tokens.dtoken", 1e-5),
    ("substitute.x", 0.0),
    // dpe sums the dx rows that copied a patch (at most a few): fp32 rounding.
    ("substitute.dpe", 1e-6),
    ("patch_targets.raw", 0.0),
    ("patch_targets.norm", 1e-5),
    ("masked_loss.loss", 1e-5),
    ("masked_loss.dpred", 1e-5),
];

fn tol_in(name: &str, p: Precision) -> f64 {
    tol(TOLERANCES, name) + if p == Precision::Bf16 { U16 } else { 0.0 }
}

const BOTH: [Precision; 2] = [Precision::Fp32, Precision::Bf16];

/// A mask [rows] with each row masked with probability `ratio`.
fn random_mask(rng: &mut impl Rng, rows: usize, ratio: f64) -> Vec<bool> {
    (0..rows).map(|_| rng.random::<f64>() < ratio).collect()
}

fn bytes(mask: &[bool]) -> Vec<u8> {
    mask.iter().map(|&m| u8::from(m)).collect()
}

#[test]
fn mask_tokens_match_cpu() {
    let rt = device();
    let mut rng = rng("mask_tokens");
    // (rows = B·N, D, mask ratio): single element; odd; D > 256 (two column blocks) with a
    // ragged last chunk; model scale B = 4, N = 64, D = 64 (4 chunks of 64 rows); none and
    // all masked.
    for (rows, d, ratio) in [
        (1, 1, 1.0),
        (21, 5, 0.6),
        (131, 300, 0.6),
        (4 * 64, 64, 0.6),
        (37, 33, 0.0),
        (70, 17, 1.0),
    ] {
        let mask = random_mask(&mut rng, rows, ratio);
        let pe = uniform(&mut rng, rows * d, 1.0);
        let token = uniform(&mut rng, d, 1.0);
        let dx = uniform(&mut rng, rows * d, 1.0);
        let dtoken0 = uniform(&mut rng, d, 1.0);
        let mut x = vec![0.0; rows * d];
        mim::mask_tokens_forward(&mut x, &widen(&pe), &mask, &widen(&token));
        let mut dpe = vec![0.0; rows * d];
        let mut dtoken = widen(&dtoken0);
        mim::mask_tokens_backward(&mut dpe, &mut dtoken, &widen(&dx), &mask);
        let g_mask = DeviceBuffer::from_slice(&rt, &bytes(&mask)).unwrap();
        for prec in BOTH {
            let case = format!("{prec} rows={rows} D={d} ratio={ratio}");
            let mut dev = Dev::new(&rt);
            let (g_x, g_pe, g_tok) = (dev.nan(rows * d), dev.f32(&pe), dev.f32(&token));
            kernels::mask_tokens_forward(&*rt, g_x, g_pe, g_mask.view(), g_tok).unwrap();
            check(
                &case,
                "mask_tokens.x",
                tol(TOLERANCES, "mask_tokens.x"),
                &dev.get32(g_x),
                &x,
            );
            let g_dpe = dev.out(prec, rows * d);
            let g_dtok = dev.f32(&dtoken0);
            let scratch = dev.nan(kernels::mask_tokens_backward_scratch_len(rows, d));
            let g_dx = dev.f32(&dx);
            kernels::mask_tokens_backward(&*rt, g_dpe, g_dtok, scratch, g_dx, g_mask.view())
                .unwrap();
            check(
                &case,
                "mask_tokens.dpe",
                tol_in("mask_tokens.dpe", prec),
                &dev.get(g_dpe),
                &dpe,
            );
            check(
                &case,
                "mask_tokens.dtoken",
                tol(TOLERANCES, "mask_tokens.dtoken"),
                &dev.get32(g_dtok),
                &dtoken,
            );
        }
    }
}

#[test]
fn patch_targets_match_cpu() {
    let rt = device();
    let mut rng = rng("patch_targets");
    // (B, C, S_h, S_w, P, offset): K = 1 (norm: variance 0); odd non-square grids; model
    // scale (CIFAR at P = 4: N = 64, K = 48); K = 768 > the block's 128 threads on a
    // non-square image; pixels offset by 10 (the mean is not near zero).
    for (b, c, h, w, p, offset) in [
        (1, 1, 1, 1, 1, 0.0),
        (2, 3, 6, 9, 3, 0.0),
        (3, 2, 10, 4, 2, 10.0),
        (4, 3, 32, 32, 4, 0.0),
        (2, 3, 32, 48, 16, 0.0),
    ] {
        let size = ImageSize {
            height: h,
            width: w,
        };
        let images: Vec<f32> = uniform(&mut rng, b * c * h * w, 1.0)
            .iter()
            .map(|v| v + offset)
            .collect();
        let n = b * (h / p) * (w / p) * p * p * c;
        for norm in [false, true] {
            let case = format!("B={b} C={c} {h}x{w} P={p} offset={offset} norm={norm}");
            let mut t = vec![0.0; n];
            mim::patch_targets(&mut t, &widen(&images), c, size, p, norm);
            let mut dev = Dev::new(&rt);
            let (g_t, g_img) = (dev.nan(n), dev.f32(&images));
            kernels::patch_targets(&*rt, g_t, g_img, b, c, size, p, norm).unwrap();
            let name = if norm {
                "patch_targets.norm"
            } else {
                "patch_targets.raw"
            };
            check(&case, name, tol(TOLERANCES, name), &dev.get32(g_t), &t);
        }
    }
}

#[test]
fn patch_targets_of_a_flat_patch_are_zero() {
    // Zero variance: (t − mean) / sqrt(1e-6) must be exactly 0, not NaN.
    let rt = device();
    let (c, h, w, p) = (3, 4, 4, 4);
    let images = vec![0.75f32; c * h * w];
    let mut dev = Dev::new(&rt);
    let (g_t, g_img) = (dev.nan(c * h * w), dev.f32(&images));
    let size = ImageSize {
        height: h,
        width: w,
    };
    kernels::patch_targets(&*rt, g_t, g_img, 1, c, size, p, true).unwrap();
    assert!(dev.get32(g_t).iter().all(|&v| v == 0.0));
}

#[test]
fn masked_pixel_loss_matches_cpu() {
    let rt = device();
    let mut rng = rng("masked_pixel_loss");
    // (rows, K, ratio): single element; odd; K > 256; model scale B = 4, N = 64, K = 48;
    // 9001 rows: more than 8 x 1024 (the loss kernel's grid cap, so warps loop); none masked
    // (loss 0, zero gradient); all masked.
    for (rows, k, ratio) in [
        (1, 1, 1.0),
        (21, 7, 0.6),
        (37, 300, 0.5),
        (4 * 64, 48, 0.6),
        (9001, 3, 0.6),
        (13, 5, 0.0),
        (40, 9, 1.0),
    ] {
        let mask = random_mask(&mut rng, rows, ratio);
        let pred = uniform(&mut rng, rows * k, 1.0);
        let target = uniform(&mut rng, rows * k, 1.0);
        let g_mask = DeviceBuffer::from_slice(&rt, &bytes(&mask)).unwrap();
        for kind in [PixelLoss::L1, PixelLoss::L2] {
            let mut d = vec![0.0; rows * k];
            let loss =
                mim::masked_pixel_loss(&widen(&pred), &widen(&target), &mask, kind, Some(&mut d));
            for prec in BOTH {
                let case = format!("{prec} {kind:?} rows={rows} K={k} ratio={ratio}");
                let mut dev = Dev::new(&rt);
                let (g_loss, g_d, scratch) = (dev.nan(1), dev.out(prec, rows * k), dev.nan(rows));
                let (g_p, g_t) = (dev.f32(&pred), dev.f32(&target));
                kernels::masked_pixel_loss(
                    &*rt,
                    g_loss,
                    g_d,
                    scratch,
                    g_p,
                    g_t,
                    g_mask.view(),
                    kind,
                )
                .unwrap();
                check(
                    &case,
                    "masked_loss.loss",
                    tol(TOLERANCES, "masked_loss.loss"),
                    &dev.get32(g_loss),
                    &[loss],
                );
                check(
                    &case,
                    "masked_loss.dpred",
                    tol_in("masked_loss.dpred", prec),
                    &dev.get(g_d),
                    &d,
                );
            }
        }
    }
}

#[test]
fn substitute_matches_cpu() {
    let rt = device();
    let mut rng = rng("substitute");
    // (B, N, D): odd; D > 256 with 2 chunks of token rows; model scale B = 4, N = 64, D = 64.
    for (b, n, d) in [(1, 1, 3), (3, 7, 5), (2, 65, 300), (4, 64, 64)] {
        // BERT's corruption of half the patches (mask token, other patch, unchanged).
        let src: Vec<i32> = (0..b as u64)
            .flat_map(|i| corruption_sources(&bert_corruption(rng.random(), 0, i, n, 0.5)))
            .collect();
        let pe = uniform(&mut rng, b * n * d, 1.0);
        let token = uniform(&mut rng, d, 1.0);
        let dx = uniform(&mut rng, b * n * d, 1.0);
        let dtoken0 = uniform(&mut rng, d, 1.0);
        let mut x = vec![0.0; b * n * d];
        mim::substitute_forward(&mut x, &widen(&pe), &src, n, &widen(&token));
        let mut dpe = vec![0.0; b * n * d];
        let mut dtoken = widen(&dtoken0);
        mim::substitute_backward(&mut dpe, &mut dtoken, &widen(&dx), &src, n);
        let g_src = DeviceBuffer::from_slice(&rt, &src).unwrap();
        for prec in BOTH {
            let case = format!("{prec} B={b} N={n} D={d}");
            let mut dev = Dev::new(&rt);
            let (g_x, g_pe, g_tok) = (dev.nan(b * n * d), dev.f32(&pe), dev.f32(&token));
            kernels::substitute_forward(&*rt, g_x, g_pe, g_src.view(), g_tok, n).unwrap();
            check(
                &case,
                "substitute.x",
                tol(TOLERANCES, "substitute.x"),
                &dev.get32(g_x),
                &x,
            );
            let g_dpe = dev.out(prec, b * n * d);
            let g_dtok = dev.f32(&dtoken0);
            let scratch = dev.nan(kernels::mask_tokens_backward_scratch_len(b * n, d));
            let g_dx = dev.f32(&dx);
            kernels::substitute_backward(&*rt, g_dpe, g_dtok, scratch, g_dx, g_src.view(), n)
                .unwrap();
            let t = tol_in("substitute.dpe", prec);
            check(&case, "substitute.dpe", t, &dev.get(g_dpe), &dpe);
            let t = tol(TOLERANCES, "mask_tokens.dtoken");
            check(&case, "substitute.dtoken", t, &dev.get32(g_dtok), &dtoken);
        }
    }
}
