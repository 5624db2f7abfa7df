//! timm's initialisation of a VisionTransformer (`weight_init=''`).
//!
//! - Linear weights (qkv, proj, fc1, fc2, head) and pos_embed: truncated normal, std 0.02,
//!   truncated at ±2 (absolute, as timm's `trunc_normal_(std=.02)` does); biases zero.
//! - cls_token: normal with std 1e-6.
//! - LayerNorm: weight 1, bias 0.
//! - patch_embed.proj (a Conv2d, which timm's `init_weights_vit_timm` leaves to PyTorch):
//!   weight and bias uniform in ±1/√fan_in, fan_in = C·P·P (kaiming_uniform with a = √5).
//!
//! The pre-training model (SimMIM, [`init_pretrain_params`]): the encoder as above;
//! `mask_token` truncated normal, std 0.02 (SimMIM's `trunc_normal_(mask_token, std=.02)`);
//! `decoder.*` (SimMIM's 1x1 Conv2d, left to PyTorch) uniform in ±1/√D.

use super::{ModelConfig, ParamLayout, PretrainLayout};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal, Uniform};
use std::ops::Range;

/// A fresh parameter buffer for `cfg`, deterministic in `seed`.
pub fn init_params(cfg: &ModelConfig, layout: &ParamLayout, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut p = vec![0.0f32; layout.len];
    let trunc = |p: &mut [f32], r: Range<usize>, rng: &mut rand::rngs::StdRng| {
        let normal = Normal::new(0.0f64, 0.02).expect("valid std");
        for v in &mut p[r] {
            *v = loop {
                let s = normal.sample(rng);
                if (-2.0..=2.0).contains(&s) {
                    break s as f32;
                }
            };
        }
    };
    if let Some(r) = &layout.cls_token {
        let normal = Normal::new(0.0f64, 1e-6).expect("valid std");
        for v in &mut p[r.clone()] {
            *v = normal.sample(&mut rng) as f32;
        }
    }
    trunc(&mut p, layout.pos_embed.clone(), &mut rng);
    let bound = 1.0 / (cfg.patch_dim() as f64).sqrt();
    let uniform = Uniform::new_inclusive(-bound, bound).expect("valid bound");
    for r in [layout.patch_w.clone(), layout.patch_b.clone()] {
        for v in &mut p[r] {
            *v = rng.sample(uniform) as f32;
        }
    }
    for blk in &layout.blocks {
        for r in [&blk.norm1_w, &blk.norm2_w] {
            p[r.clone()].fill(1.0);
        }
        for r in [&blk.qkv_w, &blk.proj_w, &blk.fc1_w, &blk.fc2_w] {
            trunc(&mut p, r.clone(), &mut rng);
        }
    }
    p[layout.head_norm_w.clone()].fill(1.0);
    trunc(&mut p, layout.head_w.clone(), &mut rng);
    p
}

/// A fresh pre-training buffer for `cfg`, deterministic in `seed`: the encoder's tensors
/// exactly as [`init_params`] draws them with the same seed (the classification layout's
/// prefix), then `mask_token` and `decoder.*` from a second stream of `seed`.
pub fn init_pretrain_params(cfg: &ModelConfig, layout: &PretrainLayout, seed: u64) -> Vec<f32> {
    let mut p = init_params(cfg, &ParamLayout::new(cfg), seed);
    p.truncate(layout.encoder_len);
    p.resize(layout.len, 0.0);
    // "SIMM" tags the stream of the pre-training tensors.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5349_4d4d_0000_0000);
    let normal = Normal::new(0.0f64, 0.02).expect("valid std");
    for v in &mut p[layout.mask_token.clone()] {
        *v = loop {
            let s = normal.sample(&mut rng);
            if (-2.0..=2.0).contains(&s) {
                break s as f32;
            }
        };
    }
    let bound = 1.0 / (cfg.embed_dim as f64).sqrt();
    let uniform = Uniform::new_inclusive(-bound, bound).expect("valid bound");
    for r in [layout.decoder_w.clone(), layout.decoder_b.clone()] {
        for v in &mut p[r] {
            *v = rng.sample(uniform) as f32;
        }
    }
    p
}
