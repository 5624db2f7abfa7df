//! `vitk profile`: warm-up plus timed training steps of the device engine on random data, then
//! one row per kernel (calls per step, FLOPs, bytes, device time per step from CUDA events,
//! achieved TFLOP/s and GB/s, the fraction of the H200 roofline) and a summary line. Without a
//! GPU (`--device dry`, the default then) the engine's launch sequence is recorded without
//! running anything, and the table gives the counts and the roofline model's lower bound: a
//! model of an H200, not a measurement. `--device emu` runs the steps on the emulator (slow).

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use rand::{Rng, SeedableRng};
use vitk::engine::Precision;
use vitk::gpu::cuda::CudaRuntime;
use vitk::gpu::emu::EmuRuntime;
use vitk::gpu::profile::{h200, DryRuntime, Profile, Profiler};
use vitk::gpu::{GpuTrainer, Runtime};
use vitk::model::{init_params, ParamLayout};
use vitk::optim::{AdamWConfig, FineTuning};

use super::model_args::ModelArgs;
use super::parse::whole;
use vitk::model::{DimNames, ModelConfig};
use vitk::train::config::MODEL_FLAGS;
use vitk::train::memory::{self, EngineKind};

#[derive(Args)]
pub struct ProfileArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Classes of the model's head, 1..=65536.
    #[arg(long, default_value_t = 10, value_parser = whole, allow_negative_numbers = true)]
    classes: usize,
    /// Batch size, at least 1.
    #[arg(long, default_value_t = 128, value_parser = whole, allow_negative_numbers = true)]
    batch_size: usize,
    /// Arithmetic: fp32 or bf16 [default: bf16 on CUDA, fp32 elsewhere].
    #[arg(long)]
    precision: Option<Precision>,
    /// auto (CUDA device 0, else dry), cuda[:N], emu (the emulator: runs, slowly), dry (records
    /// the launch sequence without running it).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Timed steps, 1..=100000.
    #[arg(long, default_value_t = 5, value_parser = whole, allow_negative_numbers = true)]
    steps: usize,
    /// Untimed steps before them, 0..=100000.
    #[arg(long, default_value_t = 2, value_parser = whole, allow_negative_numbers = true)]
    warmup: usize,
}

/// Most steps and warm-up steps.
const MAX_STEPS: usize = 100_000;

/// The flags naming each dimension (`--classes` sets the head).
const PROFILE_FLAGS: DimNames = DimNames {
    num_classes: "--classes",
    in_chans: "channels",
    ..MODEL_FLAGS
};

/// The random batch and the engine's buffers must fit: on the host (the emulator's device
/// memory too), and on a CUDA device; a dry run allocates nothing on its device.
fn check_memory(
    cfg: &ModelConfig,
    batch: usize,
    precision: Precision,
    rt: &Arc<dyn Runtime>,
    cuda: Option<&CudaRuntime>,
    device: &str,
) -> Result<()> {
    let bytes = GpuTrainer::device_bytes(&**rt, cfg, batch, precision);
    let emu = matches!(
        device.trim().to_ascii_lowercase().as_str(),
        "emu" | "emulator"
    );
    if let Some(c) = cuda {
        let free = c
            .memory_info()
            .ok()
            .map(|(free, _)| (free as f64, format!("free on {}", c.describe())));
        memory::device_estimate(batch, bytes)
            .check("device", free)
            .map_err(anyhow::Error::msg)?;
    }
    let kind = EngineKind::Device {
        device: bytes,
        pinned: GpuTrainer::pinned_bytes(cfg, batch),
        device_is_host: emu,
    };
    memory::host_estimate(cfg, batch, None, kind)
        .check("host", memory::host_available())
        .map_err(anyhow::Error::msg)?;
    Ok(())
}

/// The device to profile on: a runtime, and CUDA for timing when it is one.
type Opened = (Arc<dyn Runtime>, Option<Arc<CudaRuntime>>);

fn open(device: &str) -> Result<Opened> {
    let cuda = |n: usize| -> Result<Opened> {
        let c = Arc::new(CudaRuntime::new(n).map_err(|e| anyhow!("--device cuda:{n}: {e}"))?);
        Ok((c.clone(), Some(c)))
    };
    match device.trim().to_ascii_lowercase().as_str() {
        "dry" => Ok((Arc::new(DryRuntime::new()), None)),
        "emu" | "emulator" => Ok((Arc::new(EmuRuntime::new()), None)),
        "cuda" | "gpu" => cuda(0),
        "auto" => cuda(0).or_else(|_| Ok((Arc::new(DryRuntime::new()), None))),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n),
            _ => bail!("--device '{other}': expected auto, cuda, cuda:N, emu or dry"),
        },
    }
}

