//! Every kernel but the matmuls (tests/matmul_parity.rs) against its CPU op run in f64 on the
//! same inputs, on fresh random inputs, at shapes that are not multiples of any block size and
//! at model scale, with outputs poisoned (NaN) before the launch; in both precisions where a
//! kernel has a bf16 instance. Then hostile numerics: scores of ±200, LayerNorm rows of tiny
//! and zero variance, tied and huge logits. Device: the emulator, or a GPU with
//! VITK_TEST_DEVICE=cuda.
//!
//! Tolerances are norm-wise relative errors (gpu_common::check). fp32: 1e-5 (a few dozen
//! roundings of 2⁻²⁴ at most). A bf16 output is the fp32 result rounded once to nearest, so it
//! may be off by u16 = 2⁻⁸ relatively per element: the tolerance grows by u16. bf16 inputs are
//! given as bf16 values on both sides (gpu_common::held), so they add nothing.

mod common;
mod gpu_common;
mod reference;

use gpu_common::{check, device, held, rng, tol, uniform, widen, Dev, U16, U32};
use rand::Rng;
use vitk::cpu;
use vitk::cpu::AdamW;
use vitk::engine::Precision;
use vitk::gpu::kernels::{self, AttnDims};
use vitk::gpu::{DeviceBuffer, Runtime};
use vitk::model::{ImageSize, ModelConfig, ParamLayout, Pool};
use vitk::optim::{device_hyper, AdamWConfig, FineTuning, ParamGroups};

/// Norm-wise relative error allowed per tensor in fp32 (f32 kernels vs the f64 CPU op).
const TOLERANCES: &[(&str, f64)] = &[
    ("patch_embed.patches", 0.0),
    ("layernorm.out", 1e-5),
    ("layernorm.mean", 1e-5),
    ("layernorm.rstd", 1e-5),
    ("layernorm.dx", 1e-5),
    ("layernorm.dweight", 1e-5),
    ("layernorm.dbias", 1e-5),
    ("reduce.warp_sum", 1e-5),
    ("reduce.block_sum", 1e-5),
    ("attention.out", 1e-5),
    ("attention.lse", 1e-5),
    ("attention.dqkv", 1e-5),
    ("cross_entropy.loss", 1e-5),
    ("cross_entropy.dlogits", 1e-5),
    // As the hard-label loss: a softmax and a K-term sum per row in fp32.
    ("soft_cross_entropy.loss", 1e-5),
    ("soft_cross_entropy.dlogits", 1e-5),
    // Elementwise: at most two roundings of 2⁻²⁴ per value (x + s·f; s·dy is one).
    ("drop_path.y", 1e-6),
    ("drop_path.dbranch", 1e-6),
    // torch's lerp: three roundings per weight (a difference, a product, a sum).
    ("ema.params", 1e-6),
    ("adamw.params", 1e-5),
    ("adamw.m", 1e-5),
    ("adamw.v", 1e-5),
    ("clip.norm", 1e-5),
    ("tokens.x", 1e-5),
    ("tokens.dpatch", 1e-5),
    ("tokens.dpos", 1e-5),
    ("tokens.dcls", 1e-5),
    ("pool.pooled", 1e-5),
    ("pool.dx", 1e-5),
];

/// The tolerance of `name` for an output held in precision `p`.
fn tol_in(name: &str, p: Precision) -> f64 {
    tol(TOLERANCES, name) + if p == Precision::Bf16 { U16 } else { 0.0 }
}

const BOTH: [Precision; 2] = [Precision::Fp32, Precision::Bf16];

#[test]
fn patch_embed_im2col_matches_cpu() {
    let rt = device();
    let mut rng = rng("patch_embed");
    // (batch, channels, height, width, patch) ... non-square images, and the model shapes:
    // CIFAR-10 at patch 4, and 224 at patch 16 (ViT-B/16's input)
    for (b, c, h, w, p) in [
        (1, 1, 4, 4, 2),
        (3, 3, 20, 20, 4),
        (2, 5, 33, 33, 11),
        (1, 3, 35, 35, 7),
        (2, 3, 20, 36, 4),
        (1, 2, 33, 22, 11),
        (8, 3, 32, 32, 4),
        (2, 3, 224, 224, 16),
    ] {
        let size = ImageSize {
            height: h,
            width: w,
        };
        for prec in BOTH {
            let case = format!("{prec} B={b} C={c} S={h}x{w} P={p}");
            let mut dev = Dev::new(&rt);
            let images = held(prec, &uniform(&mut rng, b * c * h * w, 1.0));
            let n = (h / p) * (w / p);
            let mut want = vec![0.0f64; b * n * c * p * p];
            cpu::patch_embed::im2col(&mut want, &widen(&images), b, c, size, p);
            assert_eq!(
                want,
                reference::im2col(&widen(&images), b, c, (h, w), p),
                "{case}"
            );
            let patches = dev.out(prec, want.len());
            let gi = dev.f32(&images);
            kernels::patch_embed_im2col(&*rt, patches, gi, b, c, size, p).unwrap();
            // A copy: exact in both precisions (the images hold bf16 values here).
            check(&case, "patch_embed.patches", 0.0, &dev.get(patches), &want);
        }
    }
}

