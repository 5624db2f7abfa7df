//! Criterion benches of the CPU engine at `seed` shapes (batch 128): every op forward and
//! backward, and a whole training step (forward, loss, backward, AdamW).
//!
//!     cargo bench --bench cpu_ops                # everything
//!     cargo bench --bench cpu_ops -- train_step  # one group

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use vitk::cpu::attention::{attention_backward, attention_forward, AttnShape};
use vitk::cpu::gelu::{gelu_backward, gelu_forward};
use vitk::cpu::layernorm::{layernorm_backward, layernorm_forward};
use vitk::cpu::linear::{linear_backward, linear_forward};
use vitk::cpu::loss::cross_entropy;
use vitk::cpu::patch_embed::im2col;
use vitk::cpu::pooling::{pool_backward, pool_forward};
use vitk::cpu::tokens::{tokens_backward, tokens_forward};
use vitk::cpu::AdamW;
use vitk::cpu::CpuEngine;
use vitk::model::{init_params, ModelConfig, ParamLayout, Pool};
use vitk::optim::{AdamWConfig, ParamGroups};

const BATCH: usize = 128;

fn filled(n: usize, seed: u32) -> Vec<f32> {
    // Cheap deterministic values in [-1, 1); benches need data, not statistics.
    (0..n as u32)
        .map(|i| ((i.wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 8388608.0) - 1.0)
        .collect()
}

fn ops(c: &mut Criterion) {
    let cfg = ModelConfig::preset("seed").expect("preset");
    let (t, d, m, h) = (cfg.num_tokens(), cfg.embed_dim, cfg.mlp_dim, cfg.num_heads);
    let r = BATCH * t;
    let mut g = c.benchmark_group("ops");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    let images = filled(BATCH * 3 * 32 * 32, 1);
    let mut patches = vec![0.0; BATCH * cfg.num_patches() * cfg.patch_dim()];
    g.throughput(Throughput::Bytes((images.len() * 8) as u64));
    g.bench_function("im2col", |b| {
        b.iter(|| im2col(&mut patches, &images, BATCH, 3, 32, 4))
    });

    for (name, i, o) in [
        ("qkv", d, 3 * d),
        ("proj", d, d),
        ("fc1", d, m),
        ("fc2", m, d),
    ] {
        let x = filled(r * i, 2);
        let w = filled(o * i, 3);
        let bias = filled(o, 4);
        let mut y = vec![0.0; r * o];
        g.throughput(Throughput::Elements((2 * r * i * o) as u64)); // flops
        g.bench_function(BenchmarkId::new("linear_forward", name), |b| {
            b.iter(|| linear_forward(&mut y, &x, &w, Some(&bias), r, i, o))
        });
        let (mut dx, mut dw, mut db) = (vec![0.0; r * i], vec![0.0; o * i], vec![0.0; o]);
        g.throughput(Throughput::Elements((4 * r * i * o) as u64));
        g.bench_function(BenchmarkId::new("linear_backward", name), |b| {
            b.iter(|| {
                linear_backward(
                    Some(&mut dx),
                    false,
                    &mut dw,
                    Some(&mut db),
                    &y,
                    &x,
                    &w,
                    r,
                    i,
                    o,
                )
            })
        });
    }

    let x = filled(r * d, 5);
    let (w, bias) = (filled(d, 6), filled(d, 7));
    let (mut y, mut mean, mut rstd) = (vec![0.0; r * d], vec![0.0; r], vec![0.0; r]);
    g.throughput(Throughput::Bytes((r * d * 8) as u64));
    g.bench_function("layernorm_forward", |b| {
        b.iter(|| layernorm_forward(&mut y, &mut mean, &mut rstd, &x, &w, &bias, d))
    });
    let (mut dx, mut dw, mut db) = (vec![0.0; r * d], vec![0.0; d], vec![0.0; d]);
    g.throughput(Throughput::Bytes((r * d * 16) as u64));
    g.bench_function("layernorm_backward", |b| {
        b.iter(|| layernorm_backward(&mut dx, &mut dw, &mut db, &y, &x, &mean, &rstd, &w, d))
    });

    let hx = filled(r * m, 8);
    let mut hy = vec![0.0; r * m];
    g.throughput(Throughput::Bytes((r * m * 8) as u64));
    g.bench_function("gelu_forward", |b| b.iter(|| gelu_forward(&mut hy, &hx)));
    let mut hdx = vec![0.0; r * m];
    g.throughput(Throughput::Bytes((r * m * 12) as u64));
    g.bench_function("gelu_backward", |b| {
        b.iter(|| gelu_backward(&mut hdx, &hy, &hx))
    });

    let s = AttnShape {
        batch: BATCH,
        tokens: t,
        heads: h,
        head_dim: d / h,
    };
    let qkv = filled(r * 3 * d, 9);
    let (mut out, mut probs) = (vec![0.0; r * d], vec![0.0; BATCH * h * t * t]);
    g.throughput(Throughput::Elements((4 * BATCH * t * t * d) as u64));
    g.bench_function("attention_forward", |b| {
        b.iter(|| attention_forward(&mut out, &mut probs, &qkv, s))
    });
    let mut dqkv = vec![0.0; r * 3 * d];
    g.throughput(Throughput::Elements((8 * BATCH * t * t * d) as u64));
    g.bench_function("attention_backward", |b| {
        b.iter(|| attention_backward(&mut dqkv, &out, &probs, &qkv, s))
    });

    let patch_out = filled(BATCH * cfg.num_patches() * d, 11);
    let pos = filled(t * d, 12);
    let cls = filled(d, 13);
    let mut x = vec![0.0; r * d];
    g.throughput(Throughput::Bytes((r * d * 8) as u64));
    g.bench_function("tokens_forward", |b| {
        b.iter(|| tokens_forward(&mut x, &patch_out, &pos, Some(&cls), d))
    });
    let (mut dpatch, mut dpos, mut dcls) =
        (vec![0.0; patch_out.len()], vec![0.0; t * d], vec![0.0; d]);
    g.bench_function("tokens_backward", |b| {
        b.iter(|| tokens_backward(&mut dpatch, &mut dpos, Some(&mut dcls), &x, d))
    });
    let mut pooled = vec![0.0; BATCH * d];
    g.bench_function("mean_pool_forward", |b| {
        b.iter(|| pool_forward(&mut pooled, &x, t, d, Pool::Mean))
    });
    g.bench_function("mean_pool_backward", |b| {
        b.iter(|| pool_backward(&mut x, &pooled, t, d, Pool::Mean))
    });

    let logits = filled(BATCH * 10, 14);
    let labels: Vec<u32> = (0..BATCH as u32).map(|i| i % 10).collect();
    let mut dlogits = vec![0.0; BATCH * 10];
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("cross_entropy", |b| {
        b.iter(|| cross_entropy(&logits, &labels, 10, 0.1, Some(&mut dlogits)))
    });

    let layout = ParamLayout::new(&cfg);
    let mut params = init_params(&cfg, &layout, 0);
    let grads = filled(layout.len, 15);
    let mut opt = AdamW::new(AdamWConfig::default(), layout.len);
    let groups = ParamGroups::all(&layout);
    g.throughput(Throughput::Bytes((layout.len * 4 * 7) as u64)); // p, m, v read+write, g read
    g.bench_function("adamw_update", |b| {
        b.iter(|| opt.update(&groups, &mut params, &grads, 1e-3))
    });
    g.finish();
}

fn train_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("train_step");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(BATCH as u64)); // images
    {
        let preset = "seed";
        let cfg = ModelConfig::preset(preset).expect("preset");
        let layout = ParamLayout::new(&cfg);
        let mut params = init_params(&cfg, &layout, 0);
        let mut grads = vec![0.0f32; layout.len];
        let mut opt = AdamW::new(AdamWConfig::default(), layout.len);
        let groups = ParamGroups::all(&layout);
        let mut engine = CpuEngine::<f32>::new(&cfg, BATCH).expect("valid config");
        let images = filled(BATCH * 3 * 32 * 32, 10);
        let labels: Vec<u32> = (0..BATCH as u32).map(|i| i % 10).collect();
        g.bench_function(preset, |b| {
            b.iter(|| {
                engine.forward(&params, &images);
                engine.loss(&labels, 0.1);
                grads.fill(0.0);
                engine.backward(&params, &mut grads);
                opt.update(&groups, &mut params, &grads, 1e-3);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, ops, train_step);
criterion_main!(benches);
