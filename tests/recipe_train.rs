//! Mixup/CutMix soft targets and the weights' EMA in the training step (issue 13 items 2, 4):
//! the device engine's queued steps with soft targets against the CPU engine (f64) — loss,
//! every gradient, every parameter after AdamW, and the EMA against its formula — in fp32
//! and bf16; the CPU and device trainers through `TrainEngine` with EMA on; the swap of the
//! EMA in and out; and the loop's targets. Device: the emulator, or VITK_TEST_DEVICE=cuda.

mod gpu_common;

use gpu_common::{bf16_tol, check, device, rng, uniform, widen};
use vitk::cpu::{clip_grad_norm, AdamW, CpuEngine, CpuTrainer};
use vitk::data::mixup::mixup_targets;
use vitk::engine::{Precision, TrainEngine};
use vitk::gpu::GpuTrainer;
use vitk::model::{init_params, ImageSize, ModelConfig, ParamLayout, Pool};
use vitk::optim::{AdamWConfig, EmaConfig, FineTuning, ParamGroups};

const PLAIN: FineTuning = FineTuning {
    layer_decay: None,
    freeze_backbone: false,
};

fn tiny() -> ModelConfig {
    ModelConfig {
        image_size: ImageSize::square(12),
        patch_size: 4,
        in_chans: 3,
        num_classes: 7,
        embed_dim: 18,
        depth: 2,
        num_heads: 3,
        mlp_dim: 22,
        pool: Pool::Cls,
    }
}

/// Initial parameters, perturbed so that zero-initialised tensors are not trivial.
fn params_of(cfg: &ModelConfig, rng: &mut rand::rngs::StdRng) -> Vec<f32> {
    let layout = ParamLayout::new(cfg);
    init_params(cfg, &layout, 7)
        .iter()
        .zip(uniform(rng, layout.len, 0.05))
        .map(|(p, n)| p + n)
        .collect()
}

/// One step's inputs: images [B, C, S, S], labels [B], soft targets [B, K] (mixup's with
/// weight `lam` and smoothing 0.1: each sample's own class and its mirror's).
fn batch_of(
    cfg: &ModelConfig,
    rng: &mut rand::rngs::StdRng,
    batch: usize,
    step: usize,
) -> (Vec<f32>, Vec<u32>, Vec<f32>) {
    let k = cfg.num_classes as u32;
    let images = uniform(rng, batch * cfg.image_len(), 1.5);
    let labels: Vec<u32> = (0..batch as u32)
        .map(|i| (i * 3 + 1 + step as u32) % k)
        .collect();
    let lam = [0.7, 0.35, 0.9][step % 3];
    let targets = mixup_targets(&labels, cfg.num_classes, lam, 0.1);
    (images, labels, targets)
}

/// Norm-wise tolerances: fp32 as tests/gpu_engine.rs; bf16 by the roundings on the path (its
/// count, as there: 3 + 9/block + 2 forward, + 2 + 6/block backward). The EMA is compared
/// with the formula applied to the device's own parameters: fp32 rounding only.
fn tol(name: &str, p: Precision, depth: usize) -> f64 {
    let forward = 3 + 9 * depth + 2;
    match (name, p) {
        ("loss", Precision::Fp32) => 1e-5,
        ("grad", Precision::Fp32) => 1e-4,
        ("loss", Precision::Bf16) => bf16_tol(forward),
        ("grad", Precision::Bf16) => bf16_tol(forward + 2 + 6 * depth),
        ("param", _) => 1e-5,
        ("ema", _) => 1e-6,
        _ => panic!("no tolerance for {name}"),
    }
}

