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
use vitk::engine::{Precision, TrainEngine};
use vitk::gpu::{cuda::CudaRuntime, emu::EmuRuntime, GpuTrainer, Runtime};
use vitk::model::ModelConfig;
use vitk::optim::AdamWConfig;

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

/// Sizes the global rayon pool (all CPU work: GEMMs, ops, decoding).
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        if n == 0 {
            bail!("--threads 0: expected at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    Ok(())
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
    let on = |rt: Arc<dyn Runtime>, default: Precision| -> Result<Box<dyn TrainEngine>> {
        let p = precision.unwrap_or(default);
        let e = GpuTrainer::new(rt.clone(), cfg, max_batch, &params, adamw, p)
            .map_err(|e| anyhow!("{}: {e}", rt.describe()))?;
        Ok(Box::new(e))
    };
    let cpu = |params: Vec<f32>| -> Result<Box<dyn TrainEngine>> {
        if precision == Some(Precision::Bf16) {
            bail!(
                "--precision bf16 runs on the device engine (--device cuda or emu); the CPU \
                 engine computes in fp32"
            );
        }
        Ok(Box::new(CpuTrainer::new(cfg, max_batch, params, adamw)?))
    };
    match device {
        Device::Cpu => cpu(params),
        Device::Emu => on(Arc::new(EmuRuntime::new()), Precision::Fp32),
        Device::Cuda(n) => {
            let rt = CudaRuntime::new(n)
                .map_err(|e| anyhow!("--device cuda:{n}: {e} (use --device cpu or auto)"))?;
            on(Arc::new(rt), Precision::Bf16)
        }
        Device::Auto => match CudaRuntime::new(0) {
            Ok(rt) => on(Arc::new(rt), Precision::Bf16),
            Err(_) => cpu(params),
        },
    }
}
