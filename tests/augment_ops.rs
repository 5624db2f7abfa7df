//! The augmentation recipe: pixel ops against hand-computed images and against Pillow / timm
//! (tests/fixtures/augment_pil.json, written by scripts/make_augment_fixture.py), the
//! policies' parsing and their draw distributions, random erasing, repeated augmentation,
//! and determinism of the per-sample pipeline and the loader.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use vitk::data::auto_augment::{draw_cifar10, AaOp, AutoAugment, CIFAR10_POLICY};
use vitk::data::loader::epoch_order;
use vitk::data::pixel_ops::{apply, PixelOp};
use vitk::data::rand_augment::{RandAugment, RandOp};
use vitk::data::random_erasing::{draw_box, erase};
use vitk::data::recipe::{AugmentRecipe, Pipeline, Workspace};
use vitk::data::repeat_sampler::repeated_order;
use vitk::data::rng::Rng64;
use vitk::data::{BatchLoader, Dataset, LoaderConfig, Normalize};
use vitk::model::ImageSize;

const FILL: [u8; 3] = [125, 123, 114];

fn size(h: usize, w: usize) -> ImageSize {
    ImageSize {
        height: h,
        width: w,
    }
}

/// Applies `op` to a copy of `img` ([C, h, w]) and returns the result.
fn run(op: PixelOp, img: &[u8], c: usize, h: usize, w: usize) -> Vec<u8> {
    let mut out = img.to_vec();
    apply(op, &mut out, &mut Vec::new(), c, size(h, w), FILL).unwrap();
    out
}

// ---------------------------------------------------------------- hand-computed images

#[test]
fn lut_ops_by_hand() {
    let img = [0u8, 20, 63, 64, 127, 128, 200, 255];
    // Invert: 255 - v.
    assert_eq!(
        run(PixelOp::Invert, &img, 1, 1, 8),
        [255, 235, 192, 191, 128, 127, 55, 0]
    );
    // Solarize 128: v < 128 ? v : 255 - v.
    let s = PixelOp::Solarize { threshold: 128.0 };
    assert_eq!(run(s, &img, 1, 1, 8), [0, 20, 63, 64, 127, 127, 55, 0]);
    // A fractional threshold (torchvision's bins): 63.5 inverts 64 and up.
    let s = PixelOp::Solarize { threshold: 63.5 };
    assert_eq!(run(s, &img, 1, 1, 8), [0, 20, 63, 191, 128, 127, 55, 0]);
    // SolarizeAdd 110 below 128, clipped at 255.
    let sa = PixelOp::SolarizeAdd {
        add: 110,
        threshold: 128,
    };
    assert_eq!(
        run(sa, &img, 1, 1, 8),
        [110, 130, 173, 174, 237, 128, 200, 255]
    );
    let sa = PixelOp::SolarizeAdd {
        add: 200,
        threshold: 128,
    };
    assert_eq!(
        run(sa, &img, 1, 1, 8),
        [200, 220, 255, 255, 255, 128, 200, 255]
    );
    // Posterize 2 bits: v & 0b1100_0000; 0 bits: 0; 8 bits: unchanged.
    let p = |bits| PixelOp::Posterize { bits };
    assert_eq!(run(p(2), &img, 1, 1, 8), [0, 0, 0, 64, 64, 128, 192, 192]);
    assert_eq!(run(p(0), &img, 1, 1, 8), [0; 8]);
    assert_eq!(run(p(8), &img, 1, 1, 8), img);
}

#[test]
fn histogram_ops_by_hand() {
    // AutoContrast [50, 100, 150]: scale 2.55, offset -127.5 -> 0, trunc(127.5), 255.
    assert_eq!(
        run(PixelOp::AutoContrast, &[50, 100, 150], 1, 1, 3),
        [0, 127, 255]
    );
    // A constant plane is left alone; each channel is stretched on its own.
    assert_eq!(
        run(PixelOp::AutoContrast, &[7, 7, 7, 10, 20, 30], 2, 1, 3),
        [7, 7, 7, 0, 127, 255]
    );
    // Equalize: 200 pixels each of 0, 100, 200. step = (600 - 200) / 255 = 1; lut[0] = 0,
    // lut[100] = 200 (the 200 pixels below), lut[200] = 400 clipped to 255.
    let mut img = vec![0u8; 200];
    img.extend([100u8; 200]);
    img.extend([200u8; 200]);
    let out = run(PixelOp::Equalize, &img, 1, 20, 30);
    assert_eq!((out[0], out[200], out[400]), (0, 200, 255));
    // Fewer than 255 pixels below the top value: step 0, identity.
    assert_eq!(run(PixelOp::Equalize, &[1, 2, 3, 4], 1, 2, 2), [1, 2, 3, 4]);
}

