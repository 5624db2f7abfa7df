//! The sizes of one batch through a model, named with the letters used in comments.

use super::ModelConfig;

/// Sizes of a batch of `b` images through a model (B, T, N, D, M, H, K, C·P·P, L).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchDims {
    /// B: images in the batch.
    pub b: usize,
    /// T: tokens per image (N, plus one with a class token).
    pub t: usize,
    /// N: patches per image.
    pub n: usize,
    /// D: width.
    pub d: usize,
    /// M: MLP width.
    pub m: usize,
    /// H: heads.
    pub h: usize,
    /// K: classes.
    pub k: usize,
    /// C·P·P: length of one patch vector.
    pub cpp: usize,
    /// L: blocks.
    pub depth: usize,
    /// C·S_h·S_w: values per image.
    pub image: usize,
}

impl BatchDims {
    pub fn new(cfg: &ModelConfig, batch: usize) -> Self {
        Self {
            b: batch,
            t: cfg.num_tokens(),
            n: cfg.num_patches(),
            d: cfg.embed_dim,
            m: cfg.mlp_dim,
            h: cfg.num_heads,
            k: cfg.num_classes,
            cpp: cfg.patch_dim(),
            depth: cfg.depth,
            image: cfg.image_len(),
        }
    }

    /// R = B·T rows of the residual stream.
    pub fn rows(&self) -> usize {
        self.b * self.t
    }

    /// hd = D / H.
    pub fn head_dim(&self) -> usize {
        self.d / self.h
    }
}
