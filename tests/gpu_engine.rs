//! The device engine's whole training step against the CPU engine (in f64, from the same f32
//! parameters and images) for both pool modes: loss, logits, every parameter gradient and
//! every parameter after clipping + AdamW, per named tensor. Then `vitk train --device emu`
//! on the synthetic set learns as the CPU run does. Device: the emulator, or
//! VITK_TEST_DEVICE=cuda.

mod gpu_common;

use gpu_common::{check, device, rng, short_run_losses, uniform, widen};
use vitk::cpu::CpuEngine;
use vitk::cpu::{clip_grad_norm, AdamW};
use vitk::engine::Precision;
use vitk::gpu::GpuTrainer;
use vitk::model::drop_path::{DropPath, StepDrops};
use vitk::model::{init_params, ImageSize, ModelConfig, ParamLayout, Pool};
use vitk::optim::{AdamWConfig, FineTuning, ParamGroups};

/// Norm-wise relative error allowed, by tensor family (fp32 device engine vs f64 CPU engine).
const TOLERANCES: &[(&str, f64)] = &[
    ("loss", 1e-5),
    ("logits", 1e-5),
    ("grad_norm", 1e-5),
    ("grad", 1e-4),   // every `grad.<timm name>`
    ("param", 1e-5),  // every `param.<timm name>` after AdamW
    ("adam_m", 1e-5), // the AdamW moments (fed the same gradients on both sides)
    ("adam_v", 1e-5),
];

/// The tolerance of a named tensor in precision `p`. In bf16 every matmul operand (weights,
/// activations, the gradients flowing back) is rounded to 8 significant bits: one rounding
/// moves a value by at most u16 = 2⁻⁸ relatively and by u16/√3 in the mean square, and
/// independent roundings add in quadrature, so a tensor reached through n roundings is off by
/// about √n·u16/√3 norm-wise; the tolerance allows 3x that. n counts the roundings on the
/// path: forward, 3 (patches, patch weights, the stream into block 0) + 9 per block
/// (LayerNorm outputs, weights, q|k|v, the attention output, fc1's two outputs) + 2 (head);
/// gradients add the backward roundings, 6 per block (dY copies, dattn, dq|k|v, fc1's
/// gradient) + 2 (dlogits) over every block between the loss and the tensor. Parameters
/// and moments are compared after an fp32 AdamW fed the device's own gradients on both
/// sides, so they keep the fp32 tolerance.
fn tol(name: &str, p: Precision, depth: usize) -> f64 {
    let family = name.split('.').next().unwrap_or(name);
    let fp32 = gpu_common::tol(TOLERANCES, family);
    if p == Precision::Fp32 || matches!(family, "param" | "adam_m" | "adam_v") {
        return fp32;
    }
    let forward = 3 + 9 * depth + 2;
    let n = match family {
        "logits" | "loss" => forward,
        _ => forward + 2 + 6 * depth,
    };
    gpu_common::bf16_tol(n)
}

fn tiny(pool: Pool) -> ModelConfig {
    ModelConfig {
        image_size: ImageSize::square(12),
        patch_size: 4,
        in_chans: 3,
        num_classes: 7,
        embed_dim: 18,
        depth: 2,
        num_heads: 3,
        mlp_dim: 22,
        pool,
    }
}

/// Rows whose two largest logits are closer than `margin`: their arg-max may differ between
/// two engines that agree to rounding.
fn near_ties(logits: &[f64], classes: usize, margin: f64) -> usize {
    logits
        .chunks(classes)
        .filter(|row| {
            let mut s = row.to_vec();
            s.sort_by(|a, b| b.total_cmp(a));
            s.len() > 1 && s[0] - s[1] < margin
        })
        .count()
}

