//! `vitk synth`: the synthetic set as CIFAR-10 binary files.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use vitk::data::{cifar, synthetic};

#[derive(Args)]
pub struct SynthArgs {
    /// Output directory (data_batch_*.bin, test_batch.bin, batches.meta.txt).
    #[arg(long)]
    out: PathBuf,
    /// Training images.
    #[arg(long, default_value_t = 10_000)]
    train: usize,
    /// Validation images (written as test_batch.bin).
    #[arg(long, default_value_t = 2_000)]
    val: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Replace existing data files in --out.
    #[arg(long)]
    force: bool,
}

pub fn run(a: SynthArgs) -> Result<ExitCode> {
    let s = synthetic::generate_splits(a.train, a.val, a.seed);
    std::fs::create_dir_all(&a.out).map_err(|e| anyhow::anyhow!("{}: {e}", a.out.display()))?;
    let val = (!s.val.is_empty()).then_some(&s.val);
    let files = cifar::write_cifar_dir(&s.train, val, &a.out, a.force)?;
    for f in files {
        println!("{}", f.display());
    }
    println!("classes: {}", s.train.classes.join(", "));
    Ok(ExitCode::SUCCESS)
}
