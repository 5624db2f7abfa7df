//! `--device` and `--threads`: which engine runs the model.
//!   auto      a working CUDA device (device 0), else the CPU
//!   cpu       the rayon CPU engine
//!   cuda[:N]  the device engine on CUDA device N (default 0); an error when unusable
//!   emu       the device engine on the CPU emulator (slow: for tests)
//! `--precision fp32|bf16`: the device engine's arithmetic (default bf16 on CUDA, fp32 on the
//! emulator); the CPU engine computes in fp32 only.

use std::str::FromStr;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use vitk::cpu::CpuTrainer;
use vitk::data::Normalize;
use vitk::engine::{Precision, TrainEngine};
use vitk::gpu::kernels::MAX_HEAD_DIM;
use vitk::gpu::{cuda::CudaRuntime, emu::EmuRuntime, GpuPretrainer, GpuTrainer, Runtime};
use vitk::model::drop_path::DropPath;
use vitk::model::ModelConfig;
use vitk::optim::{AdamWConfig, FineTuning};
use vitk::pretrain::{CpuPretrainer, Objective, PretrainEngine};
use vitk::train::memory::{self, DataSize, EngineKind, Trained};

/// The engines this build can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Auto,
    Cpu,
    Cuda(usize),
    Emu,
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            "emu" | "emulator" => Ok(Device::Emu),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n.parse().map(Device::Cuda).map_err(|_| {
                    format!("'{s}': expected cuda:N with N a device number (0, 1, ...)")
                }),
                None => Err(format!(
                    "'{s}' is not a device: expected auto, cpu, cuda, cuda:N or emu"
                )),
            },
        }
    }
}

/// Most threads `--threads` may ask for.
pub const MAX_THREADS: usize = 1024;

/// Sizes the global rayon pool (all CPU work: GEMMs, ops, decoding).
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        if !(1..=MAX_THREADS).contains(&n) {
            bail!("--threads {n} is out of range: expected 1..={MAX_THREADS}");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    Ok(())
}

/// A device opened before anything is allocated or written: the CPU, or the device engine
/// on a runtime with the precision it will compute in.
pub enum Opened {
    Cpu,
    Device {
        rt: Arc<dyn Runtime>,
        /// Set on CUDA: its free memory is checked.
        cuda: Option<Arc<CudaRuntime>>,
        precision: Precision,
    },
}

/// Opens `device`: a missing GPU or bf16 on the CPU fail here, before any work.
pub fn open(device: Device, precision: Option<Precision>) -> Result<Opened> {
    let cpu = || -> Result<Opened> {
        if precision == Some(Precision::Bf16) {
            bail!(
                "--precision bf16 runs on the device engine (--device cuda or emu); the CPU \
                 engine computes in fp32"
            );
        }
        Ok(Opened::Cpu)
    };
    let cuda = |rt: CudaRuntime| {
        let rt = Arc::new(rt);
        Opened::Device {
            rt: rt.clone(),
            cuda: Some(rt),
            precision: precision.unwrap_or(Precision::Bf16),
        }
    };
    match device {
        Device::Cpu => cpu(),
        Device::Emu => Ok(Opened::Device {
            rt: Arc::new(EmuRuntime::new()),
            cuda: None,
            precision: precision.unwrap_or(Precision::Fp32),
        }),
        Device::Cuda(n) => {
            let rt = CudaRuntime::new(n)
                .map_err(|e| anyhow!("--device cuda:{n}: {e} (use --device cpu or auto)"))?;
            Ok(cuda(rt))
        }
        Device::Auto => match CudaRuntime::new(0) {
            Ok(rt) => Ok(cuda(rt)),
            Err(_) => cpu(),
        },
    }
}

impl Opened {
    pub fn describe(&self) -> String {
        match self {
            Opened::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
            Opened::Device { rt, precision, .. } => format!("{} ({precision})", rt.describe()),
        }
    }

    /// What the model needs of the engine beyond a valid config (the device kernels' head
    /// dimension), named by flag.
    pub fn check_model(&self, cfg: &ModelConfig) -> Result<()> {
        if let Opened::Device { .. } = self {
            if cfg.head_dim() > MAX_HEAD_DIM {
                bail!(
                    "--embed-dim {} / --num-heads {} gives a head dimension of {}: the device engine's attention takes at most {MAX_HEAD_DIM} (more heads, or --device cpu)",
                    cfg.embed_dim,
                    cfg.num_heads,
                    cfg.head_dim()
                );
            }
        }
        Ok(())
    }