#[test]
fn enhance_ops_by_hand() {
    // Brightness: trunc(f * v), clipped.
    let b = |factor| PixelOp::Brightness { factor };
    assert_eq!(run(b(0.5), &[0, 1, 200, 255], 1, 1, 4), [0, 0, 100, 127]);
    assert_eq!(run(b(1.5), &[0, 1, 200, 255], 1, 1, 4), [0, 1, 255, 255]);
    // Contrast: mean 50 -> 50 + f (v - 50).
    let c = |factor| PixelOp::Contrast { factor };
    assert_eq!(run(c(2.0), &[0, 0, 100, 100], 1, 1, 4), [0, 0, 150, 150]);
    assert_eq!(run(c(0.5), &[0, 0, 100, 100], 1, 1, 4), [25, 25, 75, 75]);
    // Color on pure red: L = (255 * 19595 + 0x8000) >> 16 = 76.
    let col = |factor| PixelOp::Color { factor };
    assert_eq!(run(col(0.0), &[255, 0, 0], 3, 1, 1), [76, 76, 76]);
    assert_eq!(run(col(0.5), &[255, 0, 0], 3, 1, 1), [165, 38, 38]);
    // Color on one channel is the identity (PIL's degenerate is the image itself).
    assert_eq!(run(col(0.0), &[9, 200], 1, 1, 2), [9, 200]);
    // Sharpness, centre 130 on black: smoothed centre 0.5 + 130 * 5/13 -> 50, border kept.
    let mut img = [0u8; 9];
    img[4] = 130;
    let s = |factor| PixelOp::Sharpness { factor };
    let centre = |f| run(s(f), &img, 1, 3, 3)[4];
    assert_eq!((centre(0.0), centre(0.5), centre(2.0)), (50, 90, 210));
    assert!(run(s(0.0), &img, 1, 3, 3)
        .iter()
        .enumerate()
        .all(|(i, &v)| i == 4 || v == 0));
}

#[test]
fn affine_ops_by_hand() {
    let row = [10u8, 20, 30, 40];
    let tx = |pixels| PixelOp::TranslateX { pixels };
    // Input x = x + t: content moves left, the fill (channel 0: 125) enters on the right.
    assert_eq!(run(tx(1.0), &row, 1, 1, 4), [20, 30, 40, 125]);
    assert_eq!(run(tx(-1.0), &row, 1, 1, 4), [125, 10, 20, 30]);
    // Half a pixel: bilinear between neighbours, truncated; the last samples x = 4.0: fill.
    assert_eq!(run(tx(0.5), &row, 1, 1, 4), [15, 25, 35, 125]);
    let ty = PixelOp::TranslateY { pixels: 1.0 };
    assert_eq!(run(ty, &[1, 2, 3, 4], 1, 2, 2), [3, 4, 125, 125]);
    // ShearX 1 on [[1, 2], [3, 4]]: (0, 0) samples x = 1.0 (half way: 1.5 -> 1), the rest
    // fall at x >= 2: fill.
    let sh = PixelOp::ShearX { factor: 1.0 };
    assert_eq!(run(sh, &[1, 2, 3, 4], 1, 2, 2), [1, 125, 125, 125]);
    // Rotations by multiples of 90 degrees are exact; 90 is counter-clockwise.
    let rot = |degrees| PixelOp::Rotate { degrees };
    assert_eq!(run(rot(180.0), &[1, 2, 3], 1, 1, 3), [3, 2, 1]);
    assert_eq!(run(rot(90.0), &[1, 2, 3, 4], 1, 2, 2), [2, 4, 1, 3]);
    assert_eq!(run(rot(-90.0), &[1, 2, 3, 4], 1, 2, 2), [3, 1, 4, 2]);
    assert_eq!(run(rot(360.0), &[1, 2, 3, 4], 1, 2, 2), [1, 2, 3, 4]);
    // Three channels get their own fill byte.
    assert_eq!(
        run(tx(2.0), &[1, 2, 3, 4, 5, 6], 3, 1, 2),
        [125, 125, 123, 123, 114, 114]
    );
}

