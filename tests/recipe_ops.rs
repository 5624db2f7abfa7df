//! The training recipe's data-side and schedule ops against their definitions: Mixup and
//! CutMix (timm's `Mixup`, batch mode), the EMA decay (timm's `ModelEmaV3.get_decay`) and
//! update, stochastic depth's rates and keep flags. The kernels' parity and the gradient
//! checks are in tests/kernels_parity.rs and tests/grad_ops.rs.

use vitk::cpu::ema::ema_update;
use vitk::data::mixup::{mix_batch, mixup_targets, Mix, MixupConfig};
use vitk::model::drop_path::{drop_path_keep, drop_path_rates, Branch};
use vitk::model::ImageSize;
use vitk::optim::EmaConfig;

const RECIPE: MixupConfig = MixupConfig {
    mixup_alpha: 0.8,
    cutmix_alpha: 1.0,
    switch_prob: 0.5,
    label_smoothing: 0.1,
};

/// A batch whose pixel values name their sample, channel and position (all distinct).
fn numbered(batch: usize, channels: usize, size: ImageSize) -> Vec<f32> {
    (0..batch * channels * size.pixels())
        .map(|i| i as f32)
        .collect()
}

#[test]
fn targets_are_the_smoothed_one_hots_mixed_by_lambda() {
    let (k, s, lam) = (5usize, 0.1, 0.3);
    let labels = [0u32, 4, 2, 2, 1];
    let t = mixup_targets(&labels, k, lam, s);
    let (on, off) = (1.0 - s + s / k as f64, s / k as f64);
    for (b, row) in t.chunks(k).enumerate() {
        let sum: f64 = row.iter().map(|&v| v as f64).sum();
        assert!((sum - 1.0).abs() < 1e-6, "row {b} sums to {sum}");
        let partner = labels[labels.len() - 1 - b] as usize;
        for (c, &v) in row.iter().enumerate() {
            let one = |y: usize| if c == y { on } else { off };
            let want = lam * one(labels[b] as usize) + (1.0 - lam) * one(partner);
            assert!(
                (v as f64 - want).abs() < 1e-6,
                "t[{b}, {c}] = {v}, want {want}"
            );
        }
    }
    // λ = 1 and no smoothing: the plain one-hot, exactly.
    let t = mixup_targets(&labels, k, 1.0, 0.0);
    for (b, row) in t.chunks(k).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            assert_eq!(v, f32::from(c == labels[b] as usize));
        }
    }
}

#[test]
fn mixup_blends_each_image_with_its_partner() {
    let (b, c, size) = (5, 2, ImageSize::square(3));
    let x = numbered(b, c, size);
    let lam = 0.625;
    let mut mixed = x.clone();
    Mix::Blend { lam }.apply(&mut mixed, b, c, size);
    let per = c * size.pixels();
    for i in 0..b {
        let j = b - 1 - i;
        for e in 0..per {
            let want = x[i * per + e] * lam as f32 + x[j * per + e] * (1.0 - lam) as f32;
            assert_eq!(mixed[i * per + e], want, "sample {i} value {e}");
        }
    }
}

#[test]
fn cutmix_pastes_the_partners_box_and_lambda_is_the_area_left() {
    let size = ImageSize {
        height: 12,
        width: 10,
    };
    let (b, c) = (6, 3);
    let cfg = MixupConfig {
        mixup_alpha: 0.0,
        ..RECIPE
    };
    let mut boxes = 0;
    for index in 0..200 {
        let mix = cfg.draw(3, 1, index, size);
        let Mix::Cut { lam, bbox } = &mix else {
            // CutMix only: the sole way not to cut is λ = 1 exactly.
            assert_eq!(mix, Mix::None);
            continue;
        };
        let area = bbox.rows.len() * bbox.cols.len();
        // The box's area is exactly λ's complement (timm's correct_lam).
        assert_eq!(
            *lam,
            1.0 - area as f64 / size.pixels() as f64,
            "batch {index}"
        );
        assert!(bbox.rows.end <= size.height && bbox.cols.end <= size.width);
        boxes += usize::from(area > 0);
        let x = numbered(b, c, size);
        let labels: Vec<u32> = (0..b as u32).collect();
        let mut mixed = x.clone();
        let (targets, again) = mix_batch(&cfg, 3, 1, index, &mut mixed, &labels, c, size, b);
        assert_eq!(again, mix, "the same key draws the same mix");
        let per = c * size.pixels();
        for i in 0..b {
            let j = b - 1 - i;
            for ch in 0..c {
                for r in 0..size.height {
                    for col in 0..size.width {
                        let e = ch * size.pixels() + r * size.width + col;
                        let inside = bbox.rows.contains(&r) && bbox.cols.contains(&col);
                        let from = if inside { j } else { i };
                        assert_eq!(mixed[i * per + e], x[from * per + e]);
                    }
                }
            }
            let row = &targets[i * b..(i + 1) * b];
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-6);
            // The own label's weight is λ's share (plus smoothing's s/K).
            let off = 0.1 / b as f64;
            let want = lam * (0.9 + off) + (1.0 - lam) * off;
            assert!((row[i] as f64 - want).abs() < 1e-6);
        }
    }
    assert!(
        boxes > 150,
        "only {boxes} of 200 batches cut a non-empty box"
    );
}