#[test]
fn layernorm_forward_and_backward_match_cpu() {
    let rt = device();
    let mut rng = rng("layernorm");
    // (rows, dim): rows > 128 make backward blocks own several rows; 1040 x 256 is 16
    // images of `seed` (9 rows per block)
    for (rows, dim) in [
        (1, 7),
        (7, 37),
        (19, 768),
        (130, 100),
        (300, 65),
        (1040, 256),
    ] {
        let x: Vec<f32> = uniform(&mut rng, rows * dim, 2.0)
            .iter()
            .map(|v| v + 0.5)
            .collect();
        let weight: Vec<f32> = uniform(&mut rng, dim, 0.5)
            .iter()
            .map(|v| v + 1.0)
            .collect();
        let bias = uniform(&mut rng, dim, 0.5);
        let dout = uniform(&mut rng, rows * dim, 1.0);
        // accumulated outputs start from the same random values on both sides
        let dx0 = uniform(&mut rng, rows * dim, 1.0);
        let dw0 = uniform(&mut rng, dim, 1.0);
        let db0 = uniform(&mut rng, dim, 1.0);

        let (x64, w64) = (widen(&x), widen(&weight));
        let mut out = vec![0.0; rows * dim];
        let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
        cpu::layernorm::layernorm_forward(
            &mut out,
            &mut mean,
            &mut rstd,
            &x64,
            &w64,
            &widen(&bias),
            dim,
        );
        let (mut dx, mut dw, mut db) = (widen(&dx0), widen(&dw0), widen(&db0));
        cpu::layernorm::layernorm_backward(
            &mut dx,
            &mut dw,
            &mut db,
            &widen(&dout),
            &x64,
            &mean,
            &rstd,
            &w64,
            dim,
        );

        for prec in BOTH {
            let case = format!("{prec} R={rows} D={dim}");
            let mut dev = Dev::new(&rt);
            let (gx, gw, gb) = (dev.f32(&x), dev.f32(&weight), dev.f32(&bias));
            let g_out = dev.out(prec, rows * dim);
            let (g_mean, g_rstd) = (dev.nan(rows), dev.nan(rows));
            kernels::layernorm_forward(&*rt, g_out, g_mean, g_rstd, gx, gw, gb, dim).unwrap();
            check(
                &case,
                "layernorm.out",
                tol_in("layernorm.out", prec),
                &dev.get(g_out),
                &out,
            );
            for (name, g, c) in [
                ("layernorm.mean", g_mean, &mean),
                ("layernorm.rstd", g_rstd, &rstd),
            ] {
                check(&case, name, tol(TOLERANCES, name), &dev.get32(g), c);
            }

            // The backward is fp32 in both precisions; the bf16 path adds a copy of dx.
            let (g_dx, g_dw, g_db) = (dev.f32(&dx0), dev.f32(&dw0), dev.f32(&db0));
            let dx_low = (prec == Precision::Bf16).then(|| dev.bf16(&vec![f32::NAN; rows * dim]));
            let scratch = dev.nan(kernels::layernorm_backward_scratch_len(rows, dim));
            let gdout = dev.f32(&dout);
            kernels::layernorm_backward(
                &*rt, g_dx, dx_low, g_dw, g_db, scratch, gdout, gx, g_mean, g_rstd, gw, dim,
            )
            .unwrap();
            for (name, g, c) in [
                ("layernorm.dx", g_dx, &dx),
                ("layernorm.dweight", g_dw, &dw),
                ("layernorm.dbias", g_db, &db),
            ] {
                check(&case, name, tol(TOLERANCES, name), &dev.get32(g), c);
            }
            if let Some(low) = dx_low {
                let copy = dev.get(low.into());
                check(
                    &case,
                    "layernorm.dx (bf16 copy)",
                    tol_in("layernorm.dx", prec),
                    &copy,
                    &dx,
                );
            }
        }
    }
}

#[test]
fn warp_and_block_sums_are_correct() {
    let rt = device();
    let mut rng = rng("reduce");
    let mut dev = Dev::new(&rt);
    let input = uniform(&mut rng, 32, 1.0);
    let want = vec![input.iter().map(|&v| v as f64).sum::<f64>(); 32];
    let (d_in, d_out) = (dev.f32(&input), dev.nan(32));
    kernels::test_warp_sum(&*rt, d_out, d_in).unwrap();
    check(
        "32 lanes",
        "reduce.warp_sum",
        tol(TOLERANCES, "reduce.warp_sum"),
        &dev.get32(d_out),
        &want,
    );

    // (rows, row length, threads per block): block sizes and lengths not multiples of 32
    for (rows, n, threads) in [
        (3, 1000, 100),
        (2, 77, 32),
        (5, 4097, 1024),
        (4, 300, 257),
        (1, 5, 7),
    ] {
        let case = format!("R={rows} n={n} threads={threads}");
        let input = uniform(&mut rng, rows * n, 1.0);
        let want: Vec<f64> = input
            .chunks(n)
            .map(|r| r.iter().map(|&v| v as f64).sum())
            .collect();
        let (d_in, d_out) = (dev.f32(&input), dev.nan(rows));
        kernels::test_block_sum(&*rt, d_out, d_in, n, threads).unwrap();
        check(
            &case,
            "reduce.block_sum",
            tol(TOLERANCES, "reduce.block_sum"),
            &dev.get32(d_out),
            &want,
        );
    }
}

