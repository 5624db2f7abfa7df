//! kernels/mim_colour.cu against `cpu::mim_colour`: the mean-colour targets exactly (the same
//! f32 operations on both sides), at odd shapes, a grid-stride case and means at the bin edges;
//! the masked cross-entropy against the CPU op in f64, at odd shapes, the model scale
//! (B·N = 4·64 rows, K = 512) and the hostile masks (none, all, tied logits), outputs poisoned
//! before the launch. Device: the emulator, or a GPU with VITK_TEST_DEVICE=cuda.
//!
//! Tolerances (norm-wise relative): fp32 loss and dlogits 1e-5, as the cross-entropy kernel
//! (a few dozen roundings of 2⁻²⁴ at most); a bf16 dlogits adds u16 = 2⁻⁸ (one rounding).

mod common;
mod gpu_common;

use gpu_common::{check, device, rng, uniform, widen, Dev, U16};
use rand::Rng;
use vitk::cpu::mim_colour::{masked_cross_entropy, mean_colour_targets};
use vitk::engine::Precision;
use vitk::gpu::kernels::mim_colour as kernels;
use vitk::gpu::DeviceBuffer;
use vitk::model::ImageSize;

const LOSS_TOL: f64 = 1e-5;
const DLOGITS_TOL: f64 = 1e-5;

const CIFAR_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
const CIFAR_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// The kernel's classes for `images` (poisoned with u32::MAX before the launch).
fn gpu_classes(
    rt: &std::sync::Arc<dyn vitk::gpu::Runtime>,
    images: &[f32],
    b: usize,
    size: ImageSize,
    p: usize,
    mean: [f32; 3],
    std: [f32; 3],
) -> Vec<u32> {
    let mut dev = Dev::new(rt);
    let n = b * (size.height / p) * (size.width / p);
    let out = DeviceBuffer::from_slice(rt, &vec![u32::MAX; n]).unwrap();
    let gi = dev.f32(images);
    kernels::mean_colour_targets(&**rt, out.view(), gi, b, size, p, mean, std).unwrap();
    rt.synchronize().unwrap();
    out.to_vec().unwrap()
}

fn cpu_classes(
    images: &[f32],
    b: usize,
    size: ImageSize,
    p: usize,
    mean: [f32; 3],
    std: [f32; 3],
) -> Vec<u32> {
    let mut want = vec![u32::MAX; b * (size.height / p) * (size.width / p)];
    mean_colour_targets(&mut want, images, b, size, p, mean, std);
    want
}

/// Normalised images from bytes [.., 3, H, W]: (u/255 − mean_c) / std_c in f32, as the data
/// pipeline gives them.
fn normalise(bytes: &[u8], plane: usize, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    bytes
        .iter()
        .enumerate()
        .map(|(i, &u)| {
            let c = (i / plane) % 3;
            (u as f32 / 255.0 - mean[c]) / std[c]
        })
        .collect()
}

#[test]
fn mean_colour_targets_match_cpu() {
    let rt = device();
    let mut rng = rng("mean_colour_targets");
    // (batch, height, width, patch): odd and non-square shapes, CIFAR-10 at patch 4 and 224
    // at patch 16; then 540,672 patches of one pixel, past the 2048 x 256 threads of the
    // grid-stride loop.
    for (b, h, w, p) in [
        (1, 4, 4, 2),
        (3, 20, 12, 4),
        (2, 33, 22, 11),
        (1, 35, 35, 7),
        (8, 32, 32, 4),
        (2, 224, 224, 16),
        (1, 768, 704, 1),
    ] {
        let size = ImageSize {
            height: h,
            width: w,
        };
        let bytes: Vec<u8> = (0..b * 3 * h * w).map(|_| rng.random()).collect();
        let images = normalise(&bytes, h * w, CIFAR_MEAN, CIFAR_STD);
        let want = cpu_classes(&images, b, size, p, CIFAR_MEAN, CIFAR_STD);
        assert!(want.iter().all(|&c| c < 512));
        let got = gpu_classes(&rt, &images, b, size, p, CIFAR_MEAN, CIFAR_STD);
        assert_eq!(got, want, "B={b} S={h}x{w} P={p}");
    }
}

