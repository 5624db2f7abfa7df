//! The model: configuration, parameter layout, initialisation. Knows no engine.

mod config;
mod init;
mod params;

pub use config::{ConfigError, ModelConfig, Pool, PRESETS};
pub use init::init_params;
pub use params::{BlockParams, ParamEntry, ParamLayout};
