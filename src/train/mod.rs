//! Training: the engine interface, optimizer, learning-rate schedule, the loop, evaluation,
//! metrics and the run directory.

pub mod adamw;
pub mod config;
pub mod engine;
pub mod evaluate;
pub mod metrics;
pub mod run_dir;
pub mod schedule;
pub mod trainer;

pub use adamw::{clip_grad_norm, global_norm, AdamW, AdamWConfig};
pub use config::{DataSource, TrainConfig};
pub use engine::{CpuTrainer, OptimizerState, StepOutput, TrainEngine};
pub use evaluate::{evaluate, EvalResult};
pub use run_dir::{LoopPosition, RunDir};
pub use schedule::{LrSchedule, ScheduleKind};
pub use trainer::{train, Outcome, RunOptions, Summary};
