//! vitk: a Vision Transformer training engine with hand-written forward and backward passes,
//! a rayon CPU engine and CUDA kernels. See docs/ARCHITECTURE.md for the architecture.

pub mod atomic;
pub mod attention_maps;
pub mod cpu;
pub mod data;
pub mod engine;
pub mod gpu;
pub mod model;
pub mod optim;
pub mod pretrain;
pub mod train;
