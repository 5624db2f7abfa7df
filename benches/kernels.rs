//! GPU kernel benchmarks at the `seed` model's shapes (D256 L6 H8 M1024, T=65, batch 128):
//! every kernel timed with CUDA events after warm-up, reported as GB/s (memory-bound kernels)
//! or GFLOP/s (matmuls, attention), then a whole training step of the device engine.
//!     cargo bench --bench kernels
//! Without a CUDA device it says why and exits cleanly. Criterion drives the measurement;
//! each sample is timed with CUDA events (`iter_custom`), not host clocks. Throughput is in
//! bytes for memory-bound kernels and in elements = floating-point operations for the
//! matmuls and attention (criterion's "Gelem/s" reads as GFLOP/s).

use criterion::{Criterion, Throughput};
use std::sync::Arc;
use std::time::Duration;

use vitk::gpu::cuda::CudaRuntime;
use vitk::gpu::kernels::{self as k, AttnDims, LinearEpilogue};
use vitk::gpu::{DView, DeviceBuffer, GpuResult, GpuTrainer, Runtime};
use vitk::model::{init_params, ModelConfig, ParamLayout};
use vitk::optim::AdamWConfig;

const B: usize = 128;

fn buf(rt: &Arc<dyn Runtime>, n: usize, v: f32) -> DeviceBuffer<f32> {
    DeviceBuffer::from_slice(rt, &vec![v; n]).expect("alloc")
}

struct Bench<'a> {
    cuda: &'a CudaRuntime,
    c: Criterion,
}

