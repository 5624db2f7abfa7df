//! Attention maps of a trained model (`vitk attention`): the maps of one image computed from
//! the engine's attention probabilities (`rollout.rs`) and drawn as a sheet of panels
//! (`render.rs`). Knows no engine: the probabilities arrive as [L, B, H, T, T] f32.

pub mod render;
pub mod rollout;

use crate::model::ModelConfig;

/// The maps of one image over the patch grid, [N] each (row-major over the gh x gw grid),
/// unnormalised.
pub struct ImageMaps {
    /// Per head of the last block: the class token's attention over the patches (`Pool::Cls`),
    /// or the mean attention each patch receives (`Pool::Mean`). [H][N].
    pub heads: Vec<Vec<f64>>,
    /// The rollout over all blocks: the class token's row (or the mean row) over the patches.
    pub rollout: Vec<f64>,
}

/// The maps of image `b` of a batch of `batch` from `probs` [L, B, H, T, T].
pub fn image_maps(probs: &[f32], cfg: &ModelConfig, batch: usize, b: usize) -> ImageMaps {
    let (depth, heads) = (cfg.depth, cfg.num_heads);
    let t = cfg.num_tokens();
    let per_image = heads * t * t; // [H, T, T]
    assert_eq!(probs.len(), depth * batch * per_image, "image_maps: probs");
    assert!(b < batch, "image_maps: image {b} of {batch}");
    let blocks: Vec<&[f32]> = (0..depth)
        .map(|l| &probs[(l * batch + b) * per_image..][..per_image])
        .collect();
    let r = rollout::rollout(&blocks, heads, t);
    ImageMaps {
        // A valid config has at least one block.
        heads: blocks.last().map_or_else(Vec::new, |last| {
            rollout::head_maps(last, heads, t, cfg.pool)
        }),
        rollout: rollout::patch_values(&rollout::image_row(&r, t, cfg.pool), cfg.pool).to_vec(),
    }
}