/// Token-major qkv [B, T, 3D] -> head-major [3, B, H, T, hd].
fn head_major(qkv: &[f32], b: usize, t: usize, h: usize, hd: usize) -> Vec<f32> {
    let d = h * hd;
    let mut out = vec![0.0; qkv.len()];
    for s in 0..3 {
        for bi in 0..b {
            for hi in 0..h {
                for ti in 0..t {
                    for e in 0..hd {
                        out[(((s * b + bi) * h + hi) * t + ti) * hd + e] =
                            qkv[(bi * t + ti) * 3 * d + s * d + hi * hd + e];
                    }
                }
            }
        }
    }
    out
}

/// Checks `got` against `want` element by element within `bound`; NaN never passes.
fn check_bound(case: &str, name: &str, got: &[f32], want: &[f64], bound: &[f64]) {
    assert_eq!(got.len(), want.len(), "{case} {name}: length");
    let mut worst = 0.0f64;
    for i in 0..got.len() {
        let err = (got[i] as f64 - want[i]).abs();
        assert!(
            err <= bound[i],
            "{case} {name}[{i}]: {} vs {}: error {err:e} above the bound {:e}",
            got[i],
            want[i],
            bound[i]
        );
        if bound[i] > 0.0 {
            worst = worst.max(err / bound[i]);
        }
    }
    println!("  {case} {name}: worst error {worst:.3} of its bound");
}

/// One fused attention forward and backward on the device against the f64 reference, with
/// q, k, v and dout holding values of precision `prec`: fp32 within `tol32` norm-wise (out,
/// lse, dqkv), bf16 within the element-wise rounding bounds of
/// reference::attention_bf16_bounds (lse within `tol32`: it is computed in fp32 from the same
/// bf16 inputs).
fn attention_case(
    rt: &std::sync::Arc<dyn Runtime>,
    case: &str,
    prec: Precision,
    qkv: &[f32],
    dout: &[f32],
    (b, t, h, hd): (usize, usize, usize, usize),
    tol32: f64,
) {
    let mut dev = Dev::new(rt);
    let d = h * hd;
    let n = b * t * d;
    let (q64, do64) = (widen(qkv), widen(dout));
    let (out, _) = reference::attention(&q64, b, t, h, hd);
    let lse = reference::attention_lse(&q64, b, t, h, hd);
    let dqkv = reference::attention_grad(&q64, &do64, b, t, h, hd);
    let hm = dev.operand(prec, &head_major(qkv, b, t, h, hd), 0);
    let (q, k, v) = (hm.slice(0, n), hm.slice(n, n), hm.slice(2 * n, n));
    let dims = AttnDims {
        batch: b,
        heads: h,
        tokens: t,
        head_dim: hd,
    };
    let (g_out, g_lse) = (dev.out(prec, n), dev.nan(b * h * t));
    kernels::attention_forward(&**rt, g_out, g_lse, q, k, v, dims).unwrap();
    let (g_dqkv, g_rowdot) = (dev.out(prec, 3 * n), dev.nan(b * h * t));
    let g_dout = dev.operand(prec, dout, 0);
    kernels::attention_backward(&**rt, g_dqkv, g_rowdot, g_dout, g_out, g_lse, q, k, v, dims)
        .unwrap();
    check(case, "attention.lse", tol32, &dev.get32(g_lse), &lse);
    match prec {
        Precision::Fp32 => {
            check(case, "attention.out", tol32, &dev.get(g_out), &out);
            check(case, "attention.dqkv", tol32, &dev.get(g_dqkv), &dqkv);
        }
        Precision::Bf16 => {
            let g = (t + hd + 2) as f64 * U32;
            let (bo, bg) = reference::attention_bf16_bounds(&q64, &do64, (b, t, h, hd), U16, g);
            check_bound(case, "attention.out", &dev.get(g_out), &out, &bo);
            check_bound(case, "attention.dqkv", &dev.get(g_dqkv), &dqkv, &bg);
        }
    }
}