#[test]
fn draws_follow_the_switch_probability_and_the_beta_means() {
    let size = ImageSize::square(32);
    let (mut cuts, mut blends, mut blend_lam) = (0, 0, 0.0);
    for index in 0..4000 {
        match RECIPE.draw(11, 0, index, size) {
            Mix::Cut { .. } => cuts += 1,
            Mix::Blend { lam } => {
                assert!((0.0..1.0).contains(&lam));
                blends += 1;
                blend_lam += lam;
            }
            Mix::None => {}
        }
    }
    // switch_prob 0.5 over 4000 draws: sd 32; ±5 sd.
    assert!((1840..=2160).contains(&cuts), "{cuts} cuts");
    // Beta(0.8, 0.8) has mean 1/2 and sd 0.319: the mean of ~2000 is within 0.036 at ±5 sd.
    let mean = blend_lam / blends as f64;
    assert!((mean - 0.5).abs() < 0.036, "mean λ {mean}");
    // The stream is keyed by (seed, epoch, batch): another key, another mix.
    assert_eq!(RECIPE.draw(1, 2, 3, size), RECIPE.draw(1, 2, 3, size));
    let others = (0..8)
        .filter(|&i| RECIPE.draw(1, 2, 3, size) != RECIPE.draw(1, 2 + i, 4, size))
        .count();
    assert_eq!(others, 8);
}

#[test]
fn mixup_off_and_invalid_configs() {
    let size = ImageSize::square(4);
    let off = MixupConfig {
        mixup_alpha: 0.0,
        cutmix_alpha: 0.0,
        ..RECIPE
    };
    assert!(!off.is_active());
    assert_eq!(off.draw(1, 0, 0, size), Mix::None);
    let mut x = numbered(4, 1, size);
    let before = x.clone();
    let (t, _) = mix_batch(&off, 1, 0, 0, &mut x, &[0, 1, 2, 3], 1, size, 4);
    assert_eq!(x, before);
    // Smoothed one-hots only: the plain label-smoothing targets.
    assert_eq!(t[0], (0.9 + 0.1 / 4.0) as f32);
    assert_eq!(t[1], (0.1 / 4.0) as f32);
    for bad in [
        MixupConfig {
            mixup_alpha: -1.0,
            ..RECIPE
        },
        MixupConfig {
            cutmix_alpha: f64::NAN,
            ..RECIPE
        },
        MixupConfig {
            switch_prob: 1.5,
            ..RECIPE
        },
        MixupConfig {
            label_smoothing: -0.1,
            ..RECIPE
        },
    ] {
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("mixup"), "{e}");
        assert_eq!(bad.draw(1, 0, 0, size), Mix::None);
    }
    assert!(RECIPE.validate().is_ok());
}