#[test]
fn ops_refuse_bad_shapes() {
    let bad = |len: usize, c: usize, h: usize, w: usize| {
        let mut img = vec![0u8; len];
        apply(
            PixelOp::Invert,
            &mut img,
            &mut Vec::new(),
            c,
            size(h, w),
            FILL,
        )
        .is_err()
    };
    assert!(bad(10, 3, 2, 2));
    // The right length for 4 or 0 channels, which PIL's ops do not take.
    assert!(bad(8, 4, 1, 2));
    assert!(bad(0, 0, 1, 2));
    assert!(!bad(12, 3, 2, 2));
}

// ---------------------------------------------------------------- Pillow / timm fixture

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/augment_pil.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn fixture_op(name: &str, arg: &Value) -> PixelOp {
    let f = arg.as_f64().unwrap_or(0.0);
    match name {
        "AutoContrast" => PixelOp::AutoContrast,
        "Equalize" => PixelOp::Equalize,
        "Invert" => PixelOp::Invert,
        "Solarize" => PixelOp::Solarize { threshold: f },
        "SolarizeAdd" => PixelOp::SolarizeAdd {
            add: f as i32,
            threshold: 128,
        },
        "Posterize" => PixelOp::Posterize { bits: f as u8 },
        "Color" => PixelOp::Color { factor: f },
        "Contrast" => PixelOp::Contrast { factor: f },
        "Brightness" => PixelOp::Brightness { factor: f },
        "Sharpness" => PixelOp::Sharpness { factor: f },
        "ShearX" => PixelOp::ShearX { factor: f },
        "ShearY" => PixelOp::ShearY { factor: f },
        "TranslateX" => PixelOp::TranslateX { pixels: f },
        "TranslateY" => PixelOp::TranslateY { pixels: f },
        "Rotate" => PixelOp::Rotate { degrees: f },
        _ => panic!("fixture op {name} unknown"),
    }
}

/// Every op of the fixture gives Pillow's bytes exactly.
#[test]
fn ops_match_pillow_exactly() {
    let fx = fixture();
    assert_eq!(fx["fill"], serde_json::json!(FILL));
    let images: Vec<(Vec<u8>, usize, usize)> = fx["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|im| {
            let h = im["height"].as_u64().unwrap() as usize;
            let w = im["width"].as_u64().unwrap() as usize;
            (unhex(im["data"].as_str().unwrap()), h, w)
        })
        .collect();
    let mut failures = Vec::new();
    let mut checked = HashMap::<String, usize>::new();
    for case in fx["ops"].as_array().unwrap() {
        let name = case["op"].as_str().unwrap();
        let (img, h, w) = &images[case["image"].as_u64().unwrap() as usize];
        let want = unhex(case["out"].as_str().unwrap());
        let got = run(fixture_op(name, &case["arg"]), img, 3, *h, *w);
        *checked.entry(name.to_string()).or_default() += 1;
        let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        if diff > 0 {
            let max = got
                .iter()
                .zip(&want)
                .map(|(&a, &b)| (a as i32 - b as i32).abs())
                .max()
                .unwrap();
            failures.push(format!(
                "{name}({}) on image {}: {diff} bytes differ, by up to {max}",
                case["arg"], case["image"]
            ));
        }
    }
    assert_eq!(checked.len(), 15, "ops covered: {checked:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn rand_op(name: &str) -> RandOp {
    use RandOp::*;
    match name {
        "AutoContrast" => AutoContrast,
        "Equalize" => Equalize,
        "Invert" => Invert,
        "Rotate" => Rotate,
        "Posterize" => Posterize,
        "PosterizeIncreasing" => PosterizeIncreasing,
        "Solarize" => Solarize,
        "SolarizeIncreasing" => SolarizeIncreasing,
        "SolarizeAdd" => SolarizeAdd,
        "Color" => Color,
        "ColorIncreasing" => ColorIncreasing,
        "Contrast" => Contrast,
        "ContrastIncreasing" => ContrastIncreasing,
        "Brightness" => Brightness,
        "BrightnessIncreasing" => BrightnessIncreasing,
        "Sharpness" => Sharpness,
        "SharpnessIncreasing" => SharpnessIncreasing,
        "ShearX" => ShearX,
        "ShearY" => ShearY,
        "TranslateXRel" => TranslateXRel,
        "TranslateYRel" => TranslateYRel,
        _ => panic!("timm op {name} unknown"),
    }
}

