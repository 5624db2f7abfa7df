//! `--device` and `--threads`: which engine runs the model.

use anyhow::{bail, Result};
use vitk::model::ModelConfig;
use vitk::train::{AdamWConfig, CpuTrainer, TrainEngine};

/// The engines this build can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// The best available device (the CPU in this build).
    Auto,
    /// The rayon CPU engine.
    Cpu,
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
    match device {
        Device::Auto | Device::Cpu => Ok(Box::new(CpuTrainer::new(cfg, max_batch, params, adamw)?)),
    }
}