#[test]
fn attention_forward_and_backward_match_cpu() {
    let rt = device();
    let mut rng = rng("attention");
    // (B, T, H, hd): T of 1, 2, below and above a tile (32 fp32, 64 bf16), several tiles;
    // head dims of every padded width (16, 32, 64, 128) and odd ones
    for (b, t, h, hd) in [
        (1, 1, 1, 1),
        (2, 2, 2, 3),
        (2, 37, 3, 7),
        (1, 65, 2, 33),
        (2, 65, 8, 32), // `seed`
        (1, 90, 1, 40),
        (1, 197, 3, 64), // ViT-Ti/16 at 224
        (1, 130, 1, 128),
        (1, 70, 2, 16),
        (1, 1025, 1, 16), // 128 x 128 at patch 4
    ] {
        for prec in BOTH {
            let case = format!("{prec} B={b} T={t} H={h} hd={hd}");
            let d = h * hd;
            let qkv = held(prec, &uniform(&mut rng, b * t * 3 * d, 1.5));
            let dout = held(prec, &uniform(&mut rng, b * t * d, 1.0));
            let tol32 = tol(TOLERANCES, "attention.out");
            attention_case(&rt, &case, prec, &qkv, &dout, (b, t, h, hd), tol32);
        }
    }
}

#[test]
fn cross_entropy_matches_cpu() {
    let rt = device();
    let mut rng = rng("cross_entropy");
    for (b, k, eps) in [
        (1, 1, 0.0),
        (3, 10, 0.1),
        (37, 5, 0.0),
        (9, 1000, 0.2),
        (300, 33, 0.1),
        (512, 10, 0.1), // a batch of 512: 64 rows per warp
    ] {
        let logits = uniform(&mut rng, b * k, 4.0);
        let labels: Vec<u32> = (0..b).map(|i| ((i * 7 + 3) % k) as u32).collect();
        let mut dl = vec![0.0; b * k];
        let st = cpu::loss::cross_entropy(&widen(&logits), &labels, k, eps, Some(&mut dl));
        for prec in BOTH {
            let case = format!("{prec} B={b} K={k} eps={eps}");
            let mut dev = Dev::new(&rt);
            let (stats, g_dl) = (dev.nan(4), dev.out(prec, b * k));
            let g_labels = DeviceBuffer::from_slice(&rt, &labels).unwrap();
            let gl = dev.f32(&logits);
            kernels::cross_entropy(&*rt, stats, g_dl, gl, &g_labels, b, k, eps as f32).unwrap();
            let s = dev.get32(stats);
            check(
                &case,
                "cross_entropy.loss",
                tol(TOLERANCES, "cross_entropy.loss"),
                &s[..1],
                &[st.loss],
            );
            assert_eq!(s[1] as usize, st.correct, "{case}: correct count");
            check(
                &case,
                "cross_entropy.dlogits",
                tol_in("cross_entropy.dlogits", prec),
                &dev.get(g_dl),
                &dl,
            );
        }
    }
}

fn tiny_config(pool: Pool) -> ModelConfig {
    ModelConfig {
        image_size: ImageSize::square(8),
        patch_size: 4,
        in_chans: 3,
        num_classes: 5,
        embed_dim: 12,
        depth: 2,
        num_heads: 2,
        mlp_dim: 20,
        pool,
    }
}

/// A model of 1.23 M parameters: past the 65,536 threads of the norm's grid-stride loop and
/// the 2048 x 256 threads of the AdamW launch.
fn large_config() -> ModelConfig {
    ModelConfig {
        image_size: ImageSize::square(16),
        patch_size: 4,
        in_chans: 3,
        num_classes: 10,
        embed_dim: 160,
        depth: 4,
        num_heads: 4,
        mlp_dim: 640,
        pool: Pool::Cls,
    }
}

#[test]
fn adamw_and_clipping_match_cpu() {
    let rt = device();
    let mut rng = rng("adamw");
    let small = ParamLayout::new(&tiny_config(Pool::Cls));
    let large = ParamLayout::new(&large_config());
    assert!(large.len > 1_200_000);
    let decay = FineTuning {
        layer_decay: Some(0.65),
        freeze_backbone: false,
    };
    let probe = FineTuning {
        layer_decay: Some(0.8),
        freeze_backbone: true,
    };
    for (layout, clip, steps, with_copy, tuning) in [
        (&small, None, 3u64, false, FineTuning::default()),
        (&small, Some(0.5), 2, true, FineTuning::default()),
        (&small, Some(1e6), 1, false, FineTuning::default()),
        (&small, Some(0.5), 2, true, decay),
        (&small, None, 2, false, probe),
        (&large, Some(0.5), 2, true, FineTuning::default()),
        (&large, None, 1, false, decay),
    ] {
        adamw_case(&rt, &mut rng, layout, clip, steps, with_copy, tuning);
    }
}