/// The argument an op carries, as timm's level function returns it (translations: the
/// fraction of the side).
fn op_arg(op: PixelOp, side: f64) -> Option<f64> {
    match op {
        PixelOp::AutoContrast | PixelOp::Equalize | PixelOp::Invert | PixelOp::Identity => None,
        PixelOp::Rotate { degrees } => Some(degrees),
        PixelOp::Posterize { bits } => Some(bits as f64),
        PixelOp::Solarize { threshold } => Some(threshold),
        PixelOp::SolarizeAdd { add, .. } => Some(add as f64),
        PixelOp::Color { factor }
        | PixelOp::Contrast { factor }
        | PixelOp::Brightness { factor }
        | PixelOp::Sharpness { factor }
        | PixelOp::ShearX { factor }
        | PixelOp::ShearY { factor } => Some(factor),
        PixelOp::TranslateX { pixels } | PixelOp::TranslateY { pixels } => Some(pixels / side),
    }
}

/// timm's op lists and `LEVEL_TO_ARG` for magnitudes 0, 3.7, 9, 10 and both signs.
#[test]
fn level_functions_match_timm() {
    let fx = fixture();
    let names = |k: &str| -> Vec<RandOp> {
        fx[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| rand_op(v.as_str().unwrap()))
            .collect()
    };
    let plain = RandAugment::default();
    let inc = RandAugment {
        increasing: true,
        ..plain
    };
    assert_eq!(names("rand_transforms"), plain.ops().to_vec());
    assert_eq!(names("rand_increasing_transforms"), inc.ops().to_vec());
    let side = 32.0;
    for lv in fx["levels"].as_array().unwrap() {
        let op = rand_op(lv["op"].as_str().unwrap());
        let m = lv["magnitude"].as_f64().unwrap();
        let negate = lv["negate"].as_bool().unwrap();
        let want: Vec<f64> = lv["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let got = op_arg(op.pixel_op(m, negate, size(32, 32)), side);
        assert_eq!(got.is_some(), !want.is_empty(), "{op:?} m={m}");
        if let Some(g) = got {
            assert!(
                (g - want[0]).abs() <= 1e-12 * want[0].abs().max(1.0),
                "{op:?} m={m} negate={negate}: {g} vs timm {}",
                want[0]
            );
        }
        // The sign shows where it changes the value (not at magnitude 0).
        if !want.is_empty() && m > 0.0 {
            let flips = op.is_signed() && negate;
            let unsigned = op.pixel_op(m, false, size(32, 32));
            assert_eq!(flips, op_arg(unsigned, side) != got, "{op:?}: sign");
        }
    }
}

/// The CIFAR-10 table and bins are torchvision's (bins within f32 rounding: torchvision
/// computes them in float32).
#[test]
fn cifar10_policy_matches_torchvision() {
    let fx = fixture();
    let name = |op: AaOp| format!("{op:?}");
    let want = fx["cifar10_policy"].as_array().unwrap();
    assert_eq!(want.len(), CIFAR10_POLICY.len());
    for (sub, w) in CIFAR10_POLICY.iter().zip(want) {
        for (&(op, p, bin), w) in sub.iter().zip(w.as_array().unwrap()) {
            assert_eq!(name(op), w[0].as_str().unwrap());
            assert!((p - w[1].as_f64().unwrap()).abs() < 1e-12);
            assert_eq!(bin.map(|b| b as u64), w[2].as_u64());
        }
    }
    let bins = &fx["cifar10_bins"];
    let s = size(32, 32);
    for op in [
        AaOp::ShearX,
        AaOp::ShearY,
        AaOp::TranslateX,
        AaOp::TranslateY,
        AaOp::Rotate,
        AaOp::Brightness,
        AaOp::Color,
        AaOp::Contrast,
        AaOp::Sharpness,
        AaOp::Posterize,
        AaOp::Solarize,
    ] {
        let b = &bins[name(op)];
        assert_eq!(op.is_signed(), b["signed"].as_bool().unwrap(), "{op:?}");
        for (i, v) in b["values"].as_array().unwrap().iter().enumerate() {
            let tv = v.as_f64().unwrap();
            let got = op_arg(op.pixel_op(i as u8, false, s), 1.0).unwrap();
            // Ours: the op's argument; torchvision: the magnitude (enhance: factor - 1,
            // translate: truncated to whole pixels when applied).
            let (got, tv) = match op {
                AaOp::Brightness | AaOp::Color | AaOp::Contrast | AaOp::Sharpness => {
                    (got - 1.0, tv)
                }
                AaOp::TranslateX | AaOp::TranslateY => (got, tv.trunc()),
                _ => (got, tv),
            };
            assert!(
                (got - tv).abs() <= 1e-5 * tv.abs().max(1.0),
                "{op:?} bin {i}: {got} vs {tv}"
            );
        }
    }
}

// ---------------------------------------------------------------- parsing

#[test]
fn policies_parse_and_print() {
    assert_eq!(AutoAugment::parse("none").unwrap(), AutoAugment::None);
    assert_eq!(AutoAugment::parse("cifar10").unwrap(), AutoAugment::Cifar10);
    let AutoAugment::Rand(ra) = AutoAugment::parse("rand-m9-mstd0.5-inc1").unwrap() else {
        panic!("not RandAugment")
    };
    assert_eq!(
        ra,
        RandAugment {
            magnitude: 9,
            num_layers: 2,
            magnitude_std: 0.5,
            magnitude_max: None,
            increasing: true,
            prob: 0.5
        }
    );
    for s in [
        "none",
        "cifar10",
        "rand-m9-mstd0.5-inc1",
        "rand-m7-n3-mstd1-mmax12-p0.8",
        "rand-m10",
    ] {
        assert_eq!(AutoAugment::parse(s).unwrap().to_string(), s);
    }
    // Sections in any order, defaults filled (timm: m10 n2 p0.5).
    let AutoAugment::Rand(ra) = AutoAugment::parse("rand-inc0-n1").unwrap() else {
        panic!()
    };
    assert_eq!(
        (ra.magnitude, ra.num_layers, ra.increasing, ra.prob),
        (10, 1, false, 0.5)
    );
}

#[test]
fn bad_policies_are_refused_with_their_name() {
    let err = |s: &str| AutoAugment::parse(s).unwrap_err().to_string();
    let e = err("autoaug");
    assert!(e.contains("\"autoaug\"") && e.contains("cifar10"), "{e}");
    let e = err("rand-m9-w0");
    assert!(
        e.contains("\"w\"") && e.contains("m, n, mstd, mmax, inc or p"),
        "{e}"
    );
    let e = err("rand-m9-x3");
    assert!(e.contains("\"x\""), "{e}");
    let e = err("rand-mx");
    assert!(e.contains("\"mx\"") && e.contains("no number"), "{e}");
    let e = err("rand-m9.5");
    assert!(e.contains("\"9.5\""), "{e}");
    let e = err("rand-p1.5");
    assert!(e.contains("1.5") && e.contains("[0, 1]"), "{e}");
    let e = err("rand-mstdnan");
    assert!(e.contains("mstdnan"), "{e}");
}

// ---------------------------------------------------------------- draw distributions

/// RandAugment rand-m9-mstd0.5-inc1: ops uniform over the 15, half applied, magnitudes
/// clip(9 + 0.5 z, 0, 10): mean 9 + 0.5 E[min(z, 2)] = 8.99575, std 0.5 * 0.97990, and
/// P(clipped at 10) = P(z > 2) = 0.02275; signs fair.
#[test]
fn rand_augment_draws_follow_the_config() {
    let AutoAugment::Rand(ra) = AutoAugment::parse("rand-m9-mstd0.5-inc1").unwrap() else {
        panic!()
    };
    let mut counts = HashMap::<RandOp, usize>::new();
    let (mut applied, mut negated, mut at_top) = (0usize, 0usize, 0usize);
    let mut mags = Vec::new();
    let images = 100_000;
    for i in 0..images {
        let draws = ra.draw(&mut Rng64::from_key(&[7, i as u64]));
        assert_eq!(draws.len(), 2);
        for d in draws {
            *counts.entry(d.op).or_default() += 1;
            applied += d.applied as usize;
            negated += d.negate as usize;
            assert!((0.0..=10.0).contains(&d.magnitude));
            at_top += (d.magnitude == 10.0) as usize;
            mags.push(d.magnitude);
        }
    }
    let n = (2 * images) as f64;
    assert_eq!(counts.len(), 15);
    for op in ra.ops() {
        let f = counts[op] as f64 / n;
        // 1/15 = 0.0667, std of the fraction 0.00056.
        assert!((f - 1.0 / 15.0).abs() < 0.003, "{op:?}: {f}");
    }
    assert!((applied as f64 / n - 0.5).abs() < 0.005);
    assert!((negated as f64 / n - 0.5).abs() < 0.005);
    assert!(
        (at_top as f64 / n - 0.02275).abs() < 0.002,
        "{}",
        at_top as f64 / n
    );
    let mean = mags.iter().sum::<f64>() / n;
    let std = (mags.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / n).sqrt();
    assert!((mean - 8.99575).abs() < 0.005, "mean {mean}");
    assert!((std - 0.5 * 0.97990).abs() < 0.005, "std {std}");

    // mstd above 100: uniform in [0, M] (mean M / 2); no mstd: M exactly, clipped to mmax.
    let uni = RandAugment::parse("rand-m8-mstd101").unwrap();
    let m: f64 = (0..20_000)
        .flat_map(|i| uni.draw(&mut Rng64::from_key(&[1, i])))
        .map(|d| d.magnitude)
        .sum::<f64>()
        / 40_000.0;
    assert!((m - 4.0).abs() < 0.05, "{m}");
    let fixed = RandAugment::parse("rand-m15-mmax12-n5-p1").unwrap();
    let d = fixed.draw(&mut Rng64::new(3));
    assert!(d.iter().all(|d| d.magnitude == 12.0 && d.applied) && d.len() == 5);
    let over = RandAugment::parse("rand-m15").unwrap();
    assert!(over
        .draw(&mut Rng64::new(3))
        .iter()
        .all(|d| d.magnitude == 10.0));
}

/// AutoAugment CIFAR-10: sub-policies uniform over the 25; each op applied with its
/// probability; signs fair.
#[test]
fn cifar10_draws_follow_the_table() {
    let draws = 250_000;
    let mut picked = [0usize; 25];
    let mut applied = [[0usize; 2]; 25];
    let mut negated = 0usize;
    for i in 0..draws {
        let d = draw_cifar10(&mut Rng64::from_key(&[11, i as u64]));
        picked[d.sub_policy] += 1;
        for (count, &on) in applied[d.sub_policy].iter_mut().zip(&d.applied) {
            *count += on as usize;
        }
        negated += d.negate[0] as usize;
    }
    for (s, &count) in picked.iter().enumerate() {
        // 10000 expected, std 98.
        assert!(
            (count as f64 - 10_000.0).abs() < 500.0,
            "sub-policy {s}: {count}"
        );
        for k in 0..2 {
            let p = CIFAR10_POLICY[s][k].1;
            let f = applied[s][k] as f64 / count as f64;
            // std of the fraction <= 0.005.
            assert!((f - p).abs() < 0.025, "sub-policy {s} op {k}: {f} vs {p}");
        }
    }
    assert!((negated as f64 / draws as f64 - 0.5).abs() < 0.005);
    // Invert at probability 0.0 (sub-policy 14) never applies.
    assert_eq!(applied[14][1], 0);
}

// ---------------------------------------------------------------- random erasing

/// Boxes lie inside the image, their area and aspect within timm's ranges up to the rounding
/// of h and w to whole pixels; the probability of erasing is p (32x32 always fits).
#[test]
fn erasing_boxes_follow_timm() {
    let s = size(32, 32);
    let area = 1024.0;
    let trials = 40_000;
    let mut erased = 0;
    let mut fracs = Vec::new();
    for i in 0..trials {
        let Some(b) = draw_box(&mut Rng64::from_key(&[5, i]), 0.25, s) else {
            continue;
        };
        erased += 1;
        assert!(b.top + b.height <= 32 && b.left + b.width <= 32, "{b:?}");
        assert!(b.height < 32 && b.width < 32);
        let (h, w) = (b.height as f64, b.width as f64);
        assert!((h + 0.5) * (w + 0.5) >= 0.02 * area, "{b:?} too small");
        assert!((h - 0.5) * (w - 0.5) <= area / 3.0, "{b:?} too big");
        assert!(
            (h + 0.5) / (w - 0.5) >= 0.3 && (h - 0.5) / (w + 0.5) <= 1.0 / 0.3,
            "{b:?} aspect"
        );
        fracs.push(h * w / area);
    }
    let p = erased as f64 / trials as f64;
    assert!((p - 0.25).abs() < 0.01, "{p}");
    // Mean area fraction of a U(0.02, 1/3) target, about 0.177 (rounding moves it little).
    let mean = fracs.iter().sum::<f64>() / fracs.len() as f64;
    assert!((mean - (0.02 + 1.0 / 3.0) / 2.0).abs() < 0.01, "{mean}");
    // p = 0 never erases, p = 1 always does.
    assert!((0..100).all(|i| draw_box(&mut Rng64::new(i), 0.0, s).is_none()));
    assert!((0..100).all(|i| draw_box(&mut Rng64::new(i), 1.0, s).is_some()));
}

/// The erased box holds N(0, 1) noise; everything outside is untouched.
#[test]
fn erasing_fills_the_box_with_normal_noise() {
    let s = size(32, 32);
    let (mut sum, mut sq, mut n) = (0f64, 0f64, 0usize);
    for i in 0..300 {
        let mut img = vec![7.0f32; 3 * 1024];
        let b = draw_box(&mut Rng64::from_key(&[9, i]), 1.0, s).unwrap();
        erase(&mut img, 3, s, 1.0, &mut Rng64::from_key(&[9, i]));
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    let v = img[c * 1024 + y * 32 + x] as f64;
                    let inside = (b.top..b.top + b.height).contains(&y)
                        && (b.left..b.left + b.width).contains(&x);
                    if inside {
                        sum += v;
                        sq += v * v;
                        n += 1;
                    } else {
                        assert_eq!(v, 7.0);
                    }
                }
            }
        }
    }
    let mean = sum / n as f64;
    let var = sq / n as f64 - mean * mean;
    assert!(
        n > 50_000 && mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
        "{n} {mean} {var}"
    );
}

