//! The ViT paper's colour objective on the CPU (`cpu::mim_colour`): the masked cross-entropy's
//! gradient against central finite differences in f64, and forward values of both ops on tiny
//! hand-computed cases (a 2-row masked CE, solid-colour patches, means at the bin edges).

mod common;

use common::{assert_close, fd_grad, rand_vec, FD_STEP, GRAD_TOL};
use vitk::cpu::loss::cross_entropy;
use vitk::cpu::mim_colour::{
    colour_class, colour_level, masked_cross_entropy, mean_colour_targets, COLOUR_CLASSES,
};
use vitk::model::ImageSize;

#[test]
fn masked_cross_entropy_gradients() {
    // 7 rows (4 masked), 9 classes; unmasked rows carry out-of-range targets, which are unread.
    let (rows, k) = (7, 9);
    let mask = [1u8, 0, 1, 1, 0, 0, 1];
    let targets = [0u32, 99, 8, 3, 99, 99, 3];
    for smoothing in [0.0, 0.1] {
        let logits = rand_vec(rows * k, 31, 3.0);
        let mut d = vec![f64::NAN; rows * k];
        let st = masked_cross_entropy(&logits, &targets, &mask, k, smoothing, Some(&mut d));
        assert_eq!(st.masked, 4);
        let fd = fd_grad(&logits, FD_STEP, |v| {
            masked_cross_entropy(v, &targets, &mask, k, smoothing, None).loss
        });
        assert_close(
            &format!("masked cross-entropy dlogits (smoothing {smoothing})"),
            &d,
            &fd,
            GRAD_TOL,
        );
        // Unmasked rows: exactly 0.
        for (r, &m) in mask.iter().enumerate() {
            if m == 0 {
                assert!(d[r * k..(r + 1) * k].iter().all(|&g| g == 0.0), "row {r}");
            }
        }
    }
}

#[test]
fn masked_cross_entropy_two_rows_by_hand() {
    // Row 0: uniform logits over 3 classes, target 1: loss ln 3; the first arg-max (0) is wrong.
    // Row 1: unmasked (huge logits, out-of-range target: never read).
    // Row 2: logits (ln 2, 0, 0) → p = (1/2, 1/4, 1/4), target 0: loss ln 2, correct.
    let logits = [0.0, 0.0, 0.0, 1e30, -1e30, 7.0, 2f64.ln(), 0.0, 0.0];
    let targets = [1u32, 1000, 0];
    let mask = [1u8, 0, 1];
    let mut d = vec![f64::NAN; 9];
    let st = masked_cross_entropy(&logits, &targets, &mask, 3, 0.0, Some(&mut d));
    assert_eq!((st.masked, st.correct), (2, 1));
    assert!(
        (st.loss - 6f64.ln() / 2.0).abs() < 1e-15,
        "loss {}",
        st.loss
    );
    let third = 1.0 / 3.0;
    let want = [
        third / 2.0,
        (third - 1.0) / 2.0,
        third / 2.0,
        0.0,
        0.0,
        0.0,
        -0.25,
        0.125,
        0.125,
    ];
    assert_close("dlogits", &d, &want, 1e-15);
}

#[test]
fn masked_cross_entropy_edge_masks() {
    let (rows, k) = (5, 4);
    let logits = rand_vec(rows * k, 7, 2.0);
    let targets = [3u32, 0, 1, 2, 2];
    // Nothing masked: loss 0, gradient 0, no NaN, in both precisions.
    let mut d = vec![f64::NAN; rows * k];
    let st = masked_cross_entropy(&logits, &targets, &[0; 5], k, 0.1, Some(&mut d));
    assert_eq!((st.loss, st.correct, st.masked), (0.0, 0, 0));
    assert!(d.iter().all(|&g| g == 0.0));
    let l32: Vec<f32> = logits.iter().map(|&v| v as f32).collect();
    let mut d32 = vec![f32::NAN; rows * k];
    let st = masked_cross_entropy(&l32, &targets, &[0; 5], k, 0.0, Some(&mut d32));
    assert_eq!((st.loss, st.masked), (0.0, 0));
    assert!(d32.iter().all(|&g| g == 0.0));
    // Everything masked: the plain cross-entropy.
    let mut want = vec![0.0; rows * k];
    let plain = cross_entropy(&logits, &targets, k, 0.1, Some(&mut want));
    let st = masked_cross_entropy(&logits, &targets, &[1; 5], k, 0.1, Some(&mut d));
    assert_eq!(
        (st.loss, st.correct, st.masked),
        (plain.loss, plain.correct, 5)
    );
    assert_eq!(d, want);
}

