//! Errors of the data layer. Every message names the file (or directory), the value
//! found and what was expected, so that a user can fix the data without reading code.

use std::path::PathBuf;

/// Size of one CIFAR-10 binary record: 1 label byte + 3 planes of 32x32 pixels.
pub const CIFAR_RECORD_BYTES: usize = 1 + 3 * 32 * 32;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: no such directory (expected a CIFAR-10 binary directory with data_batch_1.bin..data_batch_5.bin, or an ImageFolder with one subfolder of images per class)")]
    MissingDir { path: PathBuf },

    #[error("{path}: is not a directory (expected a CIFAR-10 binary directory or an ImageFolder)")]
    NotADir { path: PathBuf },

    #[error("{path}: directory is empty (expected data_batch_1.bin..data_batch_5.bin, or one subfolder of images per class)")]
    EmptyDir { path: PathBuf },

    #[error("{path}: found {found} but no data_batch_1.bin..data_batch_5.bin and no class subfolders (expected a CIFAR-10 binary directory or an ImageFolder with one subfolder of images per class)")]
    UnknownLayout { path: PathBuf, found: String },

    #[error("{path}: no data_batch_1.bin..data_batch_5.bin (expected at least one CIFAR-10 training file)")]
    NoCifarFiles { path: PathBuf },

    #[error("{path}: {missing} missing: only {present} of the 5 CIFAR-10 training batches data_batch_1.bin..data_batch_5.bin are present (an interrupted download or copy?); restore them, or pass --allow-partial to train on those present")]
    CifarPartial {
        path: PathBuf,
        missing: String,
        present: usize,
    },

    /// The cause is part of the message and deliberately not a `source()`: anyhow's `{:#}`
    /// prints the source chain too, which would say it twice.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("{path}: size {size} bytes is not a multiple of the {CIFAR_RECORD_BYTES}-byte CIFAR-10 record (1 label + 3072 pixels): {records} whole records and {rest} bytes left over (truncated or not a CIFAR-10 file?)", records = size / CIFAR_RECORD_BYTES as u64, rest = size % CIFAR_RECORD_BYTES as u64)]
    CifarSize { path: PathBuf, size: u64 },

    #[error("{path}: file is empty (expected a positive multiple of the {CIFAR_RECORD_BYTES}-byte CIFAR-10 record)")]
    CifarEmpty { path: PathBuf },

    #[error("{path}: record {record} has label {label}, expected a label below {classes} (the number of classes)")]
    LabelOutOfRange {
        path: PathBuf,
        record: usize,
        label: u32,
        classes: usize,
    },

    #[error("{path}: {problem}")]
    BadClassNames { path: PathBuf, problem: String },

    #[error("{what}: val_split {val_split} must be smaller than the {len} available training samples (it is the number of samples held out for validation)")]
    ValSplitTooLarge {
        what: String,
        val_split: usize,
        len: usize,
    },

    #[error("{path}: no images in this class folder (expected files ending in .png, .jpg, .jpeg, .bmp, .gif, .tif, .tiff or .webp)")]
    NoImages { path: PathBuf },

    #[error("{path}: cannot decode image: {reason}")]
    BadImage { path: PathBuf, reason: String },

    #[error("{path}: class folder {class:?} does not exist in the training folder {train:?} (expected the same class folders in train/ and val/)")]
    UnknownValClass {
        path: PathBuf,
        class: String,
        train: PathBuf,
    },

    #[error("{path}: exists; refusing to overwrite it (pass overwrite = true to replace the data files)")]
    WouldOverwrite { path: PathBuf },

    #[error("{what}: cannot write {channels}x{height}x{width} images as CIFAR-10 binary (expected 3x32x32)")]
    NotCifarShape {
        what: String,
        channels: usize,
        height: usize,
        width: usize,
    },

    #[error("{what}: {problem}")]
    Invalid { what: String, problem: String },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            cause,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, problem: impl Into<String>) -> Self {
        DataError::Invalid {
            what: what.into(),
            problem: problem.into(),
        }
    }
}
