//! The subcommands of the `vitk` binary. The library knows nothing of them.

pub mod device;
pub mod eval;
pub mod info;
pub mod predict;
pub mod synth;
pub mod train;
