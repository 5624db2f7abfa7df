//! `vitk predict`: top-k classes of image files under a checkpoint.

use super::at_size::load_at_size;
use super::device::{self, Device};
use super::eval::normalize_of;
use super::parse::whole;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use vitk::data::image_file::read_image;
use vitk::data::to_tensor;
use vitk::engine::Precision;
use vitk::model::ImageSize;
use vitk::optim::AdamWConfig;

#[derive(Args)]
pub struct PredictArgs {
    /// A checkpoint written by `vitk train` (model.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// How many classes to list per image, at least 1.
    #[arg(long, default_value_t = 5, value_parser = whole, allow_negative_numbers = true)]
    top: usize,
    /// auto (a working CUDA device, else the CPU), cpu, cuda[:N], emu (the emulator).
    #[arg(long, default_value = "auto")]
    device: Device,
    /// Arithmetic of the device engine: fp32 or bf16 (mixed precision: bf16 matmuls on
    /// tensor cores, fp32 master weights) [default: bf16 on CUDA, fp32 on emu and the CPU].
    #[arg(long)]
    precision: Option<Precision>,
    /// Run the model at another input size, S or HxW (a multiple of the patch size), with
    /// pos_embed resampled to its patch grid as timm does [default: the checkpoint's].
    #[arg(long, allow_negative_numbers = true)]
    image_size: Option<ImageSize>,
    /// Image files (PNG, JPEG, BMP, GIF, TIFF, WebP, recognised by content whatever their
    /// extension); resized to the model's input as training resizes them.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

pub fn run(a: PredictArgs) -> Result<ExitCode> {
    if a.top == 0 {
        bail!("--top 0 is out of range: expected at least 1");
    }
    let (meta, cfg, params) = load_at_size(&a.checkpoint, a.image_size)?;
    if cfg.in_chans != 3 {
        bail!(
            "{}: predict reads RGB images; this model takes {} channels",
            a.checkpoint.display(),
            cfg.in_chans
        );
    }
    let side = cfg.image_size;
    let norm = normalize_of(&meta.mean, &meta.std);
    let plane = side.pixels();
    let mut batch = vec![0.0f32; a.images.len() * 3 * plane];
    for (path, out) in a.images.iter().zip(batch.chunks_exact_mut(3 * plane)) {
        // Decoded by content and resized as the ImageFolder loader does for training.
        let planes = read_image(path, side)?;
        to_tensor(&planes, out, 3, &norm)?;
    }
    let mut engine = device::engine(
        a.device,
        a.precision,
        &cfg,
        a.images.len(),
        params,
        AdamWConfig::default(),
    )?;
    let logits = engine.logits(&batch)?;
    let k = cfg.num_classes;
    for (path, row) in a.images.iter().zip(logits.chunks_exact(k)) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f64> = row.iter().map(|&v| ((v - max) as f64).exp()).collect();
        let sum: f64 = exp.iter().sum();
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&i, &j| exp[j].total_cmp(&exp[i]));
        println!("{}:", path.display());
        for &c in order.iter().take(a.top) {
            let name = meta.classes.get(c).map_or("?", String::as_str);
            println!("  {:.4}  {name}", exp[c] / sum);
        }
    }
    Ok(ExitCode::SUCCESS)
}