// ---------------------------------------------------------------- repeated augmentation

#[test]
fn repeated_order_repeats_each_index() {
    for (n, r) in [(53usize, 3usize), (60, 3), (10, 4), (7, 1)] {
        for epoch in 0..3 {
            let order = repeated_order(n, 42, epoch, true, r);
            assert_eq!(order.len(), n);
            let perm = epoch_order(n, 42, epoch, true);
            // Runs of r copies of the permutation's first ceil(n / r) entries.
            let distinct = n.div_ceil(r);
            let mut count = HashMap::<usize, usize>::new();
            for (pos, &i) in order.iter().enumerate() {
                assert_eq!(i, perm[pos / r]);
                *count.entry(i).or_default() += 1;
            }
            assert_eq!(count.len(), distinct);
            for (k, &i) in perm[..distinct].iter().enumerate() {
                let want = if k + 1 < distinct {
                    r
                } else {
                    n - r * (distinct - 1)
                };
                assert_eq!(count[&i], want, "n {n} r {r} slot {k}");
            }
            assert_eq!(order, repeated_order(n, 42, epoch, true, r));
        }
    }
    assert_eq!(
        repeated_order(9, 1, 0, false, 3),
        [0, 0, 0, 1, 1, 1, 2, 2, 2]
    );
    assert_ne!(
        repeated_order(60, 42, 0, true, 3),
        repeated_order(60, 42, 1, true, 3)
    );
}

