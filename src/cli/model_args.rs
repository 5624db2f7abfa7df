//! The model flags shared by `train` and `profile`: a preset and per-field overrides.

use super::parse::whole;
use anyhow::Result;
use clap::Args;
use vitk::model::{ImageSize, ModelConfig, Pool};

#[derive(Args, Default)]
pub struct ModelArgs {
    /// Model preset: micro, seed, lite, tiny, small [default: micro for train].
    #[arg(long)]
    pub model: Option<String>,
    /// Override the preset's width D.
    #[arg(long, value_parser = whole, allow_negative_numbers = true)]
    pub embed_dim: Option<usize>,
    /// Override the preset's depth L.
    #[arg(long, value_parser = whole, allow_negative_numbers = true)]
    pub depth: Option<usize>,
    /// Override the preset's number of heads H.
    #[arg(long, value_parser = whole, allow_negative_numbers = true)]
    pub num_heads: Option<usize>,
    /// Override the preset's MLP width M.
    #[arg(long, value_parser = whole, allow_negative_numbers = true)]
    pub mlp_dim: Option<usize>,
    /// Override the patch size P.
    #[arg(long, value_parser = whole, allow_negative_numbers = true)]
    pub patch_size: Option<usize>,
    /// Override the input size: S for S x S, or HxW (height x width, e.g. 40x56); images
    /// are resized to it.
    #[arg(long, allow_negative_numbers = true)]
    pub image_size: Option<ImageSize>,
    /// Pooling: cls (class token, `norm`) or mean (no class token, `fc_norm`) [default: cls].
    #[arg(long)]
    pub pool: Option<Pool>,
}

impl ModelArgs {
    /// The preset (`default` when --model is absent) with every override applied.
    pub fn config(&self, default: &str) -> Result<ModelConfig> {
        let base = ModelConfig::preset(self.model.as_deref().unwrap_or(default))?;
        Ok(self.over(base))
    }

    /// The model of a run that starts from a checkpoint of `base`: the checkpoint's shape
    /// unless --model names a preset, with every override applied.
    pub fn config_from(&self, base: &ModelConfig) -> Result<ModelConfig> {
        match &self.model {
            Some(name) => Ok(self.over(ModelConfig::preset(name)?)),
            None => Ok(self.over(base.clone())),
        }
    }

    /// `model` with every override given applied.
    fn over(&self, mut model: ModelConfig) -> ModelConfig {
        let set = |dst: &mut usize, v: Option<usize>| {
            if let Some(v) = v {
                *dst = v
            }
        };
        set(&mut model.embed_dim, self.embed_dim);
        set(&mut model.depth, self.depth);
        set(&mut model.num_heads, self.num_heads);
        set(&mut model.mlp_dim, self.mlp_dim);
        set(&mut model.patch_size, self.patch_size);
        if let Some(size) = self.image_size {
            model.image_size = size;
        }
        if let Some(pool) = self.pool {
            model.pool = pool;
        }
        model
    }

    /// The flags that were given.
    pub fn given(&self) -> Vec<&'static str> {
        [
            ("--model", self.model.is_some()),
            ("--embed-dim", self.embed_dim.is_some()),
            ("--depth", self.depth.is_some()),
            ("--num-heads", self.num_heads.is_some()),
            ("--mlp-dim", self.mlp_dim.is_some()),
            ("--patch-size", self.patch_size.is_some()),
            ("--image-size", self.image_size.is_some()),
            ("--pool", self.pool.is_some()),
        ]
        .iter()
        .filter(|f| f.1)
        .map(|f| f.0)
        .collect()
    }
}
