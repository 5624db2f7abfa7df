//! AdamW, the LR schedule and whole training steps of the f32 engine.

mod common;

use common::{assert_close, rand_vec};
use vitk::cpu::{clip_grad_norm, global_norm, AdamW};
use vitk::cpu::{CpuEngine, CpuTrainer};
use vitk::engine::TrainEngine;
use vitk::model::{init_params, ImageSize, ModelConfig, ParamLayout, Pool};
use vitk::optim::{AdamWConfig, FineTuning, ParamGroups};
use vitk::train::{LrSchedule, ScheduleKind};

fn tiny(pool: Pool) -> ModelConfig {
    ModelConfig {
        image_size: ImageSize::square(8),
        patch_size: 4,
        in_chans: 3,
        num_classes: 5,
        embed_dim: 16,
        depth: 2,
        num_heads: 2,
        mlp_dim: 24,
        pool,
    }
}

/// A few hundred AdamW steps on one fixed batch drive the loss toward zero.
#[test]
fn adamw_overfits_a_fixed_batch() {
    for pool in [Pool::Cls, Pool::Mean] {
        let cfg = tiny(pool);
        let layout = ParamLayout::new(&cfg);
        let mut params = init_params(&cfg, &layout, 0);
        let images: Vec<f32> = rand_vec(8 * 3 * 64, 1, 1.0)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let labels = [0u32, 1, 2, 3, 4, 0, 1, 2];
        let mut engine = CpuEngine::<f32>::new(&cfg, 8).expect("valid config");
        let mut opt = AdamW::new(
            AdamWConfig {
                weight_decay: 0.0,
                ..Default::default()
            },
            layout.len,
        );
        let mut grads = vec![0.0f32; layout.len];
        let mut first = None;
        let mut last = 0.0;
        for _ in 0..300 {
            engine.forward(&params, &images);
            let stats = engine.loss(&labels, 0.0);
            first.get_or_insert(stats.loss);
            last = stats.loss;
            grads.fill(0.0);
            engine.backward(&params, &mut grads);
            opt.update(&ParamGroups::all(&layout), &mut params, &grads, 3e-3);
        }
        let first = first.expect("ran");
        assert!(
            first > 1.0,
            "{pool}: initial loss {first} should be near ln 5"
        );
        assert!(
            last < 0.01,
            "{pool}: loss {first} -> {last} after 300 steps, expected < 0.01"
        );
    }
}

/// The f32 engine agrees with the f64 engine (same parameters and inputs).
#[test]
fn f32_engine_matches_f64_engine() {
    let cfg = tiny(Pool::Cls);
    let layout = ParamLayout::new(&cfg);
    let p32 = init_params(&cfg, &layout, 3);
    let p64: Vec<f64> = p32.iter().map(|&v| v as f64).collect();
    let img64 = rand_vec(4 * 3 * 64, 2, 1.0);
    let img32: Vec<f32> = img64.iter().map(|&v| v as f32).collect();
    let labels = [0u32, 1, 2, 3];
    let mut e32 = CpuEngine::<f32>::new(&cfg, 4).expect("valid config");
    let mut e64 = CpuEngine::<f64>::new(&cfg, 4).expect("valid config");
    e32.forward(&p32, &img32);
    e64.forward(&p64, &img64);
    let l32 = e32.loss(&labels, 0.1).loss;
    let l64 = e64.loss(&labels, 0.1).loss;
    assert!(
        (l32 - l64).abs() / l64 < 1e-6,
        "loss f32 {l32} vs f64 {l64}"
    );
    let (mut g32, mut g64) = (vec![0.0f32; layout.len], vec![0.0f64; layout.len]);
    e32.backward(&p32, &mut g32);
    e64.backward(&p64, &mut g64);
    for e in &layout.entries {
        let a: Vec<f64> = g32[e.range.clone()].iter().map(|&v| v as f64).collect();
        assert_close(&e.name, &a, &g64[e.range.clone()], 1e-4);
    }
}

