//! The model: configuration, parameter layout, initialisation, checkpoints. Knows no engine.

mod checkpoint;
pub mod checksum;
mod config;
mod dims;
mod image_size;
mod init;
mod params;
mod pretrain_layout;
pub mod resample;
mod transfer;

pub(crate) use checkpoint::locate;
pub use checkpoint::{
    load_checkpoint, load_weights, read_meta, save_checkpoint, save_tensors, CheckpointError,
    CheckpointMeta,
};
pub use config::{ConfigError, DimNames, Limits, ModelConfig, Pool, FIELD_NAMES, LIMITS, PRESETS};
pub use dims::BatchDims;
pub use image_size::ImageSize;
pub use init::{init_params, init_pretrain_params};
pub use params::{BlockParams, ParamEntry, ParamLayout};
pub use pretrain_layout::PretrainLayout;
pub use transfer::{load_transfer, TransferOptions, Transferred};
