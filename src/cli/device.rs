//! `--device` and `--threads`: which engine runs the model.
//!   auto      a working CUDA device (device 0), else the CPU
//!   cpu       the rayon CPU engine
//!   cuda[:N]  the device engine on CUDA device N (default 0); an error when unusable
//!   emu       the device engine on the CPU emulator (slow: for tests)

use std::str::FromStr;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use vitk::cpu::CpuTrainer;
use vitk::engine::TrainEngine;
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

/// An engine for `cfg` holding `params`, with room for batches of `max_batch`.
pub fn engine(
    device: Device,
    cfg: &ModelConfig,
    max_batch: usize,
    params: Vec<f32>,
    adamw: AdamWConfig,
) -> Result<Box<dyn TrainEngine>> {
    let on = |rt: Arc<dyn Runtime>| -> Result<Box<dyn TrainEngine>> {
        let e = GpuTrainer::new(rt.clone(), cfg, max_batch, &params, adamw)
            .map_err(|e| anyhow!("{}: {e}", rt.describe()))?;
        Ok(Box::new(e))
    };
    match device {
        Device::Cpu => Ok(Box::new(CpuTrainer::new(cfg, max_batch, params, adamw)?)),
        Device::Emu => on(Arc::new(EmuRuntime::new())),
        Device::Cuda(n) => {
            let rt = CudaRuntime::new(n)
                .map_err(|e| anyhow!("--device cuda:{n}: {e} (use --device cpu or auto)"))?;
            on(Arc::new(rt))
        }
        Device::Auto => match CudaRuntime::new(0) {
            Ok(rt) => on(Arc::new(rt)),
            Err(_) => Ok(Box::new(CpuTrainer::new(cfg, max_batch, params, adamw)?)),
        },
    }
}