/// Three training steps on fresh batches, clipping on the first and last. After each: logits,
/// loss, correct count, gradient norm, every parameter gradient (device at its parameters vs
/// CPU at its own), the AdamW moments and every parameter. The reference applies clipping and
/// AdamW (f64) to the device's gradients, which were just checked against the CPU's: Adam
/// divides each gradient by its own magnitude, so a gradient that is zero analytically (the
/// key bias: softmax ignores a shift of all scores) turns rounding noise into updates of order
/// lr whatever the engine; fed the same gradients, both sides then differ by rounding only, so
/// a state the device carries between steps wrongly (gradients not zeroed, moments not kept)
/// shows at the next step. `tuning`: layer-wise LR decay and a frozen backbone on both sides
/// (the CPU reference: its head-only backward, clipping of the trainable span and AdamW with
/// the same groups); frozen tensors must stay bitwise as they started on the device, with
/// zero gradients and moments.
fn steps_match_cpu(pool: Pool, precision: Precision, tuning: FineTuning) {
    steps_match(&tiny(pool), precision, 3, 3, tuning);
}

/// `steps` (at most 3) training steps of a model of `cfg` at batch `batch`, compared as
/// [`steps_match_cpu`] describes.
fn steps_match(
    cfg: &ModelConfig,
    precision: Precision,
    steps: usize,
    batch: usize,
    tuning: FineTuning,
) {
    steps_match_dropping(cfg, precision, steps, batch, tuning, None);
}

