//! A checkpoint run at another input size (`eval --image-size`, `predict --image-size`): the
//! same model with pos_embed resampled to the new patch grid as timm does; the file is not
//! changed.

use anyhow::{anyhow, Result};
use std::path::Path;
use vitk::model::{
    load_checkpoint, load_transfer, CheckpointMeta, DimNames, ImageSize, ModelConfig,
    TransferOptions, FIELD_NAMES,
};

/// The checkpoint's metadata, the model to run (at `size` when given) and its weights.
pub fn load_at_size(
    checkpoint: &Path,
    size: Option<ImageSize>,
) -> Result<(CheckpointMeta, ModelConfig, Vec<f32>)> {
    let (meta, params) = load_checkpoint(checkpoint)?;
    let trained = &meta.config;
    let Some(size) = size.filter(|&s| s != trained.image_size) else {
        let cfg = trained.clone();
        return Ok((meta, cfg, params));
    };
    let cfg = ModelConfig {
        image_size: size,
        ..trained.clone()
    };
    cfg.check(&DimNames {
        image_size: "--image-size",
        patch_size: "the checkpoint's patch size",
        ..FIELD_NAMES
    })
    .map_err(|e| anyhow!("{}: {}", checkpoint.display(), e.0))?;
    let t = load_transfer(checkpoint, &cfg, Some(trained), TransferOptions::default())?;
    for note in t.notes.iter().filter(|n| n.starts_with("resampled")) {
        eprintln!("{}: {note}", checkpoint.display());
    }
    Ok((meta, cfg, t.params))
}