pub fn run(a: ProfileArgs) -> Result<std::process::ExitCode> {
    let mut cfg = a.model.config("seed")?;
    cfg.num_classes = a.classes;
    cfg.check(&PROFILE_FLAGS).map_err(|e| anyhow!("{}", e.0))?;
    if a.batch_size == 0 {
        bail!("--batch-size 0 is out of range: expected at least 1");
    }
    for (flag, v, min) in [("--steps", a.steps, 1), ("--warmup", a.warmup, 0)] {
        if !(min..=MAX_STEPS).contains(&v) {
            bail!("{flag} {v} is out of range: expected {min}..={MAX_STEPS}");
        }
    }
    let (inner, cuda) = open(&a.device)?;
    let precision = a.precision.unwrap_or(if cuda.is_some() {
        Precision::Bf16
    } else {
        Precision::Fp32
    });
    check_memory(
        &cfg,
        a.batch_size,
        precision,
        &inner,
        cuda.as_deref(),
        &a.device,
    )?;
    let profiler = Arc::new(Profiler::new(inner.clone(), cuda.clone()));
    let rt: Arc<dyn Runtime> = profiler.clone();
    let layout = ParamLayout::new(&cfg);
    let params = init_params(&cfg, &layout, 0);
    let b = a.batch_size;
    let mut engine = GpuTrainer::new(
        rt.clone(),
        &cfg,
        b,
        &params,
        AdamWConfig::default(),
        precision,
        FineTuning::default(),
    )
    .map_err(|e| anyhow!("{}: {e}", rt.describe()))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let images: Vec<f32> = (0..b * cfg.image_len())
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let labels: Vec<u32> = (0..b)
        .map(|_| rng.random_range(0..cfg.num_classes as u32))
        .collect();
    println!(
        "profile: {} (D{} L{} H{} M{} T{}), batch {b}, {precision}, on {}",
        a.model.model.as_deref().unwrap_or("seed"),
        cfg.embed_dim,
        cfg.depth,
        cfg.num_heads,
        cfg.mlp_dim,
        cfg.num_tokens(),
        rt.describe()
    );
    let err = |e: vitk::gpu::GpuError| anyhow!("{e}");
    // Steps as training runs them (queued one ahead, one graph replay each unless
    // VITK_NO_GRAPH=1): the warm-up (the first step captures the graph), the counts of one
    // step, then on CUDA the timed steps between two events.
    let submit = |engine: &mut GpuTrainer| {
        engine
            .submit_step(&images, &labels, 1e-3, 0.1, Some(1.0))
            .map(|_| ())
    };
    for _ in 0..a.warmup.max(1) {
        submit(&mut engine).map_err(err)?;
    }
    let before = rt.counts();
    submit(&mut engine).map_err(err)?;
    let queued = rt.counts().since(&before);
    let step_ms = match &cuda {
        Some(c) => Some(
            c.time_ms(0, a.steps, &mut || submit(&mut engine))
                .map_err(err)?,
        ),
        None => None,
    };
    engine.finish_steps().map_err(err)?;
    let graph_kernels = engine.graph_kernels().first().copied();
    // Then one step of direct launches, recorded kernel by kernel (CUDA events around each).
    engine.set_graphs(false);
    profiler.start();
    engine
        .try_train_step(&images, &labels, 1e-3, 0.1, Some(1.0))
        .map_err(err)?;
    let p = profiler.finish().map_err(err)?;
    print_table(&p, b);
    println!(
        "direct step: launches={} host_syncs={} fence_waits={} copies: {} pinned, {} pageable",
        p.counts.launches,
        p.counts.host_syncs,
        p.counts.fence_waits,
        p.counts.async_copies,
        p.counts.pageable_copies
    );
    let timed = match step_ms {
        Some(ms) => format!(" ms={ms:.3} img_per_s={:.0}", b as f64 / (ms * 1e-3)),
        None => " ms=- img_per_s=- (no GPU: nothing timed)".into(),
    };
    let kernels = graph_kernels.map_or(String::new(), |k| format!(" ({k} kernels each)"));
    println!(
        "step: launches={} graphs={}{kernels} host_syncs={} fence_waits={} copies: {} pinned, {} pageable{timed}",
        queued.launches,
        queued.graph_launches,
        queued.host_syncs,
        queued.fence_waits,
        queued.async_copies,
        queued.pageable_copies
    );
    Ok(std::process::ExitCode::SUCCESS)
}

fn print_table(p: &Profile, batch: usize) {
    println!(
        "{:<34} {:>5} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9} {:>7}",
        "kernel", "calls", "GFLOP", "MB", "ms", "TFLOP/s", "GB/s", "bound ms", "% roof"
    );
    let mut rows: Vec<_> = p.kernels.iter().collect();
    rows.sort_by(|x, y| {
        let key = |k: &vitk::gpu::profile::KernelStats| k.ms.unwrap_or(k.bound_ms);
        key(y.1).total_cmp(&key(x.1))
    });
    let (mut bound, mut flops, mut bytes) = (0.0, 0.0, 0.0);
    for (name, k) in rows {
        bound += k.bound_ms;
        flops += k.flops;
        bytes += k.bytes;
        let (ms, tf, gb, roof) = match k.ms {
            Some(ms) if ms > 0.0 => (
                format!("{ms:.4}"),
                format!("{:.1}", k.flops / (ms * 1e-3) / 1e12),
                format!("{:.0}", k.bytes / (ms * 1e-3) / 1e9),
                format!("{:.0}%", 100.0 * k.bound_ms / ms),
            ),
            _ => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<34} {:>5} {:>9.3} {:>9.2} {:>9} {:>8} {:>8} {:>9.4} {:>7}",
            name,
            k.calls,
            k.flops / 1e9,
            k.bytes / 1e6,
            ms,
            tf,
            gb,
            k.bound_ms,
            roof
        );
    }
    println!(
        "roofline model of an H200 ({:.0} TFLOP/s bf16 tensor, {:.0} TFLOP/s fp32, {:.1} TB/s; \
         datasheet figures, a model, not a measurement): {:.1} GFLOP and {:.0} MB per step, at \
         least {bound:.3} ms, at most {:.0} img/s, launch gaps not counted",
        h200::BF16_FLOPS / 1e12,
        h200::FP32_FLOPS / 1e12,
        h200::BYTES_PER_S / 1e12,
        flops / 1e9,
        bytes / 1e6,
        batch as f64 / (bound * 1e-3)
    );
}