/// Three queued steps (graph replays after the first) with soft targets and EMA on, against
/// the CPU engine in f64: the soft-target loss, every parameter gradient, every parameter
/// after AdamW fed the device's gradients (as tests/gpu_engine.rs), and the EMA against
/// ema ← lerp(ema, params, weight_at(step)) applied in f64 to the device's parameters.
fn soft_steps_match_cpu(precision: Precision) {
    let cfg = tiny();
    let batch = 4;
    let mut rng = rng(&format!("soft-target steps {precision}"));
    let layout = ParamLayout::new(&cfg);
    let params = params_of(&cfg, &mut rng);
    let adamw = AdamWConfig::default();
    let ema_cfg = EmaConfig::with_warmup(0.99);
    let mut cpu = CpuEngine::<f64>::new(&cfg, batch).unwrap();
    let mut p64 = widen(&params);
    let mut opt = AdamW::<f64>::new(adamw, layout.len);
    let groups = ParamGroups::new(&layout, PLAIN);
    let mut gpu = GpuTrainer::new(device(), &cfg, batch, &params, adamw, precision, PLAIN).unwrap();
    gpu.try_start_ema(ema_cfg, &params).unwrap();
    let mut ema = widen(&params);
    let tol = |name: &str| tol(name, precision, cfg.depth);
    for (step, (lr, clip)) in [(3e-3, Some(0.5)), (2e-3, None), (1e-3, Some(0.5))]
        .into_iter()
        .enumerate()
    {
        let case = format!("{precision} step={}", step + 1);
        let (images, labels, targets) = batch_of(&cfg, &mut rng, batch, step);
        cpu.forward(&p64, &widen(&images));
        let stats = cpu.soft_loss(&widen(&targets));
        let mut grads = vec![0.0; layout.len];
        cpu.backward(&p64, &mut grads);

        // Smoothing 0.9 must play no part: the soft targets replace the labels.
        gpu.submit_step_with(&images, &labels, Some(&targets), lr, 0.9, clip)
            .unwrap();
        let out = gpu.finish_steps().unwrap().expect("the step's output");
        check(
            &case,
            "loss",
            tol("loss"),
            &[out.loss as f32],
            &[stats.loss],
        );
        let g_grads = gpu.try_grads().unwrap();
        for e in &layout.entries {
            let r = e.range.clone();
            let name = format!("grad.{}", e.name);
            check(&case, &name, tol("grad"), &g_grads[r.clone()], &grads[r]);
        }
        let mut g_dev = widen(&g_grads);
        if let Some(c) = clip {
            clip_grad_norm(&mut g_dev, c);
        }
        opt.update(&groups, &mut p64, &g_dev, lr);
        let g_params = gpu.try_params().unwrap();
        check(&case, "param", tol("param"), &g_params, &p64);
        let w = ema_cfg.weight_at(step as u64 + 1) as f64;
        for (e, &p) in ema.iter_mut().zip(&g_params) {
            *e += w * (p as f64 - *e);
        }
        let g_ema = gpu.try_ema_params().unwrap().expect("EMA on");
        check(&case, "ema", tol("ema"), &g_ema, &ema);
    }
}

#[test]
fn soft_target_steps_with_ema_match_cpu_fp32() {
    soft_steps_match_cpu(Precision::Fp32);
}

#[test]
fn soft_target_steps_with_ema_match_cpu_bf16() {
    soft_steps_match_cpu(Precision::Bf16);
}

/// The CPU trainer (f32) and the device trainer (fp32) through `TrainEngine`, EMA on, three
/// steps with soft targets (the trainers' own loss and EMA paths): the averages agree to
/// fp32 rounding; swapping the average in and out is bitwise on both.
#[test]
fn cpu_and_device_trainers_keep_the_same_ema() {
    let cfg = tiny();
    let batch = 4;
    let mut rng = rng("trainers' EMA");
    let params = params_of(&cfg, &mut rng);
    let adamw = AdamWConfig::default();
    let ema_cfg = EmaConfig::with_warmup(0.99);
    let mut cpu = CpuTrainer::new(&cfg, batch, params.clone(), adamw, PLAIN).unwrap();
    let gpu = GpuTrainer::new(
        device(),
        &cfg,
        batch,
        &params,
        adamw,
        Precision::Fp32,
        PLAIN,
    );
    let mut gpu = gpu.unwrap();
    let engines: [&mut dyn TrainEngine; 2] = [&mut cpu, &mut gpu];
    let mut emas = Vec::new();
    let inputs: Vec<_> = (0..3).map(|s| batch_of(&cfg, &mut rng, batch, s)).collect();
    for e in engines {
        assert!(e.swap_ema().is_err(), "a swap with the EMA off");
        e.start_ema(ema_cfg, &params).unwrap();
        for (images, labels, targets) in &inputs {
            e.train_step(images, labels, Some(targets), 2e-3, 0.1, Some(1.0))
                .unwrap();
        }
        e.finish_steps().unwrap();
        let (p, avg) = (e.params().unwrap(), e.ema_params().unwrap().unwrap());
        assert_ne!(p, avg, "the average follows the weights with a lag");
        e.swap_ema().unwrap();
        assert_eq!(
            e.params().unwrap(),
            avg,
            "swapped in: the weights are the EMA"
        );
        assert_eq!(e.ema_params().unwrap().unwrap(), p);
        e.swap_ema().unwrap();
        assert_eq!(e.params().unwrap(), p, "swapped back: bitwise");
        assert_eq!(e.ema_params().unwrap().unwrap(), avg);
        emas.push((p, avg));
    }
    let (cpu_p, cpu_ema) = &emas[0];
    let (gpu_p, gpu_ema) = &emas[1];
    check("trainers", "param", 1e-4, gpu_p, &widen(cpu_p));
    check("trainers", "ema", 1e-4, gpu_ema, &widen(cpu_ema));
}

