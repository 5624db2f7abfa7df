//! A generated 10-class set of 32x32 RGB images for quick end-to-end runs and tests.
//!
//! Each class is a distinct pattern: stripes of three orientations, checkerboard, disc,
//! ring, square, cross, triangle, smooth gradient. Colours come in five hue families
//! (72 degrees apart), each shared by two classes whose patterns differ (a full-image
//! texture and a single shape, or triangle and gradient): colour alone tells at most
//! 5 of 10 classes apart, so a model has to see the pattern too. Every image draws its
//! own hue/saturation/brightness jitter, position, size, period/phase and pixel noise.
//! Flipping an image left-right keeps its class (the diagonal class has both
//! directions), so the standard augmentation applies.
//!
//! Learnability, measured with a JAX replica of a timm ViT (patch 4, D 64, 4 layers,
//! 4 heads, CLS pooling, AdamW 2e-3, batch 128, crop+flip) on 10,000 training images
//! and 2,000 validation images on the shared 2-core machine: 97.6% validation accuracy
//! after 80 steps (about one minute), 100% after 150 steps.
//!
//! Everything is a function of the seed: image i of a stream is drawn from a generator
//! keyed by (seed, stream, i), so generation runs in parallel and is reproducible.

use rayon::prelude::*;

use super::rng::{Rng64, TAG_SYNTH_ORDER, TAG_SYNTH_TRAIN, TAG_SYNTH_VAL};
use super::{Dataset, Splits};
use crate::model::ImageSize;

/// S of the synthetic images.
pub const SIDE: usize = 32;
/// C of the synthetic images.
pub const CHANNELS: usize = 3;
/// Class names, in label order.
pub const CLASSES: [&str; 10] = [
    "h-stripes",
    "v-stripes",
    "diagonal-stripes",
    "checkerboard",
    "disc",
    "ring",
    "square",
    "cross",
    "triangle",
    "gradient",
];

/// HSV (hue in degrees, s and v in [0, 1]) to RGB in [0, 255].
fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h = h.rem_euclid(360.0) / 60.0;
    let c = v * s;
    let x = c * (1.0 - (h % 2.0 - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r + m, g + m, b + m].map(|u| u * 255.0)
}

/// Colour family of each class: classes sharing a family share a hue band, so colour
/// alone cannot tell them apart and the pattern must be seen.
const FAMILY: [u32; 10] = [0, 1, 2, 3, 0, 1, 2, 3, 4, 4];

/// The two colours of one image of class `label`: a bright foreground in the family's
/// hue band (72 degrees apart, jittered by up to 18) and a dark background of the
/// opposite hue, so the pattern always has strong contrast.
fn class_colours(label: usize, rng: &mut Rng64) -> ([f32; 3], [f32; 3]) {
    let hue = 72.0 * FAMILY[label] as f32 + rng.uniform(-18.0, 18.0);
    let bright = hsv(hue, rng.uniform(0.55, 1.0), rng.uniform(0.7, 1.0));
    let dark = hsv(
        hue + 180.0 + rng.uniform(-18.0, 18.0),
        rng.uniform(0.3, 0.9),
        rng.uniform(0.12, 0.45),
    );
    (dark, bright)
}

/// A pattern: for pixel centre (x, y) the weight of colour B in [0, 1].
type Pattern = Box<dyn Fn(f32, f32) -> f32 + Send + Sync>;

