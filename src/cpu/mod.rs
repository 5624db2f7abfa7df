//! The rayon CPU engine: forward/backward pairs per op family, generic over f32 and f64,
//! and the whole-model engine built from them. Both a trainer and the numerical reference
//! the GPU kernels are checked against.

pub mod adamw;
pub mod attention;
mod carve;
pub mod drop_path;
pub mod ema;
pub mod engine;
mod fastmath;
mod float;
pub mod gelu;
pub mod layernorm;
pub mod linear;
pub mod loss;
pub mod matmul;
pub mod mim;
pub mod mim_colour;
pub mod patch_embed;
pub mod pooling;
pub mod pretrain;
mod reduce;
pub mod soft_loss;
pub mod tokens;
pub mod trainer;

pub use adamw::{clip_grad_norm, global_norm, AdamW};
pub use engine::CpuEngine;
pub use float::Float;
pub use loss::LossStats;
pub use pretrain::{CpuPretrainEngine, PixelObjective};
pub use trainer::CpuTrainer;
