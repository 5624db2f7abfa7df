//! GPU kernel benchmarks, timed with CUDA events after warm-up:
//! 1. every matmul of a training step (forward, dX, dW of each linear layer) at the `seed`,
//!    `small` and ViT-Ti/16-at-224 shapes, batch 128, in fp32 and bf16, as a table: time,
//!    TFLOP/s, the fraction of the H200's dense bf16 peak (990 TFLOP/s; fp32 rows also against
//!    its 67 TFLOP/s fp32 peak), and cuBLASLt at the same shapes and layouts when libcublasLt
//!    loads (vitk/cuBLASLt > 1: vitk is slower; vitk's time includes its fused epilogue);
//! 2. the other kernels at `seed` shapes (criterion; GB/s or GFLOP/s);
//! 3. a whole training step of the device engine in both precisions (images/s).
//!
//! Run: `cargo bench --bench kernels`.
//! Without a CUDA device it says why and exits cleanly. FLOPs and bytes come from the
//! launchers' own cost figures where a kernel has one.

use criterion::{Criterion, Throughput};
use half::bf16;
use std::sync::Arc;
use std::time::Duration;

use vitk::engine::Precision;
use vitk::gpu::cublaslt::{CublasLt, Product};
use vitk::gpu::cuda::CudaRuntime;
use vitk::gpu::kernels::{self as k, AttnDims, LinearEpilogue, Operand};
use vitk::gpu::{DeviceBuffer, GpuResult, GpuTrainer, Runtime};
use vitk::model::{init_params, ImageSize, ModelConfig, ParamLayout, Pool};
use vitk::optim::{device_hyper, AdamWConfig, FineTuning, ParamGroups};

const B: usize = 128;
/// Dense bf16 and plain fp32 peaks of an H200 SXM (vendor datasheet).
const PEAK_BF16: f64 = 990e12;
const PEAK_FP32: f64 = 67e12;

/// Device memory for the benches: fp32 and bf16 buffers of a constant value.
struct Mem {
    rt: Arc<dyn Runtime>,
}

impl Mem {
    fn f32(&self, n: usize, v: f32) -> DeviceBuffer<f32> {
        DeviceBuffer::from_slice(&self.rt, &vec![v; n.max(1)]).expect("alloc")
    }
    fn bf16(&self, n: usize, v: f32) -> DeviceBuffer<bf16> {
        DeviceBuffer::from_slice(&self.rt, &vec![bf16::from_f32(v); n.max(1)]).expect("alloc")
    }
}

/// An operand of `n` elements in precision `p`, kept alive by `keep`.
fn operand(
    mem: &Mem,
    p: Precision,
    n: usize,
    v: f32,
    keep: &mut (Vec<DeviceBuffer<f32>>, Vec<DeviceBuffer<bf16>>),
) -> Operand {
    match p {
        Precision::Fp32 => {
            let b = mem.f32(n, v);
            let o = Operand::F32(b.view().slice(0, n));
            keep.0.push(b);
            o
        }
        Precision::Bf16 => {
            let b = mem.bf16(n, v);
            let o = Operand::Bf16(b.view().slice(0, n));
            keep.1.push(b);
            o
        }
    }
}

/// One matmul of a training step.
struct Gemm {
    layer: &'static str,
    product: Product,
    m: usize,
    n: usize,
    k: usize,
    epilogue: &'static str,
}