// ---------------------------------------------------------------- pipeline and loader

fn dataset(n: usize) -> Dataset {
    let s = 32;
    let images: Vec<u8> = (0..n * 3 * s * s)
        .map(|i| ((i * 2654435761usize) >> 13) as u8)
        .collect();
    let labels = (0..n).map(|i| (i % 10) as u16).collect();
    Dataset::new(
        images,
        labels,
        (0..10).map(|c| c.to_string()).collect(),
        3,
        s,
    )
    .unwrap()
}

fn full_recipe(policy: &str) -> AugmentRecipe {
    AugmentRecipe {
        auto_augment: AutoAugment::parse(policy).unwrap(),
        reprob: 0.25,
        aug_repeats: 3,
    }
}

/// Same (seed, epoch, position) -> same floats; another position or epoch -> others.
#[test]
fn pipeline_is_a_function_of_its_key() {
    let ds = dataset(4);
    for policy in ["rand-m9-mstd0.5-inc1", "cifar10"] {
        let p = Pipeline::new(
            3,
            size(32, 32),
            true,
            full_recipe(policy),
            Normalize::CIFAR10,
            42,
        )
        .unwrap();
        let go = |epoch, pos| {
            let mut out = vec![0f32; 3 * 1024];
            p.run(ds.image(1), &mut out, epoch, pos, &mut Workspace::default());
            out
        };
        let a = go(2, 17);
        // A reused workspace gives the same bytes.
        let mut w = Workspace::default();
        let mut b = vec![0f32; 3 * 1024];
        p.run(ds.image(3), &mut b, 0, 0, &mut w);
        p.run(ds.image(1), &mut b, 2, 17, &mut w);
        assert!(a == b, "{policy}: a reused workspace changed the output");
        assert!(a != go(2, 18), "{policy}: same output at another position");
        assert!(a != go(3, 17), "{policy}: same output in another epoch");
    }
}

