//! The data layer: datasets in memory, their loaders from disk, augmentation and the
//! batch loader that feeds training.
//!
//! Shapes use the crate's letters: B batch, C channels, S_h x S_w image height and width
//! (S x S when square).
//!
//! - [`cifar`]: CIFAR-10 binary layout (data_batch_*.bin, test_batch.bin, batches.meta.txt);
//! - [`image_folder`]: torchvision's ImageFolder layout (one subfolder of images per class);
//! - [`image_file`]: one image file decoded by content (ImageFolder and `vitk predict`);
//! - [`fingerprint`]: what identifies a loaded data set (counts, classes, first records);
//! - [`synthetic`]: a generated 10-class 32x32 set for quick end-to-end runs;
//! - [`augment`]: random crop with zero padding, horizontal flip, normalisation;
//! - [`pixel_ops`]: AutoAugment / RandAugment's pixel operations in u8, PIL's arithmetic;
//! - [`auto_augment`]: the policy (none, AutoAugment CIFAR-10, RandAugment) and its parser;
//! - [`rand_augment`]: RandAugment with timm's semantics (`rand-m9-mstd0.5-inc1`);
//! - [`random_erasing`]: timm's per-pixel random erasing on normalised images;
//! - [`repeat_sampler`]: repeated augmentation's epoch order (DeiT's RASampler);
//! - [`recipe`]: the recipe beyond crop/flip and the per-sample pipeline;
//! - [`loader`]: deterministic, prefetching batch loader and the evaluation iterator.

pub mod augment;
pub mod auto_augment;
pub mod cifar;
mod error;
pub mod fingerprint;
pub mod image_file;
pub mod image_folder;
pub mod loader;
pub mod masking;
pub mod pixel_ops;
pub mod rand_augment;
pub mod random_erasing;
pub mod recipe;
pub mod repeat_sampler;
mod resize;
pub mod rng;
pub mod synthetic;

use crate::model::ImageSize;
use std::path::Path;

pub use augment::{augment_into, to_tensor, Normalize};
pub use auto_augment::AutoAugment;
pub use error::{DataError, CIFAR_RECORD_BYTES};
pub use loader::{eval_batches, Batch, BatchLoader, EvalBatches, LoaderConfig};
pub use rand_augment::RandAugment;
pub use recipe::AugmentRecipe;

/// A labelled image set held in memory as bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// Pixels, [n, C, S_h, S_w]: each image is C planes of S_h x S_w bytes (CHW, row-major).
    pub images: Vec<u8>,
    /// Labels, `[n]`; each is an index into `classes`.
    pub labels: Vec<u16>,
    /// Class names, `[K]`; `classes[k]` names label `k`.
    pub classes: Vec<String>,
    /// C: planes per image (3 for RGB).
    pub channels: usize,
    /// S_h x S_w: image height and width in pixels.
    pub size: ImageSize,
}

impl Dataset {
    /// Checks that the parts agree (pixel count, label count, label range) and builds the set.
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u16>,
        classes: Vec<String>,
        channels: usize,
        size: impl Into<ImageSize>,
    ) -> Result<Self, DataError> {
        let size = size.into();
        let ds = Dataset {
            images,
            labels,
            classes,
            channels,
            size,
        };
        ds.validate("dataset")?;
        Ok(ds)
    }

    /// An empty set with the given classes and image shape (e.g. "no validation data").
    pub fn empty(classes: Vec<String>, channels: usize, size: impl Into<ImageSize>) -> Self {
        let size = size.into();
        Dataset {
            images: Vec::new(),
            labels: Vec::new(),
            classes,
            channels,
            size,
        }
    }

    /// Number of images n.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image: C * S_h * S_w.
    pub fn image_len(&self) -> usize {
        self.channels * self.size.pixels()
    }

    /// Image `i` as [C, S_h, S_w] bytes. Panics if `i >= len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// K: number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Images per class, `[K]`.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// The images at `indices`, in that order, as a new set with the same classes.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let n = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            images,
            labels,
            classes: self.classes.clone(),
            channels: self.channels,
            size: self.size,
        }
    }

    /// Checks the invariants every consumer relies on; `what` names the set in errors.
    pub fn validate(&self, what: &str) -> Result<(), DataError> {
        if self.channels == 0 || self.size.pixels() == 0 {
            return Err(DataError::invalid(
                what,
                format!(
                    "image shape {}x{}x{} has a zero dimension (expected C, S_h, S_w >= 1)",
                    self.channels, self.size.height, self.size.width
                ),
            ));
        }
        let expected = self.labels.len() * self.image_len();
        if self.images.len() != expected {
            return Err(DataError::invalid(
                what,
                format!(
                    "{} pixel bytes for {} labels of {}x{}x{} images (expected {expected})",
                    self.images.len(),
                    self.labels.len(),
                    self.channels,
                    self.size.height,
                    self.size.width
                ),
            ));
        }
        if let Some((i, &l)) = self
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= self.classes.len())
        {
            return Err(DataError::invalid(
                what,
                format!(
                    "sample {i} has label {l}, expected a label below {} (the number of classes)",
                    self.classes.len()
                ),
            ));
        }
        Ok(())
    }
}