/// `steps` AdamW updates (with clipping at `clip`) on the device and the CPU optimizer in
/// f64, both with the optimizer groups of `tuning` (the device kernel over the trainable
/// span, as the engine launches it); `with_copy`: the device also writes the bf16 parameter
/// copies.
fn adamw_case(
    rt: &std::sync::Arc<dyn Runtime>,
    rng: &mut rand::rngs::StdRng,
    layout: &ParamLayout,
    clip: Option<f64>,
    steps: u64,
    with_copy: bool,
    tuning: FineTuning,
) {
    let groups = ParamGroups::new(layout, tuning);
    let span = groups.trainable();
    let n = span.len();
    let cfg = AdamWConfig::default();
    let case = format!(
        "n={n} clip={clip:?} steps={steps} bf16 copy={with_copy} {} groups",
        groups.groups.len()
    );
    let mut dev = Dev::new(rt);
    let p0 = uniform(rng, layout.len, 1.0);
    let mut cpu_opt = AdamW::<f64>::new(cfg, layout.len);
    let mut p = widen(&p0);
    let (gp, gm, gv) = (
        dev.f32(&p0[span.clone()]),
        dev.f32(&vec![0.0; n]),
        dev.f32(&vec![0.0; n]),
    );
    let low = with_copy.then(|| dev.bf16(&vec![f32::NAN; n]));
    let table = DeviceBuffer::from_slice(rt, &groups.group_table()).unwrap();
    let stats = dev.nan(4);
    let partial = DeviceBuffer::<f64>::new(rt, kernels::NORM_BLOCKS).unwrap();
    for t in 1..=steps {
        let g = uniform(rng, n, 0.3);
        let mut g64 = vec![0.0; layout.len];
        g64[span.clone()].copy_from_slice(&widen(&g));
        let lr = 1e-2 / t as f64;
        let gg = dev.f32(&g);
        if let Some(max) = clip {
            let norm = cpu::clip_grad_norm(&mut g64[span.clone()], max);
            kernels::grad_norm_clip(&**rt, stats, &partial, gg, max).unwrap();
            let s = dev.get32(stats);
            check(
                &case,
                "clip.norm",
                tol(TOLERANCES, "clip.norm"),
                &s[2..3],
                &[norm],
            );
        }
        cpu_opt.update(&groups, &mut p, &g64, lr);
        let hyper = dev.f32(&device_hyper(&cfg, t, lr, &groups.groups));
        kernels::adamw(
            &**rt,
            gp,
            low,
            gm,
            gv,
            gg,
            table.view(),
            groups.groups.len(),
            clip.map(|_| stats),
            hyper,
        )
        .unwrap();
    }
    // The CPU optimizer leaves the frozen prefix as it was.
    assert!(
        p[..span.start] == widen(&p0[..span.start]),
        "{case}: frozen"
    );
    check(
        &case,
        "adamw.params",
        tol(TOLERANCES, "adamw.params"),
        &dev.get32(gp),
        &p[span.clone()],
    );
    check(
        &case,
        "adamw.m",
        tol(TOLERANCES, "adamw.m"),
        &dev.get32(gm),
        &cpu_opt.m[span.clone()],
    );
    check(
        &case,
        "adamw.v",
        tol(TOLERANCES, "adamw.v"),
        &dev.get32(gv),
        &cpu_opt.v[span.clone()],
    );
    if let Some(low) = low {
        // Exactly the fp32 parameters rounded to bf16.
        let want: Vec<f32> = held(Precision::Bf16, &dev.get32(gp));
        assert_eq!(dev.get(low.into()), want, "{case}: bf16 copies");
    }
}

#[test]
fn tokens_and_pooling_match_cpu() {
    let rt = device();
    let mut rng = rng("tokens");
    for (b, n, d, cls) in [
        (1, 1, 1, true),
        (3, 7, 13, true),
        (2, 9, 33, false),
        (5, 64, 37, true),
        (8, 64, 256, true), // `seed`
    ] {
        for prec in BOTH {
            let case = format!("{prec} B={b} N={n} D={d} cls={cls}");
            let mut dev = Dev::new(&rt);
            let t = n + usize::from(cls);
            let patch = uniform(&mut rng, b * n * d, 1.0);
            let pos = uniform(&mut rng, t * d, 1.0);
            let c = uniform(&mut rng, d, 1.0);
            let dx = held(prec, &uniform(&mut rng, b * t * d, 1.0));
            let dpos0 = uniform(&mut rng, t * d, 1.0);
            let dcls0 = uniform(&mut rng, d, 1.0);
            let c64 = widen(&c);
            let mut x = vec![0.0; b * t * d];
            cpu::tokens::tokens_forward(
                &mut x,
                &widen(&patch),
                &widen(&pos),
                cls.then_some(&c64[..]),
                d,
            );
            let (mut dpatch, mut dpos, mut dcls) =
                (vec![0.0; b * n * d], widen(&dpos0), widen(&dcls0));
            cpu::tokens::tokens_backward(
                &mut dpatch,
                &mut dpos,
                cls.then_some(&mut dcls[..]),
                &widen(&dx),
                d,
            );

            let gc = dev.f32(&c);
            let gx = dev.nan(b * t * d);
            let (gpatch, gpos) = (dev.f32(&patch), dev.f32(&pos));
            kernels::tokens_forward(&*rt, gx, gpatch, gpos, cls.then_some(gc), b, d).unwrap();
            check(
                &case,
                "tokens.x",
                tol(TOLERANCES, "tokens.x"),
                &dev.get32(gx),
                &x,
            );
            let gdp = dev.out(prec, b * n * d);
            let (gdpos, gdcls, gdx) = (dev.f32(&dpos0), dev.f32(&dcls0), dev.f32(&dx));
            kernels::tokens_backward(&*rt, gdp, gdpos, cls.then_some(gdcls), gdx, b, d).unwrap();
            // dx holds values of `prec`: the patch gradient is a copy, exact in both.
            check(&case, "tokens.dpatch", 0.0, &dev.get(gdp), &dpatch);
            check(
                &case,
                "tokens.dpos",
                tol(TOLERANCES, "tokens.dpos"),
                &dev.get32(gdpos),
                &dpos,
            );
            if cls {
                check(
                    &case,
                    "tokens.dcls",
                    tol(TOLERANCES, "tokens.dcls"),
                    &dev.get32(gdcls),
                    &dcls,
                );
            }

            for pool in [Pool::Cls, Pool::Mean] {
                let case = format!("{case} pool={pool}");
                let dp = uniform(&mut rng, b * d, 1.0);
                let mut pooled = vec![0.0; b * d];
                cpu::pooling::pool_forward(&mut pooled, &widen(&dx), t, d, pool);
                let mut pdx = vec![0.0; b * t * d];
                cpu::pooling::pool_backward(&mut pdx, &widen(&dp), t, d, pool);
                let (gp, gpdx) = (dev.nan(b * d), dev.nan(b * t * d));
                let low = (prec == Precision::Bf16).then(|| dev.bf16(&vec![f32::NAN; b * t * d]));
                let mean = pool == Pool::Mean;
                let gdp = dev.f32(&dp);
                kernels::pool_forward(&*rt, gp, gdx, b, t, d, mean).unwrap();
                kernels::pool_backward(&*rt, gpdx, low, gdp, b, t, d, mean).unwrap();
                check(
                    &case,
                    "pool.pooled",
                    tol(TOLERANCES, "pool.pooled"),
                    &dev.get32(gp),
                    &pooled,
                );
                check(
                    &case,
                    "pool.dx",
                    tol(TOLERANCES, "pool.dx"),
                    &dev.get32(gpdx),
                    &pdx,
                );
                if let Some(low) = low {
                    check(
                        &case,
                        "pool.dx (bf16 copy)",
                        tol_in("pool.dx", prec),
                        &dev.get(low.into()),
                        &pdx,
                    );
                }
            }
        }
    }
}

