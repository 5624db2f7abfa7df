//! `vitk attention`: attention maps of image files under a checkpoint, one PNG sheet per image
//! (src/attention_maps): the image as the model sees it, the last block's attention per head,
//! and the attention rollout over all blocks.

use super::device::{self, Device};
use super::eval::normalize_of;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vitk::attention_maps::{image_maps, render, rollout::normalise};
use vitk::data::image_file::read_image;
use vitk::data::to_tensor;
use vitk::engine::Precision;
use vitk::model::{load_checkpoint, Pool};
use vitk::optim::AdamWConfig;

/// Images per forward pass: bounds the probabilities held at once ([L, B, H, T, T]).
const CHUNK: usize = 8;

#[derive(Args)]
pub struct AttentionArgs {
    /// A checkpoint written by `vitk train` (model.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Folder the PNGs are written to (created if missing): OUT/<image stem>.png, replacing a
    /// file of that name.
    #[arg(long)]
    out: PathBuf,
    /// cpu, auto (a working CUDA device, else the CPU), cuda[:N], emu (the emulator). The
    /// device engine recomputes the probabilities from q, k and the log-sum-exp.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Arithmetic of the device engine: fp32 or bf16 (bf16 q and k give maps within bf16
    /// rounding of fp32's) [default: bf16 on CUDA, fp32 on emu and the CPU].
    #[arg(long)]
    precision: Option<Precision>,
    /// Image files (PNG, JPEG, BMP, GIF, TIFF, WebP, recognised by content whatever their
    /// extension); resized to the model's input as training resizes them.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

pub fn run(a: AttentionArgs) -> Result<ExitCode> {
    let (meta, params) = load_checkpoint(&a.checkpoint)?;
    let cfg = meta.config.clone();
    if cfg.in_chans != 3 {
        bail!(
            "{}: attention reads RGB images; this model takes {} channels",
            a.checkpoint.display(),
            cfg.in_chans
        );
    }
    let outputs = output_paths(&a.images, &a.out)?;
    let side = cfg.image_size;
    let plane = side.pixels();
    // Every image is read before anything is computed or written.
    let pixels: Vec<Vec<u8>> = a
        .images
        .iter()
        .map(|p| read_image(p, side))
        .collect::<Result<_, _>>()?;
    std::fs::create_dir_all(&a.out)
        .map_err(|e| anyhow!("{}: cannot create the output folder: {e}", a.out.display()))?;
    let norm = normalize_of(&meta.mean, &meta.std);
    let batch_max = a.images.len().min(CHUNK);
    let mut engine = device::engine(
        a.device,
        a.precision,
        &cfg,
        batch_max,
        params,
        AdamWConfig::default(),
    )?;
    let k = cfg.num_classes;
    let grid = cfg.grid();
    let heads_show = match cfg.pool {
        Pool::Cls => "the class token's attention",
        Pool::Mean => "the mean attention each patch receives",
    };
    for start in (0..a.images.len()).step_by(CHUNK) {
        let end = (start + CHUNK).min(a.images.len());
        let n = end - start;
        let mut batch = vec![0.0f32; n * 3 * plane];
        for (img, out) in pixels[start..end]
            .iter()
            .zip(batch.chunks_exact_mut(3 * plane))
        {
            to_tensor(img, out, 3, &norm)?;
        }
        let logits = engine.logits(&batch)?;
        let probs = engine.attention_probs(&batch)?; // [L, n, H, T, T]
        for b in 0..n {
            let i = start + b;
            let (class, p) = top_class(&logits[b * k..(b + 1) * k]);
            let name = meta.classes.get(class).map_or("?", String::as_str);
            let maps = image_maps(&probs, &cfg, n, b);
            let mut panels = vec![render::Panel {
                title: "input".into(),
                map: None,
            }];
            for (h, m) in maps.heads.iter().enumerate() {
                panels.push(render::Panel {
                    title: format!("head {h}"),
                    map: Some(normalise(m)),
                });
            }
            panels.push(render::Panel {
                title: "rollout".into(),
                map: Some(normalise(&maps.rollout)),
            });
            let header = format!(
                "{name} (p = {p:.3})  |  heads: {heads_show}, last block  |  rollout: {} blocks",
                cfg.depth
            );
            let sheet = render::render(&pixels[i], side, grid, &header, &panels)
                .map_err(|e| anyhow!("{}: drawing the maps: {e}", a.images[i].display()))?;
            let png = render::png_bytes(&sheet)
                .map_err(|e| anyhow!("{}: encoding: {e}", outputs[i].display()))?;
            vitk::atomic::write_atomic(&outputs[i], &png)
                .with_context(|| format!("{}: cannot write", outputs[i].display()))?;
            println!(
                "{}: {name} {p:.4} -> {}",
                a.images[i].display(),
                outputs[i].display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// OUT/<stem>.png for each image; two images with the same stem are an error (one PNG would
/// replace the other).
fn output_paths(images: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>> {
    let mut seen: HashMap<PathBuf, &Path> = HashMap::new();
    images
        .iter()
        .map(|img| {
            let stem = img
                .file_stem()
                .ok_or_else(|| anyhow!("{}: not a file name", img.display()))?;
            let mut name = stem.to_os_string();
            name.push(".png");
            let path = out.join(name);
            if let Some(other) = seen.insert(path.clone(), img) {
                bail!(
                    "{} and {} would both be written to {}: give images different names",
                    other.display(),
                    img.display(),
                    path.display()
                );
            }
            Ok(path)
        })
        .collect()
}

/// The arg-max class of `logits` [K] and its softmax probability.
fn top_class(logits: &[f32]) -> (usize, f64) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&v| f64::from(v - max).exp()).sum();
    let class = logits
        .iter()
        .enumerate()
        .max_by(|x, y| x.1.total_cmp(y.1).then(y.0.cmp(&x.0)))
        .map_or(0, |(c, _)| c);
    (class, 1.0 / sum)
}