impl Bench<'_> {
    /// Benches `f` (which enqueues device work); `bytes` moved or `flops` done per call give
    /// the throughput.
    fn run(&mut self, name: &str, bytes: f64, flops: f64, f: &mut dyn FnMut() -> GpuResult<()>) {
        let cuda = self.cuda;
        let mut g = self.c.benchmark_group("kernels");
        g.throughput(if flops > 0.0 {
            Throughput::Elements(flops as u64)
        } else {
            Throughput::Bytes(bytes as u64)
        });
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                // A device failure in a bench is a bug or a broken GPU: stop with its message.
                let ms = cuda
                    .time_ms(1, iters as usize, f)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                Duration::from_secs_f64(ms * 1e-3 * iters as f64)
            })
        });
        g.finish();
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run either way.
    let cuda = match CudaRuntime::new(0) {
        Ok(c) => c,
        Err(e) => {
            println!("kernels bench: no CUDA device ({e}); nothing to time");
            return;
        }
    };
    println!("kernels bench on {}", cuda.describe());
    let cuda = Arc::new(cuda);
    let rt: Arc<dyn Runtime> = cuda.clone();
    let r: &dyn Runtime = &*rt;
    let cfg = ModelConfig::preset("seed").expect("seed preset");
    let (d, m, h, t, n, kk) = (
        cfg.embed_dim,
        cfg.mlp_dim,
        cfg.num_heads,
        cfg.num_tokens(),
        cfg.num_patches(),
        cfg.num_classes,
    );
    let cpp = cfg.patch_dim();
    let rows = B * t;
    let c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let mut bench = Bench { cuda: &cuda, c };
    let f4 = 4.0f64;

    let images = buf(&rt, B * 3 * 32 * 32, 0.1);
    let patches = buf(&rt, B * n * cpp, 0.0);
    bench.run(
        "patch_embed_im2col",
        f4 * 2.0 * patches.len() as f64,
        0.0,
        &mut || k::patch_embed_im2col(r, patches.view(), images.view(), B, 3, 32, 4),
    );

    let x = buf(&rt, rows * m.max(3 * d), 0.01);
    let w = buf(&rt, m.max(3 * d) * m.max(d), 0.01);
    let bias = buf(&rt, m.max(3 * d), 0.0);
    let y = buf(&rt, rows * m.max(3 * d), 0.0);
    let pre = buf(&rt, rows * m, 0.0);
    let xs = |len: usize| x.view().slice(0, len);
    let ws = |len: usize| w.view().slice(0, len);
    let ys = |len: usize| y.view().slice(0, len);
    for (name, ri, i, o, epi) in [
        ("matmul patch_embed (bias)", B * n, cpp, d, 0),
        ("matmul proj (+residual)", rows, d, d, 1),
        ("matmul fc1 (gelu)", rows, d, m, 2),
        ("matmul fc2 (+residual)", rows, m, d, 1),
        ("matmul head", B, d, kk, 0),
    ] {
        let res = buf(&rt, ri * o, 0.0);
        let flops = 2.0 * (ri * i * o) as f64;
        bench.run(name, 0.0, flops, &mut || {
            let e = match epi {
                0 => LinearEpilogue::Bias,
                1 => LinearEpilogue::Residual(res.view()),
                _ => LinearEpilogue::Gelu {
                    pre: pre.view().slice(0, ri * o),
                },
            };
            k::linear_forward(
                r,
                ys(ri * o),
                xs(ri * i),
                ws(o * i),
                bias.view().slice(0, o),
                e,
                ri,
                i,
                o,
            )
        });
        bench.run(&format!("{name} dX"), 0.0, flops, &mut || {
            k::linear_backward_dx(r, xs(ri * i), ys(ri * o), ws(o * i), ri, i, o)
        });
        bench.run(&format!("{name} dW"), 0.0, flops, &mut || {
            k::linear_backward_dw(r, ws(o * i), ys(ri * o), xs(ri * i), ri, i, o)
        });
    }
    bench.run(
        "matmul qkv (head-major)",
        0.0,
        2.0 * (rows * d * 3 * d) as f64,
        &mut || {
            k::qkv_forward(
                r,
                ys(rows * 3 * d),
                xs(rows * d),
                ws(3 * d * d),
                bias.view().slice(0, 3 * d),
                B,
                t,
                h,
                d,
            )
        },
    );
    let scratch = buf(&rt, k::colsum_scratch_len(rows, m), 0.0);
    bench.run(
        "bias grad column sums [R, M]",
        f4 * (rows * m) as f64,
        0.0,
        &mut || {
            k::column_sums_into(
                r,
                bias.view().slice(0, m),
                scratch.view(),
                ys(rows * m),
                rows,
                m,
            )
        },
    );

    let s = AttnDims {
        batch: B,
        heads: h,
        tokens: t,
        head_dim: d / h,
    };
    let hl = rows * d;
    let qkv = buf(&rt, 3 * hl, 0.01);
    let probs = buf(&rt, B * h * t * t, 0.0);
    let ds = buf(&rt, B * h * t * t, 0.0);
    let out = buf(&rt, hl, 0.0);
    let (q, kv, v): (DView, DView, DView) = (
        qkv.view().slice(0, hl),
        qkv.view().slice(hl, hl),
        qkv.view().slice(2 * hl, hl),
    );
    let attn_flops = 4.0 * (B * h * t * t * (d / h)) as f64;
    bench.run("attention forward", 0.0, attn_flops, &mut || {
        k::attention_forward(r, out.view(), probs.view(), q, kv, v, s, true)
    });
    let dqkv = buf(&rt, 3 * hl, 0.0);
    bench.run("attention backward", 0.0, 2.0 * attn_flops, &mut || {
        k::attention_backward(
            r,
            dqkv.view(),
            ds.view(),
            out.view(),
            probs.view(),
            q,
            kv,
            v,
            s,
            true,
        )
    });

    let mean = buf(&rt, rows, 0.0);
    let rstd = buf(&rt, rows, 0.0);
    let lw = buf(&rt, d, 1.0);
    let lb = buf(&rt, d, 0.0);
    bench.run("layernorm forward", f4 * 2.0 * hl as f64, 0.0, &mut || {
        k::layernorm_forward(
            r,
            ys(hl),
            mean.view(),
            rstd.view(),
            xs(hl),
            lw.view(),
            lb.view(),
            d,
        )
    });
    let lns = buf(&rt, k::layernorm_backward_scratch_len(rows, d), 0.0);
    let (dw, db) = (buf(&rt, d, 0.0), buf(&rt, d, 0.0));
    bench.run("layernorm backward", f4 * 4.0 * hl as f64, 0.0, &mut || {
        k::layernorm_backward(
            r,
            ys(hl),
            dw.view(),
            db.view(),
            lns.view(),
            out.view(),
            xs(hl),
            mean.view(),
            rstd.view(),
            lw.view(),
            d,
        )
    });
    bench.run(
        "gelu forward",
        f4 * 2.0 * (rows * m) as f64,
        0.0,
        &mut || k::gelu_forward(r, ys(rows * m), xs(rows * m)),
    );
    bench.run(
        "gelu backward",
        f4 * 3.0 * (rows * m) as f64,
        0.0,
        &mut || k::gelu_backward(r, ys(rows * m), pre.view(), xs(rows * m)),
    );
    let pos = buf(&rt, t * d, 0.0);
    let cls = buf(&rt, d, 0.0);
    bench.run("tokens forward", f4 * 2.0 * hl as f64, 0.0, &mut || {
        k::tokens_forward(r, ys(hl), xs(B * n * d), pos.view(), Some(cls.view()), B, d)
    });
    bench.run("tokens backward", f4 * 2.0 * hl as f64, 0.0, &mut || {
        k::tokens_backward(r, ys(B * n * d), pos.view(), Some(cls.view()), xs(hl), B, d)
    });
    bench.run("pool mean forward", f4 * hl as f64, 0.0, &mut || {
        k::pool_forward(r, ys(B * d), xs(hl), B, t, d, true)
    });
    bench.run("pool backward", f4 * hl as f64, 0.0, &mut || {
        k::pool_backward(r, ys(hl), xs(B * d), B, t, d, true)
    });
    let labels = DeviceBuffer::from_slice(&rt, &vec![3u32; B]).expect("labels");
    let stats = buf(&rt, 4, 0.0);
    bench.run(
        "cross_entropy",
        f4 * 2.0 * (B * kk) as f64,
        0.0,
        &mut || k::cross_entropy(r, stats.view(), ys(B * kk), xs(B * kk), &labels, B, kk, 0.1),
    );

    let layout = ParamLayout::new(&cfg);
    let np = layout.len;
    let (p, g, mm, vv) = (
        buf(&rt, np, 0.01),
        buf(&rt, np, 0.01),
        buf(&rt, np, 0.0),
        buf(&rt, np, 0.0),
    );
    let mask = DeviceBuffer::from_slice(&rt, &vec![1u8; np]).expect("mask");
    let partial = DeviceBuffer::<f64>::new(&rt, k::NORM_BLOCKS).expect("partial");
    bench.run("grad norm + clip coef", f4 * np as f64, 0.0, &mut || {
        k::grad_norm_clip(r, stats.view(), &partial, g.view(), 1.0)
    });
    let step = k::AdamWStep::new(&AdamWConfig::default(), 1, 1e-3);
    bench.run("adamw", 29.0 * np as f64, 0.0, &mut || {
        k::adamw(
            r,
            p.view(),
            mm.view(),
            vv.view(),
            g.view(),
            &mask,
            Some(stats.view()),
            step,
        )
    });

    // The whole step, host round trip of the statistics included.
    let params = init_params(&cfg, &layout, 0);
    match GpuTrainer::new(rt.clone(), &cfg, B, &params, AdamWConfig::default()) {
        Ok(mut e) => {
            let imgs = vec![0.1f32; B * 3 * 32 * 32];
            let lbl: Vec<u32> = (0..B as u32).map(|i| i % 10).collect();
            let mut step = || {
                e.try_train_step(&imgs, &lbl, 1e-3, 0.1, Some(1.0))
                    .map(|_| ())
            };
            // Throughput in elements = images.
            let mut g = bench.c.benchmark_group("train_step");
            g.throughput(Throughput::Elements(B as u64));
            g.bench_function("seed, batch 128", |b| {
                b.iter_custom(|iters| {
                    let ms = cuda
                        .time_ms(1, iters as usize, &mut step)
                        .unwrap_or_else(|e| panic!("train step: {e}"));
                    Duration::from_secs_f64(ms * 1e-3 * iters as f64)
                })
            });
            g.finish();
        }
        Err(e) => println!("train step: cannot build the engine: {e}"),
    }
    bench.c.final_summary();
}
