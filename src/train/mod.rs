//! Training: optimizer, learning-rate schedule.

pub mod adamw;
pub mod schedule;

pub use adamw::{clip_grad_norm, global_norm, AdamW, AdamWConfig};
pub use schedule::{LrSchedule, ScheduleKind};