/// The matmuls of one training step of `cfg` at batch `b`: forward, dX and dW of each layer.
fn step_gemms(cfg: &ModelConfig, b: usize) -> Vec<Gemm> {
    let (d, mlp, kk) = (cfg.embed_dim, cfg.mlp_dim, cfg.num_classes);
    let (r, np, cpp) = (b * cfg.num_tokens(), b * cfg.num_patches(), cfg.patch_dim());
    let g = |layer, product, m, n, k, epilogue| Gemm {
        layer,
        product,
        m,
        n,
        k,
        epilogue,
    };
    use Product::{Dw, Dx, Forward};
    vec![
        g("patch_embed", Forward, np, d, cpp, "bias"),
        g("patch_embed", Dw, d, cpp, np, "+= (split-K, bias)"),
        g("qkv", Forward, r, 3 * d, d, "bias, head-major"),
        g("qkv", Dx, r, d, 3 * d, ""),
        g("qkv", Dw, 3 * d, d, r, "+= (split-K, bias)"),
        g("proj", Forward, r, d, d, "bias, +residual"),
        g("proj", Dx, r, d, d, ""),
        g("proj", Dw, d, d, r, "+= (split-K, bias)"),
        g("fc1", Forward, r, mlp, d, "bias, gelu"),
        g("fc1", Dx, r, d, mlp, ""),
        g("fc1", Dw, mlp, d, r, "+= (split-K, bias)"),
        g("fc2", Forward, r, d, mlp, "bias, +residual"),
        g("fc2", Dx, r, mlp, d, "x gelu'"),
        g("fc2", Dw, d, mlp, r, "+= (split-K, bias)"),
        g("head", Forward, b, kk, d, "bias"),
        g("head", Dx, b, d, kk, ""),
        g("head", Dw, kk, d, b, "+= (bias)"),
    ]
}

/// Launches vitk's kernel for one of the step's matmuls, with the epilogue the engine uses.
fn vitk_gemm(rt: &dyn Runtime, g: &Gemm, bufs: &GemmBufs) -> GpuResult<()> {
    let (m, n, kd) = (g.m, g.n, g.k);
    match (g.product, g.layer) {
        (Product::Forward, "qkv") => {
            let (t, h) = bufs.qkv;
            k::qkv_forward(
                rt,
                bufs.c_low(m * n),
                bufs.a(m * kd),
                bufs.b(n * kd),
                bufs.bias(n),
                m / t,
                t,
                h,
                n / 3,
            )
        }
        (Product::Forward, "proj" | "fc2") => k::linear_forward(
            rt,
            Operand::F32(bufs.c32.view().slice(0, m * n)),
            bufs.a(m * kd),
            bufs.b(n * kd),
            bufs.bias(n),
            LinearEpilogue::Residual(bufs.res.view().slice(0, m * n)),
            m,
            kd,
            n,
        ),
        (Product::Forward, "fc1") => k::linear_forward(
            rt,
            bufs.c_low(m * n),
            bufs.a(m * kd),
            bufs.b(n * kd),
            bufs.bias(n),
            LinearEpilogue::Gelu {
                pre: bufs.aux_low(m * n),
            },
            m,
            kd,
            n,
        ),
        (Product::Forward, _) => k::linear_forward(
            rt,
            Operand::F32(bufs.c32.view().slice(0, m * n)),
            bufs.a(m * kd),
            bufs.b(n * kd),
            bufs.bias(n),
            LinearEpilogue::Bias,
            m,
            kd,
            n,
        ),
        (Product::Dx, layer) => {
            // dX [M, N] = dY [M, K] · W [K, N]; fc2's dX goes to bf16 (fc1's dY) with gelu'.
            let gelu = (layer == "fc2").then(|| bufs.aux_low(m * n));
            let out = if gelu.is_some() || layer == "proj" {
                bufs.c_low(m * n)
            } else {
                Operand::F32(bufs.c32.view().slice(0, m * n))
            };
            k::linear_backward_dx(rt, out, bufs.a(m * kd), bufs.b(kd * n), gelu, m, n, kd)
        }
        (Product::Dw, _) => k::linear_backward_dw(
            rt,
            bufs.c32.view().slice(0, m * n),
            Some(bufs.bias_grad.view().slice(0, m)),
            bufs.ws.view(),
            bufs.a(kd * m),
            bufs.b(kd * n),
            kd,
            n,
            m,
        ),
    }
}

/// Operands large enough for every matmul of a model, in one precision.
struct GemmBufs {
    precision: Precision,
    a32: DeviceBuffer<f32>,
    b32: DeviceBuffer<f32>,
    a16: DeviceBuffer<bf16>,
    b16: DeviceBuffer<bf16>,
    c32: DeviceBuffer<f32>,
    c16: DeviceBuffer<bf16>,
    aux32: DeviceBuffer<f32>,
    aux16: DeviceBuffer<bf16>,
    res: DeviceBuffer<f32>,
    bias_v: DeviceBuffer<f32>,
    bias_grad: DeviceBuffer<f32>,
    ws: DeviceBuffer<f32>,
    /// (tokens, heads) of the QKV scatter.
    qkv: (usize, usize),
}