/// Draws the random geometry of one image of class `label`.
fn pattern(label: usize, rng: &mut Rng64) -> Pattern {
    let s = SIDE as f32;
    // A centre that keeps a shape of radius `r` inside the image with a 1-pixel margin.
    let centre = |rng: &mut Rng64, r: f32| {
        let lo = r + 1.0;
        let hi = (s - r - 1.0).max(lo);
        (rng.uniform(lo, hi), rng.uniform(lo, hi))
    };
    let on = |b: bool| if b { 1.0 } else { 0.0 };
    match label {
        0 | 1 => {
            let period = rng.uniform(4.0, 9.0);
            let duty = rng.uniform(0.35, 0.65);
            let phase = rng.uniform(0.0, period);
            let vertical = label == 1;
            Box::new(move |x, y| {
                let t = if vertical { x } else { y };
                on((t + phase).rem_euclid(period) < duty * period)
            })
        }
        2 => {
            let period = rng.uniform(5.0, 10.0);
            let duty = rng.uniform(0.35, 0.65);
            let phase = rng.uniform(0.0, period);
            let sign = if rng.coin() { 1.0 } else { -1.0 };
            // Distance along the diagonal normal is (x +- y) / sqrt(2).
            Box::new(move |x, y| {
                on(
                    ((x + sign * y) * std::f32::consts::FRAC_1_SQRT_2 + phase).rem_euclid(period)
                        < duty * period,
                )
            })
        }
        3 => {
            let cell = rng.uniform(3.0, 6.5);
            let (ox, oy) = (rng.uniform(0.0, cell), rng.uniform(0.0, cell));
            Box::new(move |x, y| {
                let (i, j) = (((x + ox) / cell).floor(), ((y + oy) / cell).floor());
                on((i + j).rem_euclid(2.0) == 1.0)
            })
        }
        4 => {
            let r = rng.uniform(6.0, 11.0);
            let (cx, cy) = centre(rng, r);
            Box::new(move |x, y| on((x - cx).hypot(y - cy) < r))
        }
        5 => {
            let r = rng.uniform(8.0, 13.0);
            let half = rng.uniform(1.2, 2.0);
            let (cx, cy) = centre(rng, r + half);
            Box::new(move |x, y| on(((x - cx).hypot(y - cy) - r).abs() < half))
        }
        6 => {
            let h = rng.uniform(5.0, 10.0);
            let (cx, cy) = centre(rng, h);
            Box::new(move |x, y| on((x - cx).abs() < h && (y - cy).abs() < h))
        }
        7 => {
            let arm = rng.uniform(8.0, 13.0);
            let half = rng.uniform(1.5, 2.8);
            let (cx, cy) = centre(rng, arm);
            Box::new(move |x, y| {
                let (dx, dy) = ((x - cx).abs(), (y - cy).abs());
                on((dx < half && dy < arm) || (dy < half && dx < arm))
            })
        }
        8 => {
            // Isosceles triangle, apex up or down, base as wide as it is tall.
            let h = rng.uniform(7.0, 12.0);
            let (cx, cy) = centre(rng, h);
            let down = rng.coin();
            Box::new(move |x, y| {
                let dy = if down { cy - y } else { y - cy }; // -h at the apex, +h at the base
                on(dy.abs() < h && (x - cx).abs() < (dy + h) / 2.0)
            })
        }
        _ => {
            // Smooth ramp from A to B along a random direction: no edges at all.
            let angle = rng.uniform(0.0, std::f32::consts::TAU);
            let (c, sn) = (angle.cos(), angle.sin());
            let length = rng.uniform(20.0, 40.0);
            let mid = s / 2.0;
            Box::new(move |x, y| (0.5 + ((x - mid) * c + (y - mid) * sn) / length).clamp(0.0, 1.0))
        }
    }
}

/// Renders one image of class `label` into `out` ([3, 32, 32] bytes).
fn render(label: usize, rng: &mut Rng64, out: &mut [u8]) {
    let (a, b) = class_colours(label, rng);
    let shape = pattern(label, rng);
    let noise = rng.uniform(3.0, 14.0);
    let plane = SIDE * SIDE;
    for y in 0..SIDE {
        for x in 0..SIDE {
            let w = shape(x as f32 + 0.5, y as f32 + 0.5);
            for c in 0..CHANNELS {
                let v = a[c] + (b[c] - a[c]) * w + noise * rng.normalish();
                out[c * plane + y * SIDE + x] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// `n` images of stream `stream`: labels balanced (counts differ by at most one) in a
/// shuffled order, image i drawn from (seed, stream, i).
fn generate_stream(n: usize, seed: u64, stream: u64) -> Dataset {
    let k = CLASSES.len();
    let mut labels: Vec<u16> = (0..n).map(|i| (i % k) as u16).collect();
    Rng64::from_key(&[seed, TAG_SYNTH_ORDER, stream]).shuffle(&mut labels);
    let len = CHANNELS * SIDE * SIDE;
    let mut images = vec![0u8; n * len];
    images.par_chunks_mut(len).enumerate().for_each(|(i, out)| {
        let mut rng = Rng64::from_key(&[seed, stream, i as u64]);
        render(labels[i] as usize, &mut rng, out);
    });
    Dataset {
        images,
        labels,
        classes: CLASSES.iter().map(|s| s.to_string()).collect(),
        channels: CHANNELS,
        size: ImageSize::square(SIDE),
    }
}

/// `n` synthetic 3x32x32 images of the 10 [`CLASSES`], deterministic in `seed`,
/// classes balanced (counts differ by at most one), in shuffled order.
pub fn generate(n: usize, seed: u64) -> Dataset {
    generate_stream(n, seed, TAG_SYNTH_TRAIN)
}

/// Training and validation sets from two independent streams of the same seed
/// (the validation images are not copies of training images).
pub fn generate_splits(n_train: usize, n_val: usize, seed: u64) -> Splits {
    Splits {
        train: generate_stream(n_train, seed, TAG_SYNTH_TRAIN),
        val: generate_stream(n_val, seed, TAG_SYNTH_VAL),
        val_source: format!("synthetic: {n_val} images from the validation stream of seed {seed}"),
        warnings: Vec::new(),
    }
}