/// [`steps_match`] with stochastic depth `drop` (`Some`): the device runs whole queued steps
/// (`try_train_step`, the staged drop-path scales; its logits and gradients read back after
/// the step), the CPU the same step's flags (`StepDrops::draw` at the steps taken). Returns
/// the flags drawn.
fn steps_match_dropping(
    cfg: &ModelConfig,
    precision: Precision,
    steps: usize,
    batch: usize,
    tuning: FineTuning,
    drop: Option<DropPath>,
) -> Vec<StepDrops> {
    let rt = device();
    let pool = cfg.pool;
    let mut rng = rng(&format!("engine steps {pool} {}", cfg.image_size));
    let layout = ParamLayout::new(cfg);
    let params = init_params(cfg, &layout, 7);
    // perturb so that zero-initialised tensors (biases, cls) get non-trivial values
    let params: Vec<f32> = params
        .iter()
        .zip(uniform(&mut rng, layout.len, 0.05))
        .map(|(p, n)| p + n)
        .collect();
    let adamw = AdamWConfig::default();
    let mut cpu = CpuEngine::<f64>::new(cfg, batch).unwrap();
    let mut p64 = widen(&params);
    let mut opt = AdamW::<f64>::new(adamw, layout.len);
    let groups = ParamGroups::new(&layout, tuning);
    let span = groups.trainable();
    let mut gpu = GpuTrainer::new(rt, cfg, batch, &params, adamw, precision, tuning)
        .and_then(|g| g.with_drop_path(drop))
        .unwrap();
    let mut drawn = Vec::new();
    let depth = cfg.depth;
    let tol = |name: &str| tol(name, precision, depth);
    let k = cfg.num_classes as u32;
    for (step, (lr, clip)) in [(3e-3, Some(0.5)), (2e-3, None), (1e-3, Some(0.3))]
        .into_iter()
        .take(steps)
        .enumerate()
    {
        let case = format!(
            "{precision} pool={pool} S={} T={} {tuning:?} step={}",
            cfg.image_size,
            cfg.num_tokens(),
            step + 1
        );
        let images = uniform(&mut rng, batch * cfg.image_len(), 1.5);
        let labels: Vec<u32> = (0..batch as u32)
            .map(|i| (i * 3 + 1 + step as u32) % k)
            .collect();
        let smoothing = 0.1;

        let drops = drop.map(|dp| StepDrops::draw(&dp, step as u64, depth, batch));
        cpu.forward_dropping(&p64, &widen(&images), drops.as_ref());
        drawn.extend(drops);
        let logits = cpu.logits().to_vec();
        let stats = cpu.loss(&labels, smoothing);
        let mut grads = vec![0.0; layout.len];
        if tuning.freeze_backbone {
            cpu.backward_head(&p64, &mut grads);
        } else {
            cpu.backward(&p64, &mut grads);
        }
        let norm = clip_grad_norm(
            &mut grads[span.clone()].to_vec(),
            clip.unwrap_or(f64::INFINITY),
        );

        let (g_logits, g_grads, s) = if drop.is_none() {
            gpu.try_forward(&images).unwrap();
            let g_logits = gpu.try_logits().unwrap();
            gpu.try_loss(&labels, smoothing).unwrap();
            gpu.try_backward().unwrap();
            let g_grads = gpu.try_grads().unwrap();
            gpu.try_update(lr, clip).unwrap();
            (g_logits, g_grads, gpu.read_stats().unwrap())
        } else {
            let o = gpu
                .try_train_step(&images, &labels, lr, smoothing, clip)
                .unwrap();
            let s = [o.loss, o.correct as f64, o.grad_norm.unwrap_or(0.0), 0.0];
            let (logits, grads) = (gpu.try_logits().unwrap(), gpu.try_grads().unwrap());
            (logits, grads, s.map(|v| v as f32))
        };
        check(&case, "logits", tol("logits"), &g_logits, &logits);
        check(&case, "loss", tol("loss"), &s[..1], &[stats.loss]);
        let scale = logits.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let near = near_ties(
            &logits,
            cfg.num_classes,
            2.0 * tol("logits") * scale.max(1e-3),
        );
        assert!(
            (s[1] as usize).abs_diff(stats.correct) <= near,
            "{case}: correct count {} vs {} with {near} near-tied rows",
            s[1],
            stats.correct
        );
        if clip.is_some() {
            check(&case, "grad_norm", tol("grad_norm"), &s[2..3], &[norm]);
        }

        let mut g_dev = widen(&g_grads);
        if let Some(c) = clip {
            clip_grad_norm(&mut g_dev[span.clone()], c);
        }
        opt.update(&groups, &mut p64, &g_dev, lr);
        let g_params = gpu.try_params().unwrap();
        let g_opt = gpu.try_optimizer_state().unwrap();
        assert_eq!(g_opt.step, opt.step, "{case}: optimizer step count");
        for t in groups.tensors.iter().filter(|t| t.frozen) {
            let r = t.range.clone();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&g_params[r.clone()]),
                bits(&params[r.clone()]),
                "{case}: frozen {} changed",
                t.name
            );
            for (what, v) in [("grad", &g_grads), ("m", &g_opt.m), ("v", &g_opt.v)] {
                assert!(
                    v[r.clone()].iter().all(|&x| x.to_bits() == 0),
                    "{case}: frozen {}: {what} not zero",
                    t.name
                );
            }
        }
        for e in &layout.entries {
            let r = e.range.clone();
            for (family, dev, want) in [
                ("grad", &g_grads, &grads),
                ("param", &g_params, &p64),
                ("adam_m", &g_opt.m, &opt.m),
                ("adam_v", &g_opt.v, &opt.v),
            ] {
                let name = format!("{family}.{}", e.name);
                check(&case, &name, tol(&name), &dev[r.clone()], &want[r.clone()]);
            }
        }
    }
    drawn
}

/// Stochastic depth at p = 0.5 (block rates [0, 0.5]) over 3 queued steps, both precisions
/// and pool modes: the device drops the samples the CPU does (some dropped, some kept).
#[test]
fn drop_path_steps_match_cpu() {
    let dp = DropPath {
        rate: 0.5,
        seed: 11,
    };
    for (pool, precision) in [(Pool::Cls, Precision::Fp32), (Pool::Mean, Precision::Bf16)] {
        let drawn = steps_match_dropping(&tiny(pool), precision, 3, 3, PLAIN, Some(dp));
        let flags: Vec<bool> = drawn
            .iter()
            .flat_map(|d| d.keep[1].iter().flatten().copied())
            .collect();
        assert!(flags.contains(&false) && flags.contains(&true), "{flags:?}");
        assert!(drawn.iter().all(|d| d.rates == [0.0, 0.5]));
    }
}