#[test]
fn ema_decay_is_timms_model_ema_v3() {
    let cfg = EmaConfig::with_warmup(0.9998);
    // get_decay(step): s = step - 1; 0 at s = 0; 1 - (1 + s)^(-2/3) clamped to 0.9998.
    for (step, want) in [
        (0u64, 0.0),
        (1, 0.0),
        (2, 1.0 - 2f64.powf(-2.0 / 3.0)),   // 0.370039...
        (10, 1.0 - 10f64.powf(-2.0 / 3.0)), // 0.784557...
        (1001, 1.0 - 1001f64.powf(-2.0 / 3.0)),
        (1_000_001, 0.9998), // 1 - 1e-4 = 0.9999, clamped
    ] {
        let d = cfg.decay_at(step);
        assert!((d - want).abs() < 1e-15, "step {step}: {d} vs {want}");
    }
    assert!((cfg.decay_at(2) - 0.370_039_475_052_563_4).abs() < 1e-15);
    // Without warm-up: the decay from the second update on; update_after_step delays it.
    let plain = EmaConfig {
        use_warmup: false,
        ..cfg
    };
    assert_eq!(plain.decay_at(1), 0.0);
    assert_eq!(plain.decay_at(2), 0.9998);
    let late = EmaConfig {
        update_after_step: 5,
        ..plain
    };
    assert_eq!(late.decay_at(6), 0.0);
    assert_eq!(late.decay_at(7), 0.9998);
    let floor = EmaConfig {
        min_decay: 0.5,
        ..cfg
    };
    assert_eq!(floor.decay_at(2), 0.5);
    assert_eq!(cfg.weight_at(2), (1.0 - cfg.decay_at(2)) as f32);
    assert!(cfg.validate().is_ok());
    for bad in [
        EmaConfig { decay: 1.5, ..cfg },
        EmaConfig {
            warmup_gamma: 0.0,
            ..cfg
        },
        EmaConfig {
            warmup_power: f64::NAN,
            ..cfg
        },
    ] {
        assert!(bad.validate().is_err());
    }
}

#[test]
fn ema_update_follows_the_formula_over_steps() {
    let cfg = EmaConfig::with_warmup(0.99);
    let n = 37;
    let init: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
    let mut ema32: Vec<f32> = init.iter().map(|&v| v as f32).collect();
    let mut ema64 = init.clone();
    let mut params = init.clone();
    for step in 1..=300u64 {
        // Parameters that move each step, as training does.
        for (i, p) in params.iter_mut().enumerate() {
            *p += 0.01 * ((step as f64 + i as f64) * 0.7).cos();
        }
        let d = cfg.decay_at(step);
        let p32: Vec<f32> = params.iter().map(|&v| v as f32).collect();
        ema_update(&mut ema32, &p32, cfg.weight_at(step));
        // The definition: ema ← d·ema + (1 − d)·param.
        for (e, &p) in ema64.iter_mut().zip(&params) {
            *e = d * *e + (1.0 - d) * p;
        }
        if step == 1 {
            // The first update copies the weights exactly (d = 0, lerp weight 1).
            assert_eq!(ema32, p32);
        }
        if [1, 2, 3, 10, 100, 300].contains(&step) {
            let err = ema32
                .iter()
                .zip(&ema64)
                .map(|(&a, &b)| (a as f64 - b).abs())
                .fold(0.0, f64::max);
            // f32 rounding of weight, parameters and each lerp: a few 2^-24 per step, not
            // growing (the average contracts): 1e-6 absolute on values of size ~1.
            assert!(err < 1e-6, "step {step}: max error {err:e}");
        }
    }
}

#[test]
fn drop_path_rates_and_flags() {
    // torch.linspace(0, 0.1, 12): float32 values, widened.
    let r = drop_path_rates(12, 0.1);
    assert_eq!(r.len(), 12);
    assert_eq!(r[0], 0.0);
    assert_eq!(r[1], (0.1f32 / 11.0) as f64);
    assert_eq!(r[11], 0.1f32 as f64);
    assert!(r.windows(2).all(|w| w[1] > w[0]));
    for (i, &v) in r.iter().enumerate() {
        assert!((v - 0.1 * i as f64 / 11.0).abs() < 1e-8, "block {i}: {v}");
    }
    assert_eq!(drop_path_rates(1, 0.1), vec![0.0]);
    assert_eq!(drop_path_rates(2, 0.2), vec![0.0, 0.2f32 as f64]);
    assert!(drop_path_rates(0, 0.1).is_empty());

    let a = drop_path_keep(7, 3, 2, Branch::Mlp, 4000, 0.25);
    assert_eq!(a, drop_path_keep(7, 3, 2, Branch::Mlp, 4000, 0.25));
    assert_ne!(a, drop_path_keep(7, 3, 2, Branch::Attention, 4000, 0.25));
    assert_ne!(a, drop_path_keep(7, 4, 2, Branch::Mlp, 4000, 0.25));
    assert_ne!(a, drop_path_keep(7, 3, 1, Branch::Mlp, 4000, 0.25));
    assert_ne!(a, drop_path_keep(8, 3, 2, Branch::Mlp, 4000, 0.25));
    let dropped = a.iter().filter(|&&k| !k).count();
    // Binomial(4000, 0.25): mean 1000, sd 27; ±5 sd.
    assert!((865..=1135).contains(&dropped), "{dropped} dropped");
    assert!(drop_path_keep(7, 3, 0, Branch::Mlp, 9, 0.0)
        .iter()
        .all(|&k| k));
}