// ---- hostile numerics -------------------------------------------------------------------------

/// Scores of about ±200 (a softmax without its max subtraction overflows), over one and
/// several key tiles, against the plain f64 reference, in both precisions.
#[test]
fn attention_with_scores_of_200() {
    let rt = device();
    let mut rng = rng("attention_large_scores");
    for (b, t, h, hd) in [(2, 37, 2, 16), (1, 70, 2, 16)] {
        for prec in BOTH {
            let d = h * hd;
            let qkv = held(prec, &uniform(&mut rng, b * t * 3 * d, 14.0));
            let q64 = widen(&qkv);
            let max_score = max_abs_score(&q64, b, t, h, hd);
            let case = format!("{prec} B={b} T={t} H={h} hd={hd} max|score|={max_score:.0}");
            assert!(max_score > 150.0, "{case}: scores are not large");
            let dout = held(prec, &uniform(&mut rng, b * t * d, 1.0));
            // fp32: a score carries ≈ (hd + 2)·u32·Σ|q||k| ≤ (hd + 2)·u32·|score|·√hd of
            // rounding, which moves its probability by that much relatively; everything
            // downstream inherits it (4x margin, rounded up to hd·|score|). bf16: the
            // element-wise bounds, which include the scores' fp32 error.
            let tol32 = 4.0 * max_score * hd as f64 * U32;
            attention_case(&rt, &case, prec, &qkv, &dout, (b, t, h, hd), tol32);
        }
    }
}

/// Largest |q·k|/√hd over all (batch, head, i, j) of token-major qkv.
fn max_abs_score(qkv: &[f64], b: usize, t: usize, h: usize, hd: usize) -> f64 {
    let d = h * hd;
    let mut m = 0.0f64;
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..t {
                for j in 0..t {
                    let s: f64 = (0..hd)
                        .map(|e| {
                            qkv[(bi * t + i) * 3 * d + hi * hd + e]
                                * qkv[(bi * t + j) * 3 * d + d + hi * hd + e]
                        })
                        .sum();
                    m = m.max((s / (hd as f64).sqrt()).abs());
                }
            }
        }
    }
    m
}