const PLAIN: FineTuning = FineTuning {
    layer_decay: None,
    freeze_backbone: false,
};
const LAYER_DECAY: FineTuning = FineTuning {
    layer_decay: Some(0.75),
    freeze_backbone: false,
};
const FROZEN: FineTuning = FineTuning {
    layer_decay: None,
    freeze_backbone: true,
};

#[test]
fn training_steps_match_cpu_cls_pool() {
    steps_match_cpu(Pool::Cls, Precision::Fp32, PLAIN);
}

#[test]
fn training_steps_match_cpu_mean_pool() {
    steps_match_cpu(Pool::Mean, Precision::Fp32, PLAIN);
}

#[test]
fn bf16_training_steps_match_cpu_cls_pool() {
    steps_match_cpu(Pool::Cls, Precision::Bf16, PLAIN);
}

#[test]
fn bf16_training_steps_match_cpu_mean_pool() {
    steps_match_cpu(Pool::Mean, Precision::Bf16, PLAIN);
}

#[test]
fn layer_decay_steps_match_cpu() {
    steps_match_cpu(Pool::Cls, Precision::Fp32, LAYER_DECAY);
}

#[test]
fn bf16_layer_decay_steps_match_cpu() {
    steps_match_cpu(Pool::Mean, Precision::Bf16, LAYER_DECAY);
}

/// Frozen backbone with layer decay on top (the head's rate is the base rate either way).
#[test]
fn frozen_backbone_steps_match_cpu() {
    steps_match_cpu(Pool::Cls, Precision::Fp32, FROZEN);
    steps_match_cpu(
        Pool::Mean,
        Precision::Fp32,
        FineTuning {
            layer_decay: Some(0.5),
            freeze_backbone: true,
        },
    );
}

#[test]
fn bf16_frozen_backbone_steps_match_cpu() {
    steps_match_cpu(Pool::Mean, Precision::Bf16, FROZEN);
}

/// ViT-B/16's input, 224 x 224 at patch 16: T = 197 tokens (one step, a narrow model).
#[test]
fn a_step_at_224_by_16_matches_cpu() {
    let cfg = ModelConfig {
        image_size: ImageSize::square(224),
        patch_size: 16,
        embed_dim: 16,
        depth: 1,
        num_heads: 2,
        mlp_dim: 16,
        num_classes: 5,
        ..tiny(Pool::Cls)
    };
    assert_eq!(cfg.num_tokens(), 197);
    steps_match(&cfg, Precision::Fp32, 1, 2, PLAIN);
}

/// A non-square input, 12 x 20 at patch 4 (a 3 x 5 grid), in both pool modes and precisions.
#[test]
fn steps_at_a_non_square_size_match_cpu() {
    for pool in [Pool::Cls, Pool::Mean] {
        let cfg = ModelConfig {
            image_size: ImageSize {
                height: 12,
                width: 20,
            },
            ..tiny(pool)
        };
        steps_match(&cfg, Precision::Fp32, 3, 3, PLAIN);
        steps_match(&cfg, Precision::Bf16, 2, 3, PLAIN);
    }
}

#[test]
fn cli_train_on_the_emulator_learns_as_the_cpu_does() {
    let dir = tempfile::tempdir().unwrap();
    let cpu = short_run_losses("train", "cpu", "fp32", &[], dir.path());
    let emu = short_run_losses("train", "emu", "fp32", &[], dir.path());
    println!("cpu losses: {cpu:.4?}\nemu losses: {emu:.4?}");
    assert_eq!(cpu.len(), 12);
    assert_eq!(emu.len(), 12);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (c0, c1) = (mean(&cpu[..3]), mean(&cpu[9..]));
    let (e0, e1) = (mean(&emu[..3]), mean(&emu[9..]));
    assert!(
        c1 < c0 && e1 < e0,
        "loss must decrease: cpu {c0} -> {c1}, emu {e0} -> {e1}"
    );
    // Same seed, data and initialisation: the runs differ by rounding only.
    for (i, (c, e)) in cpu.iter().zip(&emu).enumerate() {
        assert!(
            (c - e).abs() <= 1e-2 * c.abs(),
            "step {i}: cpu loss {c}, emu {e}"
        );
    }
}