#[test]
fn mean_colour_targets_agree_at_bin_edges() {
    let rt = device();
    let mut rng = rng("mean_colour_edges");
    // Exact edges: mean 0, std 1 (un-normalising is exact), values k/8 and one ulp below,
    // patch 1 → levels by hand.
    let mut v: Vec<f32> = (0..=8).map(|k| k as f32 / 8.0).collect();
    v.extend((1..=8).map(|k| f32::from_bits((k as f32 / 8.0).to_bits() - 1)));
    let w = v.len();
    let mut images = vec![0.0f32; 3 * w]; // green, blue: 0
    images[..w].copy_from_slice(&v);
    let size = ImageSize {
        height: 1,
        width: w,
    };
    let want: Vec<u32> = (0..=8u32)
        .map(|k| k.min(7) * 64)
        .chain((1..=8u32).map(|k| (k - 1) * 64))
        .collect();
    assert_eq!(cpu_classes(&images, 1, size, 1, [0.0; 3], [1.0; 3]), want);
    assert_eq!(
        gpu_classes(&rt, &images, 1, size, 1, [0.0; 3], [1.0; 3]),
        want
    );
    // Patch means at the edges in real arithmetic, under CIFAR-10's statistics: 2x2 patches of
    // bytes summing to 255·k/2 (k even: 2 ↦ 63.75·4 = 255), which the f32 rounding puts on
    // either side; both sides must agree.
    let (b, h, wd, p) = (4, 16, 24, 2);
    let size = ImageSize {
        height: h,
        width: wd,
    };
    let mut bytes = vec![0u8; b * 3 * h * wd];
    for plane in bytes.chunks_exact_mut(h * wd) {
        for py in 0..h / p {
            for px in 0..wd / p {
                let k = 2 * rng.random_range(0..4u32); // edges 0, 2/8, 4/8, 6/8
                let sum = 255 * k as usize / 2; // 4·(255·k/8)
                let cells = [sum / 4 + 1, sum / 4, sum / 4, sum - 3 * (sum / 4) - 1];
                let cells = if sum == 0 { [0; 4] } else { cells };
                for (i, &c) in cells.iter().enumerate() {
                    plane[(py * p + i / 2) * wd + px * p + i % 2] = c as u8;
                }
            }
        }
    }
    let images = normalise(&bytes, h * wd, CIFAR_MEAN, CIFAR_STD);
    let want = cpu_classes(&images, b, size, p, CIFAR_MEAN, CIFAR_STD);
    let got = gpu_classes(&rt, &images, b, size, p, CIFAR_MEAN, CIFAR_STD);
    assert_eq!(got, want);
}

/// Runs the kernel on (logits, targets, mask) in precision `prec` and compares it with the CPU
/// op in f64.
#[allow(clippy::too_many_arguments)]
fn compare_ce(
    rt: &std::sync::Arc<dyn vitk::gpu::Runtime>,
    case: &str,
    prec: Precision,
    logits: &[f32],
    targets: &[u32],
    mask: &[u8],
    k: usize,
    eps: f64,
) {
    let rows = targets.len();
    let mut dl = vec![0.0; rows * k];
    let st = masked_cross_entropy(&widen(logits), targets, mask, k, eps, Some(&mut dl));
    let mut dev = Dev::new(rt);
    let (stats, g_dl) = (dev.nan(3), dev.out(prec, rows * k));
    let g_targets = DeviceBuffer::from_slice(rt, targets).unwrap();
    let g_mask = DeviceBuffer::from_slice(rt, mask).unwrap();
    let gl = dev.f32(logits);
    kernels::masked_cross_entropy(
        &**rt,
        stats,
        g_dl,
        gl,
        g_targets.view(),
        g_mask.view(),
        rows,
        k,
        eps as f32,
    )
    .unwrap();
    let s = dev.get32(stats);
    check(case, "masked_ce.loss", LOSS_TOL, &s[..1], &[st.loss]);
    assert_eq!(s[1] as usize, st.correct, "{case}: correct count");
    assert_eq!(s[2] as usize, st.masked, "{case}: masked rows");
    let tol = DLOGITS_TOL + if prec == Precision::Bf16 { U16 } else { 0.0 };
    let got = dev.get(g_dl);
    check(case, "masked_ce.dlogits", tol, &got, &dl);
    // Unmasked rows: exactly 0.
    for (r, &m) in mask.iter().enumerate() {
        if m == 0 {
            assert!(
                got[r * k..(r + 1) * k].iter().all(|&g| g == 0.0),
                "{case}: row {r} is not masked"
            );
        }
    }
}

