//! How many images a data source holds, found without loading it (file sizes for CIFAR-10,
//! a count of image files for an ImageFolder), so that the memory of loading it (resized to
//! the model's side) and a batch larger than the set are refused before anything is read.

use super::config::DataSource;
use crate::data::cifar::{self, MAX_TRAIN_FILES, TEST_FILE};
use crate::data::image_folder::IMAGE_EXTENSIONS;
use crate::data::synthetic;
use crate::data::CIFAR_RECORD_BYTES;
use std::path::Path;

/// Images a source holds (at most: an ImageFolder's `test/` beside `val/` is counted too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceSize {
    /// Training images, validation images not held out of them included.
    pub train: usize,
    /// Images of a separate validation split (test_batch.bin, val/ or test/; the synthetic
    /// validation stream).
    pub val: usize,
    /// Channels of the loaded images.
    pub channels: usize,
    /// Side of the images on disk when they all have one (CIFAR-10, synthetic).
    pub side: Option<usize>,
}

/// Nesting followed inside a class folder, as the ImageFolder loader does.
const MAX_DEPTH: usize = 17;

/// The size of `source`, or None when it cannot be read (its loader then reports why).
pub fn source_size(source: &DataSource) -> Option<SourceSize> {
    match source {
        DataSource::Synthetic { train, val, .. } => Some(SourceSize {
            train: *train,
            val: *val,
            channels: synthetic::CHANNELS,
            side: Some(synthetic::SIDE),
        }),
        DataSource::Dir { path, .. } if cifar::is_cifar_dir(path) => {
            let records = |name: &str| {
                std::fs::metadata(path.join(name))
                    .map_or(0, |m| m.len() as usize / CIFAR_RECORD_BYTES)
            };
            Some(SourceSize {
                train: (1..=MAX_TRAIN_FILES)
                    .map(|k| records(&cifar::train_file_name(k)))
                    .sum(),
                val: records(TEST_FILE),
                channels: 3,
                side: Some(cifar::SIDE),
            })
        }
        DataSource::Dir { path, .. } => {
            let train_dir = path.join("train");
            let (train, val) = if train_dir.is_dir() {
                let val = ["val", "test"]
                    .iter()
                    .map(|d| count_images(&path.join(d), 0));
                (count_images(&train_dir, 0), val.sum())
            } else {
                (count_images(path, 0), 0)
            };
            (train > 0).then_some(SourceSize {
                train,
                val,
                channels: 3,
                side: None,
            })
        }
    }
}

/// Image files under `dir` (visible names, image extensions), recursively.
fn count_images(dir: &Path, depth: usize) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        })
        .map(|p| {
            if p.is_dir() {
                if depth < MAX_DEPTH {
                    count_images(&p, depth + 1)
                } else {
                    0
                }
            } else {
                let image = p.extension().is_some_and(|e| {
                    IMAGE_EXTENSIONS.contains(&e.to_string_lossy().to_ascii_lowercase().as_str())
                });
                usize::from(image)
            }
        })
        .sum()
}