impl GemmBufs {
    fn new(mem: &Mem, precision: Precision, gemms: &[Gemm], cfg: &ModelConfig) -> Self {
        let most = |f: &dyn Fn(&Gemm) -> usize| gemms.iter().map(f).max().unwrap_or(1);
        let (a, b, c) = (
            most(&|g| g.m * g.k),
            most(&|g| g.k * g.n),
            most(&|g| g.m * g.n),
        );
        let ws = gemms
            .iter()
            .filter(|g| g.product == Product::Dw)
            .map(|g| k::splitk_workspace_len(&*mem.rt, precision, g.k, g.n, g.m))
            .max()
            .unwrap_or(0);
        let low = |n| if precision == Precision::Bf16 { n } else { 1 };
        let high = |n| if precision == Precision::Fp32 { n } else { 1 };
        GemmBufs {
            precision,
            a32: mem.f32(high(a), 0.01),
            b32: mem.f32(high(b), 0.01),
            a16: mem.bf16(low(a), 0.01),
            b16: mem.bf16(low(b), 0.01),
            c32: mem.f32(c, 0.0),
            c16: mem.bf16(low(c), 0.0),
            aux32: mem.f32(high(c), 0.1),
            aux16: mem.bf16(low(c), 0.1),
            res: mem.f32(c, 0.0),
            bias_v: mem.f32(most(&|g| g.n.max(g.m)), 0.0),
            bias_grad: mem.f32(most(&|g| g.m), 0.0),
            ws: mem.f32(ws, 0.0),
            qkv: (cfg.num_tokens(), cfg.num_heads),
        }
    }
    fn a(&self, n: usize) -> Operand {
        match self.precision {
            Precision::Fp32 => Operand::F32(self.a32.view().slice(0, n)),
            Precision::Bf16 => Operand::Bf16(self.a16.view().slice(0, n)),
        }
    }
    fn b(&self, n: usize) -> Operand {
        match self.precision {
            Precision::Fp32 => Operand::F32(self.b32.view().slice(0, n)),
            Precision::Bf16 => Operand::Bf16(self.b16.view().slice(0, n)),
        }
    }
    fn c_low(&self, n: usize) -> Operand {
        match self.precision {
            Precision::Fp32 => Operand::F32(self.c32.view().slice(0, n)),
            Precision::Bf16 => Operand::Bf16(self.c16.view().slice(0, n)),
        }
    }
    fn aux_low(&self, n: usize) -> Operand {
        match self.precision {
            Precision::Fp32 => Operand::F32(self.aux32.view().slice(0, n)),
            Precision::Bf16 => Operand::Bf16(self.aux16.view().slice(0, n)),
        }
    }
    fn bias(&self, n: usize) -> vitk::gpu::DView {
        self.bias_v.view().slice(0, n)
    }
}