#[test]
fn masked_cross_entropy_matches_cpu() {
    let rt = device();
    let mut rng = rng("masked_cross_entropy");
    // (rows, classes, smoothing, masked fraction): odd shapes, then the model scale B·N = 4·64
    // rows of the 512 colour classes (8 warps x 32 rows, 16 logits per lane), at 75 % and 50 %.
    for (rows, k, eps, frac) in [
        (1, 1, 0.0, 1.0),
        (3, 10, 0.1, 0.5),
        (37, 5, 0.0, 0.75),
        (9, 1000, 0.2, 0.5),
        (300, 33, 0.1, 0.25),
        (256, 512, 0.0, 0.75),
        (256, 512, 0.1, 0.5),
    ] {
        let logits = uniform(&mut rng, rows * k, 4.0);
        let mask: Vec<u8> = (0..rows)
            .map(|_| u8::from(rng.random::<f64>() < frac))
            .collect();
        // Targets of unmasked rows are out of range: the kernel must not read them.
        let targets: Vec<u32> = (0..rows)
            .map(|r| {
                if mask[r] != 0 {
                    rng.random_range(0..k as u32)
                } else {
                    u32::MAX
                }
            })
            .collect();
        for prec in [Precision::Fp32, Precision::Bf16] {
            let case = format!("{prec} rows={rows} K={k} eps={eps} masked={frac}");
            compare_ce(&rt, &case, prec, &logits, &targets, &mask, k, eps);
        }
    }
}

#[test]
fn masked_cross_entropy_hostile_masks() {
    let rt = device();
    let mut rng = rng("masked_cross_entropy_hostile");
    let (rows, k) = (45, 512);
    let logits = uniform(&mut rng, rows * k, 4.0);
    let targets: Vec<u32> = (0..rows).map(|r| (r * 37 % k) as u32).collect();
    let p = Precision::Fp32;
    // Nothing masked: loss 0, masked 0, dlogits 0 (no NaN from 0/0).
    compare_ce(&rt, "no mask", p, &logits, &targets, &vec![0; rows], k, 0.1);
    // Everything masked (mask values other than 1 count as masked).
    let all: Vec<u8> = (0..rows).map(|r| 1 + (r % 255) as u8).collect();
    compare_ce(&rt, "all masked", p, &logits, &targets, &all, k, 0.0);
    // Tied logits: every row's maximum held by two classes; the lowest index wins on both
    // sides, and the targets alternate between the two.
    let mut tied = logits.clone();
    let mut t = targets.clone();
    for r in 0..rows {
        let (a, b) = ((r * 5) % k, (r * 5 + 1 + r % 300) % k);
        tied[r * k + a] = 9.0;
        tied[r * k + b] = 9.0;
        t[r] = if r % 2 == 0 { a as u32 } else { b as u32 };
    }
    let mask: Vec<u8> = (0..rows).map(|r| u8::from(r % 3 != 0)).collect();
    compare_ce(&rt, "tied", p, &tied, &t, &mask, k, 0.0);
}
