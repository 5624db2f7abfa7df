//! The masked-image-modelling ops (src/cpu/mim.rs): backward against central finite
//! differences in f64 on shapes that are not powers of two (L = Σ out ⊙ G for a random G
//! where the op has a tensor output), and forward values on tiny hand-computed cases.

mod common;

use common::{assert_close, dot, fd_grad, rand_vec, FD_STEP, GRAD_TOL};
use vitk::cpu::mim::{
    mask_tokens_backward, mask_tokens_forward, masked_pixel_loss, patch_targets,
    substitute_backward, substitute_forward, PixelLoss, SOURCE_MASK_TOKEN,
};
use vitk::model::ImageSize;

/// A fixed mask [rows] with some of each kind.
fn mask_of(rows: usize) -> Vec<bool> {
    (0..rows).map(|i| (i * 5 + 2) % 7 < 3).collect()
}

#[test]
fn mask_tokens_gradients() {
    let (b, n, d) = (3, 7, 5);
    let mask = mask_of(b * n);
    assert!(mask.iter().any(|&m| m) && mask.iter().any(|&m| !m));
    let pe = rand_vec(b * n * d, 1, 1.0);
    let token = rand_vec(d, 2, 1.0);
    let g = rand_vec(b * n * d, 3, 1.0);
    let loss = |pe: &[f64], token: &[f64]| {
        let mut x = vec![0.0; b * n * d];
        mask_tokens_forward(&mut x, pe, &mask, token);
        dot(&x, &g)
    };
    let mut dpe = vec![f64::NAN; b * n * d]; // overwritten
    let mut dtoken = vec![0.5; d]; // accumulated into
    mask_tokens_backward(&mut dpe, &mut dtoken, &g, &mask);
    let fd_pe = fd_grad(&pe, FD_STEP, |p| loss(p, &token));
    let fd_token: Vec<f64> = fd_grad(&token, FD_STEP, |t| loss(&pe, t))
        .iter()
        .map(|v| v + 0.5)
        .collect();
    assert_close("dpe", &dpe, &fd_pe, GRAD_TOL);
    assert_close("dtoken", &dtoken, &fd_token, GRAD_TOL);
}

#[test]
fn mask_tokens_forward_values() {
    // B = 1, N = 3, D = 2: patch 1 masked.
    let pe = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let mut x = [0.0; 6];
    mask_tokens_forward(&mut x, &pe, &[false, true, false], &[-1.0, -2.0]);
    assert_eq!(x, [1.0, 2.0, -1.0, -2.0, 5.0, 6.0]);
    let mut dpe = [9.0; 6];
    let mut dtok = [0.0; 2];
    let dx = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    mask_tokens_backward(&mut dpe, &mut dtok, &dx, &[true, false, true]);
    assert_eq!(dpe, [0.0, 0.0, 3.0, 4.0, 0.0, 0.0]);
    assert_eq!(dtok, [6.0, 8.0]);
}

#[test]
fn patch_targets_follow_mae_patchify() {
    // One 2-channel 2x4 image, P = 2: a 1x2 grid, K = 8. Pixel value = 100c + 10y + x.
    let (c, h, w) = (2, 2, 4);
    let img: Vec<f64> = (0..c * h * w)
        .map(|i| {
            let (ch, y, x) = (i / (h * w), (i / w) % h, i % w);
            (100 * ch + 10 * y + x) as f64
        })
        .collect();
    let mut t = vec![f64::NAN; 2 * 8];
    patch_targets(
        &mut t,
        &img,
        c,
        ImageSize {
            height: h,
            width: w,
        },
        2,
        false,
    );
    // MAE's einsum('nchpwq->nhwpqc'): (ky, kx) row-major, channel last.
    #[rustfmt::skip]
    let want = [
        0.0, 100.0, 1.0, 101.0, 10.0, 110.0, 11.0, 111.0, // patch (0, 0)
        2.0, 102.0, 3.0, 103.0, 12.0, 112.0, 13.0, 113.0, // patch (0, 1)
    ];
    assert_eq!(t, want);

    // norm_pix on patch 0: mean 55.5, unbiased var = Σ(v − 55.5)² / 7.
    let mut tn = vec![f64::NAN; 16];
    patch_targets(
        &mut tn,
        &img,
        c,
        ImageSize {
            height: h,
            width: w,
        },
        2,
        true,
    );
    let p0 = &want[..8];
    let mean = p0.iter().sum::<f64>() / 8.0;
    assert_eq!(mean, 55.5);
    let var = p0.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 7.0;
    let expect: Vec<f64> = p0
        .iter()
        .map(|v| (v - mean) / (var + 1e-6).sqrt())
        .collect();
    assert_close("norm_pix", &tn[..8], &expect, 1e-14);
    // The normalised patch has mean 0 and unbiased variance var / (var + 1e-6) ≈ 1.
    let v1 = tn[..8].iter().map(|v| v * v).sum::<f64>() / 7.0;
    assert!(
        (v1 - 1.0).abs() < 1e-6,
        "unbiased variance after norm_pix: {v1}"
    );
}

