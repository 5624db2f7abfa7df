//! Training: the learning-rate schedule, the loop, evaluation, metrics and the run directory.
//! The engines it drives implement crate::engine::TrainEngine.

pub mod config;
pub mod data_size;
pub mod evaluate;
pub mod log_path;
pub mod memory;
pub mod metrics;
pub mod run_dir;
pub mod run_lock;
pub mod run_start;
pub mod schedule;
pub(crate) mod step_report;
pub mod trainer;

pub use config::{DataSource, InitFrom, RecipeUsed, TrainConfig};
pub use evaluate::{evaluate, EvalResult};
pub use run_dir::{LoopPosition, RunDir, SavedState};
pub use run_lock::{RunLock, Stale, LOCK_FILE};
pub use run_start::RunStart;
pub use schedule::{LrSchedule, ScheduleKind};
pub use trainer::{hms, train, Best, Outcome, RunOptions, Summary};