/// One AdamW step against the formula written out by hand, with and without decay.
#[test]
fn adamw_matches_pytorch_formula() {
    let cfg = tiny(Pool::Cls);
    let layout = ParamLayout::new(&cfg);
    let p0 = rand_vec(layout.len, 5, 1.0);
    let g1 = rand_vec(layout.len, 6, 1.0);
    let g2 = rand_vec(layout.len, 7, 1.0);
    let c = AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let lr = 0.01;
    let mut opt = AdamW::<f64>::new(c, layout.len);
    let mut p = p0.clone();
    let groups = ParamGroups::all(&layout);
    opt.update(&groups, &mut p, &g1, lr);
    opt.update(&groups, &mut p, &g2, lr);
    for e in &layout.entries {
        let wd = if e.decay { c.weight_decay } else { 0.0 };
        let want: Vec<f64> = e
            .range
            .clone()
            .map(|i| {
                let (mut x, mut m, mut v) = (p0[i], 0.0, 0.0);
                for (t, g) in [(1, g1[i]), (2, g2[i])] {
                    x *= 1.0 - lr * wd;
                    m = c.beta1 * m + (1.0 - c.beta1) * g;
                    v = c.beta2 * v + (1.0 - c.beta2) * g * g;
                    let mhat = m / (1.0 - c.beta1.powi(t));
                    let vhat = v / (1.0 - c.beta2.powi(t));
                    x -= lr * mhat / (vhat.sqrt() + c.eps);
                }
                x
            })
            .collect();
        assert_close(&e.name, &p[e.range.clone()], &want, 1e-12);
    }
}

/// timm's layer id of a tiny model's tensor (L = 2), written out per name.
fn tiny_layer_id(name: &str) -> i32 {
    match name {
        "cls_token" | "pos_embed" | "patch_embed.proj.weight" | "patch_embed.proj.bias" => 0,
        n if n.starts_with("blocks.0.") => 1,
        n if n.starts_with("blocks.1.") => 2,
        n if ["norm.", "fc_norm.", "head."]
            .iter()
            .any(|p| n.starts_with(p)) =>
        {
            3
        }
        n => panic!("unexpected tensor {n}"),
    }
}

/// Two AdamW steps with layer-wise LR decay (and with a frozen backbone) against PyTorch's
/// AdamW with one param group per tensor, lr_g = lr·R^(L+1−id), written out by hand: the
/// scale multiplies the step and the decoupled weight decay; frozen tensors do not move.
#[test]
fn adamw_with_layer_decay_matches_pytorch_formula() {
    let cfg = tiny(Pool::Cls);
    let layout = ParamLayout::new(&cfg);
    let p0 = rand_vec(layout.len, 15, 1.0);
    let g1 = rand_vec(layout.len, 16, 1.0);
    let g2 = rand_vec(layout.len, 17, 1.0);
    let c = AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let (lr, r) = (0.01, 0.6f64);
    for freeze in [false, true] {
        let tuning = FineTuning {
            layer_decay: Some(r),
            freeze_backbone: freeze,
        };
        let groups = ParamGroups::new(&layout, tuning);
        let mut opt = AdamW::<f64>::new(c, layout.len);
        let mut p = p0.clone();
        opt.update(&groups, &mut p, &g1, lr);
        opt.update(&groups, &mut p, &g2, lr);
        for e in &layout.entries {
            let id = tiny_layer_id(&e.name);
            let trains = !freeze || id == 3;
            let lr_g = lr * r.powi(3 - id);
            let wd = if e.decay { c.weight_decay } else { 0.0 };
            let want: Vec<f64> = e
                .range
                .clone()
                .map(|i| {
                    let (mut x, mut m, mut v) = (p0[i], 0.0, 0.0);
                    for (t, g) in [(1, g1[i]), (2, g2[i])] {
                        x *= 1.0 - lr_g * wd;
                        m = c.beta1 * m + (1.0 - c.beta1) * g;
                        v = c.beta2 * v + (1.0 - c.beta2) * g * g;
                        let mhat = m / (1.0 - c.beta1.powi(t));
                        let vhat = v / (1.0 - c.beta2.powi(t));
                        x -= lr_g * mhat / (vhat.sqrt() + c.eps);
                    }
                    x
                })
                .collect();
            let name = format!("{} (freeze {freeze})", e.name);
            if trains {
                assert_close(&name, &p[e.range.clone()], &want, 1e-12);
            } else {
                assert!(p[e.range.clone()] == p0[e.range.clone()], "{name} moved");
                assert!(
                    opt.m[e.range.clone()].iter().all(|&x| x == 0.0)
                        && opt.v[e.range.clone()].iter().all(|&x| x == 0.0),
                    "{name}: moments"
                );
            }
        }
    }
}