/// Rows of variance ≈ eps and constant rows (reference::hostile_layernorm_rows): eps = 1e-5
/// instead of 1e-6 halves rstd on them.
#[test]
fn layernorm_rows_of_tiny_and_zero_variance() {
    let rt = device();
    let mut rng = rng("layernorm_hostile");
    let (r, d, offset) = (6, 256, 0.25);
    let x = reference::hostile_layernorm_rows(r, d, offset, 71);
    let w: Vec<f32> = uniform(&mut rng, d, 0.5).iter().map(|v| v + 1.0).collect();
    let b = uniform(&mut rng, d, 0.5);
    let dout = uniform(&mut rng, r * d, 1.0);
    let (w64, b64) = (widen(&w), widen(&b));
    let (out, mean, rstd) = reference::layernorm(&x, &w64, &b64, d);
    let [dx, dw, db] = reference::layernorm_grads(&widen(&dout), &x, &w64, d);
    // The warp-wide mean's rounding (≤ (D/32 + 6)·u32·offset: each lane adds D/32 values,
    // then a 5-level tree) shifts x̂ by that times rstd (≤ 1000); 4x margin.
    let tol = 4.0 * ((d / 32) as f64 + 6.0) * U32 * offset * 1000.0;
    let case = format!(
        "R={r} D={d} offset={offset} rstd={:.0}..{:.0}",
        rstd[0], rstd[1]
    );
    let mut dev = Dev::new(&rt);
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let (g_out, g_mean, g_rstd) = (dev.nan(r * d), dev.nan(r), dev.nan(r));
    let (gx, gw, gb) = (dev.f32(&x32), dev.f32(&w), dev.f32(&b));
    kernels::layernorm_forward(&*rt, g_out.into(), g_mean, g_rstd, gx, gw, gb, d).unwrap();
    let got_out = dev.get32(g_out);
    check(&case, "layernorm.out", tol, &got_out, &out);
    check(&case, "layernorm.mean", 1e-6, &dev.get32(g_mean), &mean);
    check(&case, "layernorm.rstd", 1e-5, &dev.get32(g_rstd), &rstd);
    for row in (1..r).step_by(2) {
        assert_eq!(
            &got_out[row * d..(row + 1) * d],
            &b[..],
            "constant row {row} is not the bias"
        );
    }
    let (g_dx, g_dw, g_db) = (
        dev.f32(&vec![0.0; r * d]),
        dev.f32(&vec![0.0; d]),
        dev.f32(&vec![0.0; d]),
    );
    let scratch = dev.nan(kernels::layernorm_backward_scratch_len(r, d));
    let gdout = dev.f32(&dout);
    kernels::layernorm_backward(
        &*rt, g_dx, None, g_dw, g_db, scratch, gdout, gx, g_mean, g_rstd, gw, d,
    )
    .unwrap();
    check(&case, "layernorm.dx", tol, &dev.get32(g_dx), &dx);
    check(&case, "layernorm.dweight", tol, &dev.get32(g_dw), &dw);
    check(&case, "layernorm.dbias", 1e-5, &dev.get32(g_db), &db);
}

/// Exact ties (the first arg-max counts), all-equal rows and logits of ±1e4
/// (reference::hostile_logits), at a batch spread over every warp.
#[test]
fn cross_entropy_with_ties_equal_rows_and_huge_logits() {
    let rt = device();
    let (b, k) = (40, 10);
    let (logits, labels) = reference::hostile_logits(b, k, 81);
    let l32: Vec<f32> = logits.iter().map(|&v| v as f32).collect();
    for eps in [0.0, 0.1] {
        let case = format!("hostile rows B={b} K={k} eps={eps}");
        let (loss, correct, dl) = reference::cross_entropy(&logits, &labels, k, eps);
        let mut dev = Dev::new(&rt);
        let (stats, g_dl) = (dev.nan(4), dev.nan(b * k));
        let g_labels = DeviceBuffer::from_slice(&rt, &labels).unwrap();
        let gl = dev.f32(&l32);
        kernels::cross_entropy(&*rt, stats, g_dl.into(), gl, &g_labels, b, k, eps as f32).unwrap();
        let s = dev.get32(stats);
        assert_eq!(s[1] as usize, correct, "{case}: correct count");
        // Row losses up to ~2e4 summed over 40 rows in fp32: ≤ 40·u32 relative.
        check(&case, "cross_entropy.loss", 1e-5, &s[..1], &[loss]);
        check(&case, "cross_entropy.dlogits", 1e-5, &dev.get32(g_dl), &dl);
    }
}

#[test]
fn soft_cross_entropy_matches_cpu() {
    let rt = device();
    let mut rng = rng("soft_cross_entropy");
    // (batch, classes): odd shapes, one row per warp and more, and ImageNet's K
    for (b, k) in [(1, 1), (7, 10), (37, 5), (129, 1000), (300, 33)] {
        let logits = uniform(&mut rng, b * k, 4.0);
        // Mixup's targets (two classes mixed, smoothing 0.1) and dense ones (a softmax of
        // random values, every class non-zero).
        let labels: Vec<u32> = (0..b).map(|i| ((i * 7 + 3) % k) as u32).collect();
        let lam = 0.2 + 0.6 * rng.random::<f64>();
        let mixed = vitk::data::mixup::mixup_targets(&labels, k, lam, 0.1);
        let dense: Vec<f32> = uniform(&mut rng, b * k, 3.0)
            .chunks(k)
            .flat_map(|r| {
                let s: f32 = r.iter().map(|v| v.exp()).sum();
                r.iter().map(move |v| v.exp() / s).collect::<Vec<_>>()
            })
            .collect();
        for (what, targets) in [("mixed", &mixed), ("dense", &dense)] {
            let mut dl = vec![0.0; b * k];
            let st = cpu::soft_loss::soft_target_cross_entropy(
                &widen(&logits),
                &widen(targets),
                k,
                Some(&mut dl),
            );
            for prec in BOTH {
                let case = format!("{prec} B={b} K={k} {what}");
                let mut dev = Dev::new(&rt);
                let (stats, g_dl) = (dev.nan(4), dev.out(prec, b * k));
                let (gl, gt) = (dev.f32(&logits), dev.f32(targets));
                kernels::soft_cross_entropy(&*rt, stats, g_dl, gl, gt, b, k).unwrap();
                let s = dev.get32(stats);
                check(
                    &case,
                    "soft_cross_entropy.loss",
                    tol(TOLERANCES, "soft_cross_entropy.loss"),
                    &s[..1],
                    &[st.loss],
                );
                assert_eq!(s[1] as usize, st.correct, "{case}: correct count");
                check(
                    &case,
                    "soft_cross_entropy.dlogits",
                    tol_in("soft_cross_entropy.dlogits", prec),
                    &dev.get(g_dl),
                    &dl,
                );
            }
        }
    }
}