/// The matmul table of one model in one precision.
fn matmul_table(
    cuda: &CudaRuntime,
    rt: &Arc<dyn Runtime>,
    lt: Option<&CublasLt>,
    model: &str,
    cfg: &ModelConfig,
) {
    let mem = Mem { rt: rt.clone() };
    let gemms = step_gemms(cfg, B);
    for p in [Precision::Fp32, Precision::Bf16] {
        let bufs = GemmBufs::new(&mem, p, &gemms, cfg);
        println!(
            "\n{model} (D{} L{} H{} M{} T{}), batch {B}, {p}:",
            cfg.embed_dim,
            cfg.depth,
            cfg.num_heads,
            cfg.mlp_dim,
            cfg.num_tokens()
        );
        println!(
            "  {:<12} {:<8} {:>7} {:>7} {:>7}  {:>9} {:>8} {:>9} {:>10} {:>9}  epilogue",
            "layer", "product", "M", "N", "K", "ms", "TFLOP/s", "% bf16pk", "cuBLASLt", "vitk/Lt"
        );
        let (mut total_ms, mut total_lt, mut total_flops) = (0.0, 0.0, 0.0);
        for g in &gemms {
            let flops = 2.0 * (g.m * g.n * g.k) as f64;
            let ms = match cuda.time_ms(3, 20, &mut || vitk_gemm(&**rt, g, &bufs)) {
                Ok(ms) => ms,
                Err(e) => {
                    println!("  {:<12} {:?}: {e}", g.layer, g.product);
                    continue;
                }
            };
            let lt_ms = lt.and_then(|lt| {
                let run = &mut || match p {
                    Precision::Fp32 => lt.matmul(
                        g.product,
                        p,
                        bufs.c32.view(),
                        bufs.a32.view(),
                        bufs.b32.view(),
                        (g.m, g.n, g.k),
                    ),
                    Precision::Bf16 => lt.matmul(
                        g.product,
                        p,
                        bufs.c32.view(),
                        bufs.a16.view(),
                        bufs.b16.view(),
                        (g.m, g.n, g.k),
                    ),
                };
                cuda.time_ms(3, 20, run)
                    .map_err(|e| println!("  cuBLASLt {}: {e}", g.layer))
                    .ok()
            });
            total_ms += ms;
            total_flops += flops;
            let tflops = flops / (ms * 1e-3) / 1e12;
            let peak = 100.0 * tflops * 1e12 / PEAK_BF16;
            let (lt_col, ratio) = match lt_ms {
                Some(l) => {
                    total_lt += l;
                    (format!("{l:.4}"), format!("{:.2}", ms / l))
                }
                None => ("-".into(), "-".into()),
            };
            println!(
                "  {:<12} {:<8} {:>7} {:>7} {:>7}  {:>9.4} {:>8.1} {:>8.1}% {:>10} {:>9}  {}",
                g.layer,
                format!("{:?}", g.product),
                g.m,
                g.n,
                g.k,
                ms,
                tflops,
                peak,
                lt_col,
                ratio,
                g.epilogue
            );
        }
        let tf = total_flops / (total_ms * 1e-3) / 1e12;
        let fp32_note = if p == Precision::Fp32 {
            format!(", {:.1}% of the fp32 peak", 100.0 * tf * 1e12 / PEAK_FP32)
        } else {
            String::new()
        };
        let lt_note = if total_lt > 0.0 {
            format!(
                ", cuBLASLt {total_lt:.3} ms (vitk/cuBLASLt {:.2})",
                total_ms / total_lt
            )
        } else {
            String::new()
        };
        println!(
            "  all matmuls of a step: {total_ms:.3} ms, {tf:.1} TFLOP/s ({:.1}% of the bf16 peak{fp32_note}){lt_note}",
            100.0 * tf * 1e12 / PEAK_BF16
        );
    }
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

/// ViT-Ti/16 at 224 x 224 (timm's vit_tiny_patch16_224), 10 classes.
fn vit_ti_224() -> ModelConfig {
    ModelConfig {
        image_size: ImageSize::square(224),
        patch_size: 16,
        in_chans: 3,
        num_classes: 10,
        embed_dim: 192,
        depth: 12,
        num_heads: 3,
        mlp_dim: 768,
        pool: Pool::Cls,
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
    let lt = match CublasLt::new(&cuda) {
        Ok(lt) => Some(lt),
        Err(e) => {
            println!("cuBLASLt unavailable ({e}): no reference column");
            None
        }
    };
    let seed = ModelConfig::preset("seed").expect("seed preset");
    let small = ModelConfig::preset("small").expect("small preset");
    for (name, cfg) in [
        ("seed", &seed),
        ("small", &small),
        ("ViT-Ti/16 at 224", &vit_ti_224()),
    ] {
        matmul_table(&cuda, &rt, lt.as_ref(), name, cfg);
    }
    other_kernels(&cuda, &rt, &seed);
}

/// Every other kernel at `seed` shapes, then the whole step, in both precisions.
fn other_kernels(cuda: &Arc<CudaRuntime>, rt: &Arc<dyn Runtime>, cfg: &ModelConfig) {
    let r: &dyn Runtime = &**rt;
    let mem = Mem { rt: rt.clone() };
    let (d, h, t, n, kk) = (
        cfg.embed_dim,
        cfg.num_heads,
        cfg.num_tokens(),
        cfg.num_patches(),
        cfg.num_classes,
    );
    let (cpp, rows) = (cfg.patch_dim(), B * t);
    let c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let mut bench = Bench { cuda, c };
    let f4 = 4.0f64;
    let hl = rows * d;
    let images = mem.f32(B * 3 * 32 * 32, 0.1);
    let x32 = mem.f32(rows * cfg.mlp_dim.max(3 * d), 0.01);
    let y32 = mem.f32(rows * cfg.mlp_dim.max(3 * d), 0.0);
    let xs = |len: usize| x32.view().slice(0, len);
    let ys = |len: usize| y32.view().slice(0, len);
    for p in [Precision::Fp32, Precision::Bf16] {
        let mut keep = (vec![], vec![]);
        let eb = if p == Precision::Bf16 { 2.0 } else { 4.0 };
        let patches = operand(&mem, p, B * n * cpp, 0.0, &mut keep);
        bench.run(
            &format!("{p} patch_embed_im2col"),
            (4.0 + eb) * patches.len() as f64,
            0.0,
            &mut || {
                k::patch_embed_im2col(r, patches, images.view(), B, 3, ImageSize::square(32), 4)
            },
        );
        let s = AttnDims {
            batch: B,
            heads: h,
            tokens: t,
            head_dim: d / h,
        };
        let qkv = operand(&mem, p, 3 * hl, 0.01, &mut keep);
        let (q, kv, v) = (qkv.slice(0, hl), qkv.slice(hl, hl), qkv.slice(2 * hl, hl));
        let lse = mem.f32(B * h * t, 0.0);
        let rowdot = mem.f32(B * h * t, 0.0);
        let out = operand(&mem, p, hl, 0.0, &mut keep);
        let attn_flops = 4.0 * (B * h * t * t * (d / h)) as f64;
        bench.run(
            &format!("{p} attention forward"),
            0.0,
            attn_flops,
            &mut || k::attention_forward(r, out, lse.view(), q, kv, v, s),
        );
        let dqkv = operand(&mem, p, 3 * hl, 0.0, &mut keep);
        bench.run(
            &format!("{p} attention backward"),
            0.0,
            3.5 * attn_flops,
            &mut || {
                k::attention_backward(r, dqkv, rowdot.view(), out, out, lse.view(), q, kv, v, s)
            },
        );
        let (mean, rstd, lw, lb) = (
            mem.f32(rows, 0.0),
            mem.f32(rows, 0.0),
            mem.f32(d, 1.0),
            mem.f32(d, 0.0),
        );
        let ln_out = operand(&mem, p, hl, 0.0, &mut keep);
        bench.run(
            &format!("{p} layernorm forward"),
            (4.0 + eb) * hl as f64,
            0.0,
            &mut || {
                k::layernorm_forward(
                    r,
                    ln_out,
                    mean.view(),
                    rstd.view(),
                    xs(hl),
                    lw.view(),
                    lb.view(),
                    d,
                )
            },
        );
        let lns = mem.f32(k::layernorm_backward_scratch_len(rows, d), 0.0);
        let (dw, db) = (mem.f32(d, 0.0), mem.f32(d, 0.0));
        let low = mem.bf16(hl, 0.0);
        let dx_low = (p == Precision::Bf16).then(|| low.view());
        bench.run(
            &format!("{p} layernorm backward"),
            f4 * 4.0 * hl as f64,
            0.0,
            &mut || {
                k::layernorm_backward(
                    r,
                    ys(hl),
                    dx_low,
                    dw.view(),
                    db.view(),
                    lns.view(),
                    xs(hl),
                    xs(hl),
                    mean.view(),
                    rstd.view(),
                    lw.view(),
                    d,
                )
            },
        );
        let (pos, cls) = (mem.f32(t * d, 0.0), mem.f32(d, 0.0));
        let dpatch = operand(&mem, p, B * n * d, 0.0, &mut keep);
        bench.run(
            &format!("{p} tokens backward"),
            f4 * 2.0 * hl as f64,
            0.0,
            &mut || k::tokens_backward(r, dpatch, pos.view(), Some(cls.view()), xs(hl), B, d),
        );
        bench.run(
            &format!("{p} pool backward"),
            f4 * hl as f64,
            0.0,
            &mut || k::pool_backward(r, ys(hl), dx_low, xs(B * d), B, t, d, true),
        );
        let labels = DeviceBuffer::from_slice(rt, &vec![3u32; B]).expect("labels");
        let stats = mem.f32(4, 0.0);
        let dl = operand(&mem, p, B * kk, 0.0, &mut keep);
        bench.run(
            &format!("{p} cross_entropy"),
            f4 * 2.0 * (B * kk) as f64,
            0.0,
            &mut || k::cross_entropy(r, stats.view(), dl, xs(B * kk), &labels, B, kk, 0.1),
        );
    }
    bench.run("tokens forward", f4 * 2.0 * hl as f64, 0.0, &mut || {
        let pos = x32.view().slice(0, t * d);
        k::tokens_forward(
            r,
            ys(hl),
            xs(B * n * d),
            pos,
            Some(x32.view().slice(0, d)),
            B,
            d,
        )
    });
    bench.run("pool mean forward", f4 * hl as f64, 0.0, &mut || {
        k::pool_forward(r, ys(B * d), xs(hl), B, t, d, true)
    });

    let layout = ParamLayout::new(cfg);
    let np = layout.len;
    let (p, g, mm, vv) = (
        mem.f32(np, 0.01),
        mem.f32(np, 0.01),
        mem.f32(np, 0.0),
        mem.f32(np, 0.0),
    );
    let p_low = mem.bf16(np, 0.0);
    let groups = ParamGroups::all(&layout);
    let table = DeviceBuffer::from_slice(rt, &groups.group_table()).expect("group table");
    let partial = DeviceBuffer::<f64>::new(rt, k::NORM_BLOCKS).expect("partial");
    let stats = mem.f32(4, 0.0);
    bench.run("grad norm + clip coef", f4 * np as f64, 0.0, &mut || {
        k::grad_norm_clip(r, stats.view(), &partial, g.view(), 1.0)
    });
    let hyper = DeviceBuffer::from_slice(
        rt,
        &device_hyper(&AdamWConfig::default(), 1, 1e-3, &groups.groups),
    )
    .expect("AdamW scalars");
    bench.run("adamw (+ bf16 copies)", 32.0 * np as f64, 0.0, &mut || {
        k::adamw(
            r,
            p.view(),
            Some(p_low.view()),
            mm.view(),
            vv.view(),
            g.view(),
            table.view(),
            groups.groups.len(),
            Some(stats.view()),
            hyper.view(),
        )
    });

    // Whole steps queued as training queues them (one graph replay each, statistics read one
    // step late), timed between two events.
    let params = init_params(cfg, &layout, 0);
    for precision in [Precision::Fp32, Precision::Bf16] {
        match GpuTrainer::new(
            rt.clone(),
            cfg,
            B,
            &params,
            AdamWConfig::default(),
            precision,
            FineTuning::default(),
        ) {
            Ok(mut e) => {
                let imgs = vec![0.1f32; B * 3 * 32 * 32];
                let lbl: Vec<u32> = (0..B as u32).map(|i| i % 10).collect();
                let mut step = || e.submit_step(&imgs, &lbl, 1e-3, 0.1, Some(1.0)).map(|_| ());
                // Throughput in elements = images.
                let mut g = bench.c.benchmark_group("train_step");
                g.throughput(Throughput::Elements(B as u64));
                g.bench_function(format!("seed, batch 128, {precision}"), |b| {
                    b.iter_custom(|iters| {
                        let ms = cuda
                            .time_ms(1, iters as usize, &mut step)
                            .unwrap_or_else(|e| panic!("train step: {e}"));
                        Duration::from_secs_f64(ms * 1e-3 * iters as f64)
                    })
                });
                g.finish();
            }
            Err(e) => println!("train step ({precision}): cannot build the engine: {e}"),
        }
    }
    bench.c.final_summary();
}