/// `vitk train --device emu --precision bf16` learns as the CPU (fp32) run does: same data,
/// seed and initialisation, so the losses differ by the bf16 roundings only. With the
/// tolerance model of `tol` above (a 1-block model: about √(14)·u16/√3 ≈ 0.8% norm-wise on
/// the logits), each step's loss stays within 3% of the CPU's, and both fall.
#[test]
fn cli_train_bf16_on_the_emulator_learns_as_the_cpu_does() {
    let dir = tempfile::tempdir().unwrap();
    let cpu = short_run_losses("train", "cpu", "fp32", &[], dir.path());
    let emu = short_run_losses("train", "emu", "bf16", &[], dir.path());
    println!("cpu fp32 losses: {cpu:.4?}\nemu bf16 losses: {emu:.4?}");
    assert_eq!(emu.len(), 12);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&emu[9..]) < mean(&emu[..3]),
        "bf16 loss must decrease: {emu:?}"
    );
    let worst = cpu
        .iter()
        .zip(&emu)
        .map(|(c, e)| (c - e).abs() / c.abs())
        .fold(0.0f64, f64::max);
    println!("largest relative loss difference: {worst:.2e}");
    assert!(
        worst <= 3e-2,
        "bf16 losses drift from the CPU run: {worst:e}"
    );
}

/// The device engine's attention probabilities [L, B, H, T, T] (recomputed from the saved q, k
/// and log-sum-exp: the fused attention keeps no P) against the CPU engine's (the P it saves),
/// from the same f32 parameters and images: fp32 within 1e-5 per element; bf16 within the
/// logits' tolerance (the roundings on the path to the last block's q and k are a subset of
/// those on the path to the logits), with rows still summing to 1.
#[test]
fn attention_probabilities_match_the_cpu_engine() {
    use vitk::cpu::CpuTrainer;
    use vitk::engine::TrainEngine;
    for pool in [Pool::Cls, Pool::Mean] {
        for precision in [Precision::Fp32, Precision::Bf16] {
            let case = format!("attention probabilities {precision} pool={pool}");
            let mut rng = rng(&case);
            let cfg = tiny(pool);
            let layout = ParamLayout::new(&cfg);
            let batch = 3;
            // Weights this large make the attention far from uniform.
            let params = uniform(&mut rng, layout.len, 0.8);
            let images = uniform(&mut rng, batch * cfg.image_len(), 1.5);
            let adamw = AdamWConfig::default();
            let mut cpu = CpuTrainer::new(&cfg, batch, params.clone(), adamw, PLAIN).unwrap();
            let mut gpu =
                GpuTrainer::new(device(), &cfg, batch, &params, adamw, precision, PLAIN).unwrap();
            let want = cpu.attention_probs(&images).unwrap();
            let got = TrainEngine::attention_probs(&mut gpu, &images).unwrap();
            let t = cfg.num_tokens();
            assert_eq!(
                got.len(),
                cfg.depth * batch * cfg.num_heads * t * t,
                "{case}"
            );
            let peak = want.iter().cloned().fold(0.0f32, f32::max);
            assert!(
                peak > 0.5,
                "{case}: attention too uniform for a test ({peak})"
            );
            for (i, row) in got.chunks_exact(t).enumerate() {
                let sum: f64 = row.iter().map(|&v| v as f64).sum();
                assert!((sum - 1.0).abs() <= 1e-5, "{case}: row {i} sums to {sum}");
            }
            match precision {
                Precision::Fp32 => {
                    let (i, diff) = got
                        .iter()
                        .zip(&want)
                        .map(|(g, w)| (g - w).abs())
                        .enumerate()
                        .fold((0, 0.0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
                    assert!(
                        diff <= 1e-5,
                        "{case}: element {i}: {} vs {} on the CPU",
                        got[i],
                        want[i]
                    );
                }
                Precision::Bf16 => {
                    let tol = tol("logits", precision, cfg.depth);
                    check(&case, "probs", tol, &got, &widen(&want));
                }
            }
        }
    }
}