#[test]
fn drop_path_matches_cpu() {
    let rt = device();
    let mut rng = rng("drop_path");
    // (batch, tokens, dim): odd sizes, one sample past a block, and a 12-block ViT-S row
    for (b, t, d) in [(1, 1, 1), (3, 5, 7), (9, 65, 192), (2, 197, 384)] {
        let n = b * t * d;
        let x = uniform(&mut rng, n, 2.0);
        let f = uniform(&mut rng, n, 2.0);
        let dy = uniform(&mut rng, n, 1.0);
        let p = 0.25;
        // Every other sample dropped (the first kept), so both cases occur at every B > 1.
        let keep: Vec<bool> = (0..b).map(|i| i % 2 == 0).collect();
        let s32: Vec<f32> = cpu::drop_path::drop_path_scales(&keep, p);
        let s64 = widen(&s32);
        let mut want_y = widen(&x);
        cpu::drop_path::drop_path_add(&mut want_y, &widen(&f), &s64);
        let mut want_df = vec![0.0; n];
        cpu::drop_path::drop_path_backward(&mut want_df, &widen(&dy), &s64);

        let case = format!("B={b} T={t} D={d}");
        let mut dev = Dev::new(&rt);
        let (gx, gf, gs, gdy) = (dev.f32(&x), dev.f32(&f), dev.f32(&s32), dev.f32(&dy));
        let y = dev.nan(n);
        kernels::drop_path_add(&*rt, y, gx, gf, gs, b).unwrap();
        check(
            &case,
            "drop_path.y",
            tol(TOLERANCES, "drop_path.y"),
            &dev.get32(y),
            &want_y,
        );
        // In place on the residual stream, as the engine runs it.
        kernels::drop_path_add(&*rt, gx, gx, gf, gs, b).unwrap();
        check(
            &case,
            "drop_path.y (in place)",
            tol(TOLERANCES, "drop_path.y"),
            &dev.get32(gx),
            &want_y,
        );
        for prec in BOTH {
            let df = dev.out(prec, n);
            kernels::drop_path_backward(&*rt, df, gdy, gs, b).unwrap();
            check(
                &format!("{prec} {case}"),
                "drop_path.dbranch",
                tol_in("drop_path.dbranch", prec),
                &dev.get(df),
                &want_df,
            );
        }
    }
    // Shapes the kernel cannot take are refused before launch.
    let mut dev = Dev::new(&rt);
    let (v, s) = (dev.nan(10), dev.nan(3));
    assert!(kernels::drop_path_add(&*rt, v, v, v, s, 3).is_err()); // 10 values, 3 samples
    assert!(kernels::drop_path_backward(&*rt, v.into(), v, s, 0).is_err());
}

#[test]
fn ema_matches_cpu() {
    let rt = device();
    let mut rng = rng("ema");
    let ema_cfg = vitk::optim::EmaConfig::with_warmup(0.9998);
    // Lengths past one block and past the 2048 x 256 threads of the grid-stride launch.
    for n in [1usize, 1000, 600_001] {
        let ema0 = uniform(&mut rng, n, 1.0);
        let mut dev = Dev::new(&rt);
        let (ge, gp, gw) = (dev.f32(&ema0), dev.nan(n), dev.nan(1));
        let mut want = widen(&ema0);
        // Steps 1 (a copy), 2 (w ≈ 0.63: torch's lerp from the far end) and 50 (w < 0.5),
        // each with new parameters (as after an optimizer step).
        for step in [1u64, 2, 50] {
            let params = uniform(&mut rng, n, 1.0);
            let w = ema_cfg.weight_at(step);
            gw.upload(&*rt, &[w]).unwrap();
            gp.upload(&*rt, &params).unwrap();
            kernels::ema_update(&*rt, ge, gp, gw).unwrap();
            cpu::ema::ema_update(&mut want, &widen(&params), w as f64);
            check(
                &format!("n={n} step={step}"),
                "ema.params",
                tol(TOLERANCES, "ema.params"),
                &dev.get32(ge),
                &want,
            );
        }
    }
}