    /// Checks that a run of `cfg` (valid) at `batch` holding `data` fits in the host's and
    /// the device's memory, before anything is allocated; returns the figures.
    /// `trained`: a pre-training run's objective (its model is sized instead), an EMA.
    pub fn check_memory(
        &self,
        cfg: &ModelConfig,
        batch: usize,
        data: Option<DataSize>,
        trained: Trained,
    ) -> Result<String> {
        let pretrain = trained.pretrain;
        let mut device_line = String::new();
        let kind = match self {
            Opened::Cpu => EngineKind::Cpu,
            Opened::Device {
                rt,
                cuda,
                precision,
            } => {
                let device = match pretrain {
                    Some(objective) => {
                        GpuPretrainer::device_bytes(&**rt, cfg, objective, batch, *precision)
                    }
                    None => GpuTrainer::device_bytes(&**rt, cfg, batch, *precision),
                } + trained.ema_bytes(cfg);
                if let Some(c) = cuda {
                    let free = c
                        .memory_info()
                        .ok()
                        .map(|(free, _)| (free as f64, format!("free on {}", c.describe())));
                    device_line = memory::device_estimate(batch, device)
                        .check("device", free)
                        .map_err(anyhow::Error::msg)?;
                    device_line.insert_str(0, "; ");
                }
                EngineKind::Device {
                    device,
                    pinned: match pretrain {
                        Some(_) => GpuPretrainer::pinned_bytes(cfg, batch),
                        None => GpuTrainer::pinned_bytes(cfg, batch),
                    },
                    device_is_host: cuda.is_none(),
                }
            }
        };
        let host = memory::host_estimate_of(cfg, batch, data, kind, trained)
            .check("host", memory::host_available())
            .map_err(anyhow::Error::msg)?;
        Ok(host + &device_line)
    }

    /// An engine for `cfg` holding `params`, with room for batches of `max_batch`.
    pub fn engine(
        &self,
        cfg: &ModelConfig,
        max_batch: usize,
        params: Vec<f32>,
        adamw: AdamWConfig,
        tuning: FineTuning,
        drop_path: Option<DropPath>,
    ) -> Result<Box<dyn TrainEngine>> {
        match self {
            Opened::Cpu => Ok(Box::new(
                CpuTrainer::new(cfg, max_batch, params, adamw, tuning)?.with_drop_path(drop_path),
            )),
            Opened::Device { rt, precision, .. } => {
                let e = GpuTrainer::new(
                    rt.clone(),
                    cfg,
                    max_batch,
                    &params,
                    adamw,
                    *precision,
                    tuning,
                )
                .and_then(|e| e.with_drop_path(drop_path))
                .map_err(|e| anyhow!("{}: {e}", rt.describe()))?;
                Ok(Box::new(e))
            }
        }
    }
}

impl Opened {
    /// A pre-training engine for `cfg` and `objective` holding `params` (the pre-training
    /// layout), with room for batches of `max_batch` normalised with `normalize`.
    pub fn pretrain_engine(
        &self,
        cfg: &ModelConfig,
        objective: Objective,
        normalize: Normalize,
        max_batch: usize,
        params: Vec<f32>,
        adamw: AdamWConfig,
    ) -> Result<Box<dyn PretrainEngine>> {
        match self {
            Opened::Cpu => Ok(Box::new(CpuPretrainer::new(
                cfg, objective, normalize, max_batch, params, adamw,
            )?)),
            Opened::Device { rt, precision, .. } => {
                let e = GpuPretrainer::new(
                    rt.clone(),
                    cfg,
                    objective,
                    normalize,
                    max_batch,
                    &params,
                    adamw,
                    *precision,
                )
                .map_err(|e| anyhow!("{}: {e}", rt.describe()))?;
                Ok(Box::new(e))
            }
        }
    }
}

/// An engine for `cfg` holding `params`, with room for batches of `max_batch`, computing in
/// `precision` (None: bf16 on CUDA, fp32 elsewhere).
pub fn engine(
    device: Device,
    precision: Option<Precision>,
    cfg: &ModelConfig,
    max_batch: usize,
    params: Vec<f32>,
    adamw: AdamWConfig,
) -> Result<Box<dyn TrainEngine>> {
    let opened = open(device, precision)?;
    opened.check_model(cfg)?;
    opened.check_memory(cfg, max_batch, None, Trained::default())?;
    opened.engine(cfg, max_batch, params, adamw, FineTuning::default(), None)
}