#[test]
fn patch_targets_non_square_batch() {
    // B = 2, C = 3, 6x9 images, P = 3: grid 2x3, N = 6, K = 27. Each target value must be
    // the pixel the formula names (checked independently of the loop order of the op).
    let (b, c, h, w, p) = (2, 3, 6, 9, 3);
    let img = rand_vec(b * c * h * w, 7, 1.0);
    let (gh, gw, k) = (h / p, w / p, p * p * c);
    let mut t = vec![f64::NAN; b * gh * gw * k];
    patch_targets(
        &mut t,
        &img,
        c,
        ImageSize {
            height: h,
            width: w,
        },
        p,
        false,
    );
    for bi in 0..b {
        for py in 0..gh {
            for px in 0..gw {
                for ky in 0..p {
                    for kx in 0..p {
                        for ch in 0..c {
                            let row = (bi * gh + py) * gw + px;
                            let got = t[row * k + (ky * p + kx) * c + ch];
                            let want = img[((bi * c + ch) * h + py * p + ky) * w + px * p + kx];
                            assert_eq!(got, want);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn masked_loss_gradients() {
    let (rows, k) = (11, 7);
    let mask = mask_of(rows);
    let pred = rand_vec(rows * k, 4, 1.0);
    let target = rand_vec(rows * k, 5, 1.0);
    for kind in [PixelLoss::L1, PixelLoss::L2] {
        let mut d = vec![f64::NAN; rows * k];
        masked_pixel_loss(&pred, &target, &mask, kind, Some(&mut d));
        let fd = fd_grad(&pred, FD_STEP, |p| {
            masked_pixel_loss(p, &target, &mask, kind, None)
        });
        assert_close(&format!("{kind:?} dpred"), &d, &fd, GRAD_TOL);
    }
}

#[test]
fn masked_loss_forward_values() {
    // 3 patches of K = 2, patches 0 and 2 masked.
    let pred = [1.0, 2.0, 10.0, 10.0, 0.0, -1.0];
    let target = [0.0, 4.0, 0.0, 0.0, 3.0, -1.0];
    let mask = [true, false, true];
    // L1: patch 0 mean (1 + 2)/2 = 1.5, patch 2 (3 + 0)/2 = 1.5 → 1.5.
    let mut d = [f64::NAN; 6];
    let l1 = masked_pixel_loss(&pred, &target, &mask, PixelLoss::L1, Some(&mut d));
    assert_eq!(l1, 1.5);
    // d = sign(e) / (masked · K) = ±1/4, 0 where e = 0 or unmasked.
    assert_eq!(d, [0.25, -0.25, 0.0, 0.0, -0.25, 0.0]);
    // L2: patch 0 (1 + 4)/2 = 2.5, patch 2 (9 + 0)/2 = 4.5 → 3.5.
    let l2 = masked_pixel_loss(&pred, &target, &mask, PixelLoss::L2, Some(&mut d));
    assert_eq!(l2, 3.5);
    assert_eq!(d, [0.5, -1.0, 0.0, 0.0, -1.5, 0.0]);
    // No masked patch: loss 0 and a zero gradient, no NaN.
    let l0 = masked_pixel_loss(&pred, &target, &[false; 3], PixelLoss::L2, Some(&mut d));
    assert_eq!(l0, 0.0);
    assert_eq!(d, [0.0; 6]);
}

/// Sources [B·N] for B images of `n` patches with every kind: the mask token, the patch
/// itself, another patch (patch 0 of each image is the source of two others).
fn sources(b: usize, n: usize) -> Vec<i32> {
    (0..b * n)
        .map(|r| match (r % n) % 4 {
            0 => SOURCE_MASK_TOKEN,
            1 => 0,
            _ => (r % n) as i32,
        })
        .collect()
}

#[test]
fn substitute_gradients() {
    let (b, n, d) = (2, 9, 5);
    let src = sources(b, n);
    let pe = rand_vec(b * n * d, 11, 1.0);
    let token = rand_vec(d, 12, 1.0);
    let g = rand_vec(b * n * d, 13, 1.0);
    let loss = |pe: &[f64], token: &[f64]| {
        let mut x = vec![0.0; b * n * d];
        substitute_forward(&mut x, pe, &src, n, token);
        dot(&x, &g)
    };
    let mut dpe = vec![f64::NAN; b * n * d];
    let mut dtoken = vec![0.0; d];
    substitute_backward(&mut dpe, &mut dtoken, &g, &src, n);
    assert_close(
        "dpe",
        &dpe,
        &fd_grad(&pe, FD_STEP, |p| loss(p, &token)),
        GRAD_TOL,
    );
    assert_close(
        "dtoken",
        &dtoken,
        &fd_grad(&token, FD_STEP, |t| loss(&pe, t)),
        GRAD_TOL,
    );
}

#[test]
fn substitute_forward_values() {
    // N = 3, D = 1: patch 0 from patch 2, patch 1 the token, patch 2 itself.
    let pe = [1.0, 2.0, 3.0, 10.0, 20.0, 30.0];
    let src = [2, SOURCE_MASK_TOKEN, 2, 1, 1, SOURCE_MASK_TOKEN];
    let mut x = [0.0; 6];
    substitute_forward(&mut x, &pe, &src, 3, &[-1.0]);
    assert_eq!(x, [3.0, -1.0, 3.0, 20.0, 20.0, -1.0]);
    let (mut dpe, mut dtok) = ([f64::NAN; 6], [0.0]);
    substitute_backward(
        &mut dpe,
        &mut dtok,
        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0],
        &src,
        3,
    );
    assert_eq!(dpe, [0.0, 0.0, 5.0, 0.0, 24.0, 0.0]);
    assert_eq!(dtok, [34.0]);
}