/// R = 1 is the plain optimizer bit for bit (every scale is exactly 1).
#[test]
fn layer_decay_one_is_the_plain_update() {
    let cfg = tiny(Pool::Mean);
    let layout = ParamLayout::new(&cfg);
    let p0: Vec<f32> = rand_vec(layout.len, 25, 1.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let g: Vec<f32> = rand_vec(layout.len, 26, 1.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let run = |tuning: FineTuning| {
        let mut opt = AdamW::<f32>::new(AdamWConfig::default(), layout.len);
        let mut p = p0.clone();
        for _ in 0..2 {
            opt.update(&ParamGroups::new(&layout, tuning), &mut p, &g, 3e-3);
        }
        p.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    };
    let one = FineTuning {
        layer_decay: Some(1.0),
        freeze_backbone: false,
    };
    assert!(run(one) == run(FineTuning::default()));
}

/// A linear probe on the CPU trainer: on a fixed batch the loss falls, the head and its norm
/// move, and every other tensor stays bit for bit as it started with zero moments (clipping
/// on, so that a clip over frozen gradients would show too).
#[test]
fn frozen_backbone_trains_only_the_head_on_the_cpu() {
    for pool in [Pool::Cls, Pool::Mean] {
        let cfg = tiny(pool);
        let layout = ParamLayout::new(&cfg);
        let params = init_params(&cfg, &layout, 4);
        let tuning = FineTuning {
            layer_decay: None,
            freeze_backbone: true,
        };
        let mut t = CpuTrainer::new(&cfg, 8, params.clone(), AdamWConfig::default(), tuning)
            .expect("valid config");
        let images: Vec<f32> = rand_vec(8 * 3 * 64, 9, 1.0)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let labels = [0u32, 1, 2, 3, 4, 0, 1, 2];
        let mut losses = Vec::new();
        for _ in 0..30 {
            losses.extend(
                t.train_step(&images, &labels, None, 1e-2, 0.0, Some(1.0))
                    .unwrap(),
            );
        }
        losses.extend(t.finish_steps().unwrap());
        let (first, last) = (losses[0].loss, losses[losses.len() - 1].loss);
        assert!(last < 0.8 * first, "{pool}: loss {first} -> {last}");
        let after = t.params().unwrap();
        let opt = t.optimizer_state().unwrap();
        let groups = ParamGroups::new(&layout, tuning);
        for tp in &groups.tensors {
            let r = tp.range.clone();
            let same = after[r.clone()]
                .iter()
                .zip(&params[r.clone()])
                .all(|(a, b)| a.to_bits() == b.to_bits());
            if tp.frozen {
                assert!(same, "{pool}: frozen {} changed", tp.name);
                assert!(
                    opt.m[r.clone()].iter().all(|&x| x == 0.0)
                        && opt.v[r].iter().all(|&x| x == 0.0),
                    "{pool}: frozen {} has moments",
                    tp.name
                );
            } else {
                assert!(!same, "{pool}: {} did not train", tp.name);
            }
        }
        assert!(groups.tensors.iter().filter(|t| !t.frozen).count() == 4);
    }
}

/// The head-only backward writes the gradients of the head and its norm and nothing else:
/// the backward of the blocks and the embedding does not run at all.
#[test]
fn head_backward_stops_after_the_head_norm() {
    let cfg = tiny(Pool::Cls);
    let layout = ParamLayout::new(&cfg);
    let params: Vec<f64> = init_params(&cfg, &layout, 2)
        .iter()
        .map(|&v| v as f64)
        .collect();
    let mut e = CpuEngine::<f64>::new(&cfg, 4).expect("valid config");
    e.forward(&params, &rand_vec(4 * 3 * 64, 3, 1.0));
    e.loss(&[0, 1, 2, 3], 0.1);
    let mut full = vec![0.0; layout.len];
    e.backward(&params, &mut full);
    let mut head = vec![f64::NAN; layout.len];
    let start = layout.head_norm_w.start;
    head[start..].fill(0.0);
    e.backward_head(&params, &mut head);
    assert!(
        head[..start].iter().all(|v| v.is_nan()),
        "a backbone gradient was written"
    );
    assert!(
        head[start..] == full[start..],
        "head gradients differ from the full backward"
    );
}

#[test]
fn weight_decay_mask_follows_timm() {
    let layout = ParamLayout::new(&tiny(Pool::Cls));
    let decayed: Vec<&str> = layout
        .entries
        .iter()
        .filter(|e| e.decay)
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(
        decayed,
        [
            "patch_embed.proj.weight",
            "blocks.0.attn.qkv.weight",
            "blocks.0.attn.proj.weight",
            "blocks.0.mlp.fc1.weight",
            "blocks.0.mlp.fc2.weight",
            "blocks.1.attn.qkv.weight",
            "blocks.1.attn.proj.weight",
            "blocks.1.mlp.fc1.weight",
            "blocks.1.mlp.fc2.weight",
            "head.weight"
        ]
    );
}

#[test]
fn gradient_clipping_scales_to_max_norm() {
    let mut g = vec![3.0f64, 4.0];
    let norm = clip_grad_norm(&mut g, 1.0);
    assert_eq!(norm, 5.0);
    assert!((global_norm(&g) - 1.0).abs() < 1e-6);
    let mut small = vec![0.3f64, 0.4];
    clip_grad_norm(&mut small, 1.0);
    assert_eq!(small, [0.3, 0.4], "a norm below the maximum is left alone");
}

#[test]
fn warmup_then_cosine() {
    let s = LrSchedule {
        kind: ScheduleKind::Cosine,
        base_lr: 1.0,
        min_lr: 0.1,
        warmup_steps: 4,
        total_steps: 14,
    };
    assert_eq!(s.lr_at(0), 0.25);
    assert_eq!(s.lr_at(3), 1.0);
    assert_eq!(s.lr_at(4), 1.0);
    assert!(
        (s.lr_at(9) - 0.55).abs() < 1e-12,
        "half way: {}",
        s.lr_at(9)
    );
    assert!((s.lr_at(14) - 0.1).abs() < 1e-12);
    assert!((s.lr_at(100) - 0.1).abs() < 1e-12, "stays at the minimum");
    let c = LrSchedule::constant(0.5);
    assert_eq!(c.lr_at(0), 0.5);
    assert_eq!(c.lr_at(1000), 0.5);
}

/// A training step gives bitwise the same gradients with 1 and with 2 threads (the
/// reductions are chunked independently of the thread count), which resume relies on.
#[test]
fn gradients_do_not_depend_on_thread_count() {
    let cfg = tiny(Pool::Mean);
    let layout = ParamLayout::new(&cfg);
    let params = init_params(&cfg, &layout, 9);
    let images: Vec<f32> = rand_vec(70 * 3 * 64, 3, 1.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let labels: Vec<u32> = (0..70).map(|i| i % 5).collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        pool.install(|| {
            let mut engine = CpuEngine::<f32>::new(&cfg, 70).expect("valid config");
            engine.forward(&params, &images);
            let loss = engine.loss(&labels, 0.1).loss;
            let mut grads = vec![0.0f32; layout.len];
            engine.backward(&params, &mut grads);
            (loss, grads)
        })
    };
    let (l1, g1) = run(1);
    let (l2, g2) = run(2);
    assert_eq!(l1.to_bits(), l2.to_bits());
    assert!(
        g1.iter().zip(&g2).all(|(a, b)| a.to_bits() == b.to_bits()),
        "gradients differ"
    );
}
