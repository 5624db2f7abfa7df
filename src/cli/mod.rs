//! The subcommands of the `vitk` binary. The library knows nothing of them.

mod at_size;
pub mod attention;
pub mod data_source;
pub mod device;
pub mod eval;
pub mod info;
pub mod model_args;
pub mod parse;
pub mod predict;
pub mod pretrain;
pub mod profile;
pub mod recipe;
pub mod synth;
pub mod train;