/// Images [B, 3, H, W] normalised with mean = std = 0.5 (x = 2v − 1: exact in f32 for these
/// v, and so is x·0.5 + 0.5) from values v [B, 3, H, W].
fn normalise_half(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&v| 2.0 * v - 1.0).collect()
}

#[test]
fn mean_colour_of_solid_patches() {
    // One 4x8 image, patch 4: patch 0 solid (0.9, 0.33, 0.7) → levels (7, 2, 5) → class 469
    // (⌊7.2⌋, ⌊2.64⌋, ⌊5.6⌋: rounding would give 3 and 6);
    // patch 1: red half 0 and half 1 (mean exactly 0.5 → level 4), green 0.25 (exactly 2/8 →
    // level 2), blue 1 (level 8 clamped to 7) → class 279.
    let (h, w) = (4, 8);
    let mut v = vec![0.0f32; 3 * h * w];
    for y in 0..h {
        for x in 0..w {
            let px = if x < 4 {
                [0.9, 0.33, 0.7]
            } else {
                [if y < 2 { 0.0 } else { 1.0 }, 0.25, 1.0]
            };
            for c in 0..3 {
                v[(c * h + y) * w + x] = px[c];
            }
        }
    }
    let mut classes = vec![u32::MAX; 2];
    let size = ImageSize {
        height: h,
        width: w,
    };
    mean_colour_targets(
        &mut classes,
        &normalise_half(&v),
        1,
        size,
        4,
        [0.5; 3],
        [0.5; 3],
    );
    assert_eq!(classes, [469, 279]);
    // The same solid colour under CIFAR-10's statistics (values far from the edges).
    let (mean, std) = ([0.4914f32, 0.4822, 0.4465], [0.2470f32, 0.2435, 0.2616]);
    let x: Vec<f32> = v
        .iter()
        .enumerate()
        .map(|(i, &v)| (v - mean[i / (h * w)]) / std[i / (h * w)])
        .collect();
    mean_colour_targets(&mut classes, &x, 1, size, 4, mean, std);
    assert_eq!(classes[0], 469);
    assert_eq!(colour_class([1.0, 1.0, 1.0]) as usize, COLOUR_CLASSES - 1);
}

#[test]
fn mean_colour_at_bin_edges() {
    // Patch 1: the class of each pixel alone. Every edge k/8 is level k (min 7), a value one
    // ulp below it level k − 1; below 0 is 0 and NaN is 0.
    for k in 0..=8u32 {
        let edge = k as f32 / 8.0;
        assert_eq!(colour_level(edge), k.min(7), "edge {edge}");
        if k > 0 {
            let below = f32::from_bits(edge.to_bits() - 1);
            assert_eq!(colour_level(below), k - 1, "below {edge}");
        }
    }
    assert_eq!(colour_level(-0.5), 0);
    assert_eq!(colour_level(f32::NAN), 0);
    assert_eq!(colour_level(3.0), 7);
    // Through the op: a 1x9 image of patch 1 whose red is at the edges k/8 (green, blue 0).
    let w = 9;
    let mut v = vec![0.0f32; 3 * w];
    for (k, r) in v[..w].iter_mut().enumerate() {
        *r = k as f32 / 8.0;
    }
    let mut classes = vec![u32::MAX; w];
    let size = ImageSize {
        height: 1,
        width: w,
    };
    mean_colour_targets(
        &mut classes,
        &normalise_half(&v),
        1,
        size,
        1,
        [0.5; 3],
        [0.5; 3],
    );
    let want: Vec<u32> = (0..w as u32).map(|k| k.min(7) * 64).collect();
    assert_eq!(classes, want);
}