/// The recipe off gives `BatchLoader::new`'s batches; on, the loader is deterministic and a
/// resumed loader continues bitwise; repeats show in the labels; erasing changes pixels.
#[test]
fn loader_with_the_recipe_is_deterministic_and_resumes() {
    let ds = Arc::new(dataset(60));
    let cfg = LoaderConfig::train(16, 3);
    let take = |mut l: BatchLoader, k: usize| (0..k).map(|_| l.next_batch()).collect::<Vec<_>>();
    let plain = take(BatchLoader::new(ds.clone(), cfg, 0, 0).unwrap(), 5);
    let off = take(
        BatchLoader::with_recipe(ds.clone(), cfg, AugmentRecipe::OFF, 0, 0).unwrap(),
        5,
    );
    assert_eq!(plain, off);

    let recipe = full_recipe("rand-m9-mstd0.5-inc1");
    let a = take(
        BatchLoader::with_recipe(ds.clone(), cfg, recipe, 0, 0).unwrap(),
        9,
    );
    let b = take(
        BatchLoader::with_recipe(ds.clone(), cfg, recipe, 0, 0).unwrap(),
        9,
    );
    assert_eq!(a, b);
    let resumed = take(
        BatchLoader::with_recipe(ds.clone(), cfg, recipe, 0, 5).unwrap(),
        4,
    );
    assert_eq!(&a[5..], &resumed[..]);
    assert_ne!(a[0].images, plain[0].images);
    // 4 batches per epoch (60 samples); copies of an image sit next to each other.
    let labels: Vec<u32> = a[..4].iter().flat_map(|b| b.labels.clone()).collect();
    assert_eq!(labels.len(), 60);
    assert!(labels.chunks(3).all(|c| c[0] == c[1] && c[1] == c[2]));
    // Each sample is the pipeline's output for its image at its position in the epoch.
    let p = Pipeline::new(3, size(32, 32), true, recipe, cfg.normalize, cfg.seed).unwrap();
    for b in &a[4..6] {
        assert_eq!(b.epoch, 1);
        let order = repeated_order(60, cfg.seed, b.epoch, true, 3);
        for j in 0..b.len() {
            let pos = b.index * 16 + j;
            let mut out = vec![0f32; 3 * 1024];
            p.run(
                ds.image(order[pos]),
                &mut out,
                1,
                pos,
                &mut Workspace::default(),
            );
            assert!(
                out[..] == b.images[j * out.len()..(j + 1) * out.len()],
                "batch {} sample {j}",
                b.index
            );
        }
    }
    // Copies of one image are augmented differently.
    let len = 3 * 1024;
    assert_ne!(a[0].images[..len], a[0].images[len..2 * len]);

    let bad = AugmentRecipe {
        reprob: 1.5,
        ..recipe
    };
    assert!(BatchLoader::with_recipe(ds.clone(), cfg, bad, 0, 0).is_err());
    let bad = AugmentRecipe {
        aug_repeats: 0,
        ..recipe
    };
    assert!(BatchLoader::with_recipe(ds, cfg, bad, 0, 0).is_err());
}