/// Soft targets reach the loss: a step with mixup's targets reports the soft-target loss of
/// the logits before it (not the label loss), on both engines; wrong-sized targets are
/// refused.
#[test]
fn soft_targets_replace_the_labels_in_the_loss() {
    use vitk::cpu::loss::cross_entropy;
    use vitk::cpu::soft_loss::soft_target_cross_entropy;
    let cfg = tiny();
    let (batch, k) = (4, cfg.num_classes);
    let mut rng = rng("soft targets reach the loss");
    let mut params = params_of(&cfg, &mut rng);
    // A head bias spread over the classes: logits far from uniform, so that the soft-target
    // and the label losses differ whatever the draw.
    let head_b = vitk::model::ParamLayout::new(&cfg).head_b;
    for (c, b) in params[head_b].iter_mut().enumerate() {
        *b = c as f32 * 0.7;
    }
    let (images, labels, targets) = batch_of(&cfg, &mut rng, batch, 0);
    let adamw = AdamWConfig::default();
    let engines: [Box<dyn TrainEngine>; 2] = [
        Box::new(CpuTrainer::new(&cfg, batch, params.clone(), adamw, PLAIN).unwrap()),
        Box::new(
            GpuTrainer::new(
                device(),
                &cfg,
                batch,
                &params,
                adamw,
                Precision::Fp32,
                PLAIN,
            )
            .unwrap(),
        ),
    ];
    for mut e in engines {
        let logits = e.logits(&images).unwrap();
        let soft = soft_target_cross_entropy(&logits, &targets, k, None).loss;
        let hard = cross_entropy(&logits, &labels, k, 0.1, None).loss;
        assert!((soft - hard).abs() > 1e-4, "{soft} vs {hard}: not telling");
        assert!(e
            .train_step(&images, &labels, Some(&targets[1..]), 1e-3, 0.1, None)
            .is_err());
        e.train_step(&images, &labels, Some(&targets), 1e-3, 0.1, None)
            .unwrap();
        let got = e.finish_steps().unwrap().unwrap().loss;
        assert!(
            (got - soft).abs() < 1e-5,
            "{}: step loss {got}, soft-target loss {soft}, label loss {hard}",
            e.describe()
        );
    }
}

/// The loop's targets: rows sum to 1 with smoothing folded in, the images are mixed (CutMix
/// or Mixup), nothing is mixed from --mixup-off-epoch on (targets the smoothed one-hot), and
/// a run without mixing has none.
#[test]
fn the_loops_targets_sum_to_one_and_stop_at_the_off_epoch() {
    use vitk::train::trainer::mix_targets;
    use vitk::train::{LoopPosition, TrainConfig};
    let text = r#"{"model":{"image_size":8,"patch_size":4,"in_chans":3,"num_classes":5,
        "embed_dim":8,"depth":1,"num_heads":2,"mlp_dim":8,"pool":"cls"},
        "data":{"synthetic":{"train":8,"val":0,"seed":0}},"epochs":3,"batch_size":4,
        "lr":0.001,"min_lr":0.0,"warmup_epochs":0.0,"schedule":"cosine",
        "adamw":{"beta1":0.9,"beta2":0.999,"eps":1e-8,"weight_decay":0.05},
        "label_smoothing":0.1,"clip_grad":null,"augment":false,"shuffle":false,"seed":3,
        "mean":[0.5,0.5,0.5],"std":[0.25,0.25,0.25]}"#;
    let plain: TrainConfig = serde_json::from_str(text).expect("an older config loads");
    assert_eq!(
        (plain.mixup, plain.cutmix, plain.ema_decay),
        (0.0, 0.0, None)
    );
    assert_eq!(plain.mixup_switch_prob, 0.5);
    let cfg = TrainConfig {
        mixup: 0.8,
        cutmix: 1.0,
        mixup_off_epoch: Some(2),
        ..plain.clone()
    };
    cfg.validate().unwrap();
    let (b, k) = (4, 5);
    let labels = [0u32, 1, 2, 3];
    let images: Vec<f32> = (0..b * 3 * 64).map(|i| (i % 97) as f32 / 97.0).collect();
    let at = |epoch| LoopPosition {
        step: 0,
        epoch,
        batch: 1,
    };
    let mut mixed = images.clone();
    assert!(mix_targets(&plain, at(0), &mut mixed, &labels).is_none());
    assert_eq!(mixed, images, "no mixing: the images are untouched");
    let mut mixed_any = false;
    for epoch in 0..2 {
        let mut mixed = images.clone();
        let t = mix_targets(&cfg, at(epoch), &mut mixed, &labels).expect("targets");
        assert_eq!(t.len(), b * k);
        for row in t.chunks(k) {
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "row sums to {sum}");
            assert!(row.iter().all(|&v| v >= 0.02 - 1e-6), "smoothing folded in");
        }
        mixed_any |= mixed != images;
    }
    assert!(mixed_any, "epochs 0 and 1 mix");
    let mut after = images.clone();
    let t = mix_targets(&cfg, at(2), &mut after, &labels).expect("still soft");
    assert_eq!(after, images, "epoch 2: nothing mixed");
    assert_eq!(t, mixup_targets(&labels, k, 1.0, 0.1));
    let odd = TrainConfig {
        batch_size: 5,
        ..cfg.clone()
    };
    let err = odd.validate().unwrap_err();
    assert!(err.contains("--batch-size 5"), "{err}");
}
