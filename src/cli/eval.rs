//! `vitk eval`: a checkpoint on the validation split of a data directory.

use super::at_size::load_at_size;
use super::device::{self, Device};
use super::parse::whole;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use vitk::data::{self, Normalize};
use vitk::engine::Precision;
use vitk::model::ImageSize;
use vitk::optim::AdamWConfig;
use vitk::train::evaluate;

#[derive(Args)]
pub struct EvalArgs {
    /// Data directory (CIFAR-10 binary or ImageFolder); its validation split is evaluated.
    #[arg(long)]
    data: PathBuf,
    /// A checkpoint written by `vitk train` (model.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Training records held out for validation when the data has no test/val split
    /// (use the value the model was trained with) [default: 10% of the records, at most 5000].
    #[arg(long, value_parser = whole, allow_negative_numbers = true)]
    val_split: Option<usize>,
    /// Accept a CIFAR-10 directory with some of data_batch_1..5.bin missing (a warning says
    /// how many are used); matters when the validation records are held out of them.
    #[arg(long)]
    allow_partial: bool,
    /// Batch size, at least 1 (at most the validation set is used).
    #[arg(long, default_value_t = 256, value_parser = whole, allow_negative_numbers = true)]
    batch_size: usize,
    /// CPU threads, 1..=1024 [default: all cores].
    #[arg(long, value_parser = whole, allow_negative_numbers = true)]
    threads: Option<usize>,
    /// auto (a working CUDA device, else the CPU), cpu, cuda[:N], emu (the emulator).
    #[arg(long, default_value = "auto")]
    device: Device,
    /// Arithmetic of the device engine: fp32 or bf16 (mixed precision: bf16 matmuls on
    /// tensor cores, fp32 master weights) [default: bf16 on CUDA, fp32 on emu and the CPU].
    #[arg(long)]
    precision: Option<Precision>,
    /// Evaluate at another input size, S or HxW (a multiple of the patch size), with
    /// pos_embed resampled to its patch grid as timm does [default: the checkpoint's].
    #[arg(long, allow_negative_numbers = true)]
    image_size: Option<ImageSize>,
}

pub fn run(a: EvalArgs) -> Result<ExitCode> {
    device::set_threads(a.threads)?;
    if a.batch_size == 0 {
        bail!("--batch-size 0 is out of range: expected at least 1");
    }
    let (meta, cfg, params) = load_at_size(&a.checkpoint, a.image_size)?;
    let cfg = &cfg;
    let splits = data::load(&a.data, cfg.image_size, a.val_split, a.allow_partial)?;
    super::data_source::warn(&splits);
    let val = &splits.val;
    if val.is_empty() {
        bail!(
            "{}: no validation data (no test split and --val-split 0)",
            a.data.display()
        );
    }
    if val.num_classes() != cfg.num_classes || val.channels != cfg.in_chans {
        bail!(
            "{}: {} classes of {}-channel images, but {} was trained for {} classes of {} channels",
            a.data.display(),
            val.num_classes(),
            val.channels,
            a.checkpoint.display(),
            cfg.num_classes,
            cfg.in_chans
        );
    }
    let norm = normalize_of(&meta.mean, &meta.std);
    let mut engine = device::engine(
        a.device,
        a.precision,
        cfg,
        a.batch_size.min(val.len()),
        params,
        AdamWConfig::default(),
    )?;
    let r = evaluate(engine.as_mut(), val, norm)?;
    println!("data: {} ({})", a.data.display(), splits.val_source);
    println!(
        "samples: {}  accuracy: {:.4}  top-5: {:.4}  loss: {:.4}",
        r.samples, r.accuracy, r.top5, r.loss
    );
    println!("per-class accuracy:");
    for (name, acc) in val.classes.iter().zip(r.per_class_accuracy()) {
        match acc {
            Some(a) => println!("  {name:<16} {a:.4}"),
            None => println!("  {name:<16} (no samples)"),
        }
    }
    println!("confusion matrix (rows: true class, columns: predicted):");
    let width = r
        .confusion
        .iter()
        .flatten()
        .max()
        .map_or(1, |m| m.to_string().len())
        .max(3);
    for (k, row) in r.confusion.iter().enumerate() {
        let cells: Vec<String> = row.iter().map(|c| format!("{c:>width$}")).collect();
        println!("  {k:>3} {}  {}", cells.join(" "), val.classes[k]);
    }
    Ok(ExitCode::SUCCESS)
}

/// The checkpoint's normalisation (first three channels at most).
pub fn normalize_of(mean: &[f32], std: &[f32]) -> Normalize {
    let mut n = Normalize {
        mean: [0.0; 3],
        std: [1.0; 3],
    };
    for (i, (&m, &s)) in mean.iter().zip(std).take(3).enumerate() {
        n.mean[i] = m;
        n.std[i] = s;
    }
    n
}
