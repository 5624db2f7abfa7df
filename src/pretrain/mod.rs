//! `vitk pretrain`: masked image modelling without labels (issue 12). The objective, the
//! batch masks, the engine interface, the CPU engine, the loop and the reconstructions picture.
//! The ops are `cpu::mim`, `cpu::mim_colour` and their kernels; the CPU model is
//! `cpu::pretrain`.

pub mod config;
pub mod cpu;
pub mod engine;
pub mod masks;
pub mod objective;
pub mod reconstructions;
pub mod trainer;

pub use config::PretrainConfig;
pub use cpu::CpuPretrainer;
pub use engine::{PretrainEngine, PretrainStepOutput};
pub use masks::PatchMasks;
pub use objective::Objective;
pub use trainer::{pretrain, PretrainSummary};