/// Training and validation sets, and where the validation set came from.
#[derive(Clone, Debug)]
pub struct Splits {
    pub train: Dataset,
    pub val: Dataset,
    /// Where validation comes from, said plainly for logs and reports, e.g.
    /// "test_batch.bin (10000 records)" or
    /// "held out: last 5000 of 50000 training records (no test_batch.bin)".
    pub val_source: String,
    /// What the caller should tell the user about data it accepted but that is not whole,
    /// e.g. a CIFAR-10 directory with missing batches read with `allow_partial`.
    pub warnings: Vec<String>,
}

/// Loads a data directory, detecting its layout:
/// - CIFAR-10 binary when any of data_batch_1.bin..data_batch_5.bin is present
///   (see [`cifar::load_cifar_dir`]); images are resized to `size` when it is not 32x32;
/// - otherwise an ImageFolder when the directory has subfolders
///   (see [`image_folder::load_image_folder`]), images resized to `size`.
///
/// `val_split` is the number of training samples held out for validation when the
/// directory has no validation split of its own (`None`: [`default_val_split`]; 0: none).
/// `allow_partial` accepts a CIFAR-10 directory with some of its five training batches
/// missing (a warning in [`Splits::warnings`]); without it that is an error.
pub fn load(
    dir: &Path,
    size: impl Into<ImageSize>,
    val_split: Option<usize>,
    allow_partial: bool,
) -> Result<Splits, DataError> {
    let size = size.into();
    check_size(dir, size)?;
    if !dir.exists() {
        return Err(DataError::MissingDir {
            path: dir.to_path_buf(),
        });
    }
    if !dir.is_dir() {
        return Err(DataError::NotADir {
            path: dir.to_path_buf(),
        });
    }
    if cifar::is_cifar_dir(dir) {
        let splits = cifar::load_cifar_dir(dir, val_split, allow_partial)?;
        if size == ImageSize::square(cifar::SIDE) {
            return Ok(splits);
        }
        return Ok(Splits {
            train: resize::resize_dataset(&splits.train, size),
            val: resize::resize_dataset(&splits.val, size),
            val_source: splits.val_source,
            warnings: splits.warnings,
        });
    }
    image_folder::load_image_folder(dir, size, val_split)
}

/// Loads images for pre-training, where labels are not needed: anything [`load`] reads (its
/// labels are kept and go unused), or a folder of image files with no class subfolders
/// ([`image_folder::load_flat_folder`]: one class, validation held out by `val_split`).
pub fn load_unlabelled(
    dir: &Path,
    size: impl Into<ImageSize>,
    val_split: Option<usize>,
    allow_partial: bool,
) -> Result<Splits, DataError> {
    let size = size.into();
    if dir.is_dir() && !cifar::is_cifar_dir(dir) && image_folder::is_flat_folder(dir) {
        check_size(dir, size)?;
        return image_folder::load_flat_folder(dir, size, val_split);
    }
    load(dir, size, val_split, allow_partial)
}

/// An image size with a zero side is refused, naming the data it was asked for.
fn check_size(dir: &Path, size: ImageSize) -> Result<(), DataError> {
    if size.pixels() == 0 {
        return Err(DataError::invalid(
            dir.display().to_string(),
            format!("image size {size} requested (expected sides >= 1)"),
        ));
    }
    Ok(())
}

/// Validation records held out when none is asked for: 10% of the training records, at
/// most 5000 (the usual 45,000 / 5,000 split of CIFAR-10's training set).
pub fn default_val_split(train_records: usize) -> usize {
    (train_records / 10).min(5000)
}
