//! torchvision's ImageFolder layout: `dir/<class>/<image>`, one subfolder per class.
//!
//! - Classes are the subfolder names sorted by byte order (= Unicode code point order,
//!   as Python's `sorted`); label k is the k-th name.
//! - Images are the files under a class folder (recursively, sorted by name) whose
//!   extension is .png .jpg .jpeg .bmp .gif .tif .tiff or .webp (any case); other files
//!   and names starting with '.' are ignored. Files are decoded by content, not extension.
//! - Every image is decoded by content ([`super::image_file`]), converted to RGB (grey
//!   replicated, alpha dropped, as PIL's `convert("RGB")`) and resized to S x S with the
//!   Triangle filter (bilinear, antialiased when downscaling), ignoring the aspect ratio.
//! - Splits: when `dir/train/` exists it is the training folder, and `dir/val/` (or else
//!   `dir/test/`) the validation folder, whose class folders must be among train's.
//!   Without such a folder `val_split` images are held out of the training folder:
//!   evenly spaced positions in (class, file name) order, i.e. about every (n/val_split)-th
//!   image, which takes about the same fraction from every class and needs no seed.
//!
//! All images are decoded into memory, in parallel with rayon.

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{image_file, DataError, Dataset, Splits};
use crate::model::ImageSize;

/// File extensions read as images (compared lowercase).
pub const IMAGE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp"];

/// Deeper nesting than this inside a class folder is ignored (guards symlink loops).
const MAX_DEPTH: usize = 16;

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn is_image_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| {
        let e = e.to_string_lossy().to_ascii_lowercase();
        IMAGE_EXTENSIONS.contains(&e.as_str())
    })
}

/// Visible entries of `dir`, sorted by name.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let rd = fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        if !is_hidden(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Image files under `dir`: its own files first (sorted), then its subfolders' (sorted).
fn collect_images(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let entries = sorted_entries(dir)?;
    let (dirs, files): (Vec<PathBuf>, Vec<PathBuf>) = entries.into_iter().partition(|p| p.is_dir());
    out.extend(files.into_iter().filter(|p| is_image_file(p)));
    if depth < MAX_DEPTH {
        for d in dirs {
            collect_images(&d, depth + 1, out)?;
        }
    }
    Ok(())
}

/// One class folder: its name and its image files.
struct ClassDir {
    name: String,
    files: Vec<PathBuf>,
}

/// Scans `dir` for class subfolders, each with at least one image.
fn scan_classes(dir: &Path) -> Result<Vec<ClassDir>, DataError> {
    if !dir.exists() {
        return Err(DataError::MissingDir { path: dir.into() });
    }
    if !dir.is_dir() {
        return Err(DataError::NotADir { path: dir.into() });
    }
    let entries = sorted_entries(dir)?;
    if entries.is_empty() {
        return Err(DataError::EmptyDir { path: dir.into() });
    }
    let subdirs: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
    if subdirs.is_empty() {
        let examples: Vec<String> = entries
            .iter()
            .take(3)
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        let more = if entries.len() > examples.len() {
            ", ..."
        } else {
            ""
        };
        return Err(DataError::UnknownLayout {
            path: dir.into(),
            found: format!("{} file(s) ({}{more})", entries.len(), examples.join(", ")),
        });
    }
    if subdirs.len() > u16::MAX as usize + 1 {
        return Err(DataError::invalid(
            dir.display().to_string(),
            format!(
                "{} class folders (expected at most {})",
                subdirs.len(),
                u16::MAX as usize + 1
            ),
        ));
    }
    let mut classes = Vec::with_capacity(subdirs.len());
    for d in subdirs {
        let mut files = Vec::new();
        collect_images(d, 0, &mut files)?;
        if files.is_empty() {
            return Err(DataError::NoImages { path: d.clone() });
        }
        let name = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        classes.push(ClassDir { name, files });
    }
    Ok(classes)
}

/// Decodes `files` (path, label) into a set; in parallel, reporting the first bad file
/// in file order so that the error does not depend on thread timing.
fn decode_all(
    files: &[(PathBuf, u16)],
    classes: &[String],
    size: ImageSize,
) -> Result<Dataset, DataError> {
    let len = 3 * size.pixels();
    let mut images = vec![0u8; files.len() * len];
    let results: Vec<Result<(), DataError>> = images
        .par_chunks_mut(len)
        .zip(files.par_iter())
        .map(|(dst, (path, _))| image_file::decode_into(path, size, dst))
        .collect();
    if let Some(err) = results.into_iter().find_map(Result::err) {
        return Err(err);
    }
    Ok(Dataset {
        images,
        labels: files.iter().map(|(_, l)| *l).collect(),
        classes: classes.to_vec(),
        channels: 3,
        size,
    })
}

/// Evenly spaced positions `0..n`, `v` of them (`0 < v < n`): floor((2j+1) n / 2v).
/// Consecutive values differ by more than 1 before flooring, so they are distinct.
fn held_out_positions(n: usize, v: usize) -> Vec<usize> {
    (0..v).map(|j| (2 * j + 1) * n / (2 * v)).collect()
}

/// Loads an ImageFolder directory (see the module documentation for the rules).
pub fn load_image_folder(
    dir: &Path,
    size: impl Into<ImageSize>,
    val_split: Option<usize>,
) -> Result<Splits, DataError> {
    let size = size.into();
    if size.pixels() == 0 {
        return Err(DataError::invalid(
            dir.display().to_string(),
            format!("image size {size} requested (expected sides >= 1)"),
        ));
    }
    let train_dir = dir.join("train");
    let has_train_dir = train_dir.is_dir();
    let root = if has_train_dir {
        train_dir
    } else {
        dir.to_path_buf()
    };
    let train_classes = scan_classes(&root)?;
    let classes: Vec<String> = train_classes.iter().map(|c| c.name.clone()).collect();
    let train_files: Vec<(PathBuf, u16)> = train_classes
        .iter()
        .enumerate()
        .flat_map(|(k, c)| c.files.iter().map(move |f| (f.clone(), k as u16)))
        .collect();

    let val_dir = ["val", "test"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| has_train_dir && p.is_dir());
    if let Some(val_dir) = val_dir {
        let mut val_files = Vec::new();
        for c in scan_classes(&val_dir)? {
            let k = classes
                .binary_search(&c.name)
                .map_err(|_| DataError::UnknownValClass {
                    path: val_dir.join(&c.name),
                    class: c.name.clone(),
                    train: root.clone(),
                })?;
            val_files.extend(c.files.into_iter().map(|f| (f, k as u16)));
        }
        let train = decode_all(&train_files, &classes, size)?;
        let val = decode_all(&val_files, &classes, size)?;
        let name = val_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let val_source = format!("{name}/ folder ({} images)", val.len());
        return Ok(Splits {
            train,
            val,
            val_source,
            warnings: Vec::new(),
        });
    }

    hold_out(
        &train_files,
        classes,
        size,
        val_split,
        &root,
        "(class, file name) order",
    )
}

/// The images `files` decoded into a training set with `val_split` of them held out for
/// validation (None: [`super::default_val_split`]) at evenly spaced positions of `order`.
fn hold_out(
    files: &[(PathBuf, u16)],
    classes: Vec<String>,
    size: ImageSize,
    val_split: Option<usize>,
    root: &Path,
    order: &str,
) -> Result<Splits, DataError> {
    let n = files.len();
    let val_split = val_split.unwrap_or_else(|| super::default_val_split(n));
    if val_split == 0 {
        let train = decode_all(files, &classes, size)?;
        return Ok(Splits {
            val: Dataset::empty(classes, 3, size),
            train,
            val_source: "none: no val/ folder and val_split = 0".into(),
            warnings: Vec::new(),
        });
    }
    if val_split >= n {
        return Err(DataError::ValSplitTooLarge {
            what: root.display().to_string(),
            val_split,
            len: n,
        });
    }
    let all = decode_all(files, &classes, size)?;
    let held = held_out_positions(n, val_split);
    let mut is_val = vec![false; n];
    for &p in &held {
        is_val[p] = true;
    }
    let kept: Vec<usize> = (0..n).filter(|&i| !is_val[i]).collect();
    Ok(Splits {
        train: all.select(&kept),
        val: all.select(&held),
        val_source: format!(
            "held out: {val_split} of {n} images, evenly spaced in {order} (no val/ folder)"
        ),
        warnings: Vec::new(),
    })
}

/// Whether `dir` is a folder of image files with no (visible) subfolders.
pub fn is_flat_folder(dir: &Path) -> bool {
    sorted_entries(dir).is_ok_and(|entries| {
        !entries.iter().any(|p| p.is_dir()) && entries.iter().any(|p| is_image_file(p))
    })
}

/// A folder of image files with no class subfolders, for pre-training without labels: one
/// class, `images`; the images are the folder's own image files, sorted by name (other files
/// and hidden names are ignored), decoded and resized as an ImageFolder's.
pub fn load_flat_folder(
    dir: &Path,
    size: impl Into<ImageSize>,
    val_split: Option<usize>,
) -> Result<Splits, DataError> {
    let size = size.into();
    let entries = sorted_entries(dir)?;
    let files: Vec<(PathBuf, u16)> = entries
        .into_iter()
        .filter(|p| p.is_file() && is_image_file(p))
        .map(|p| (p, 0))
        .collect();
    if files.is_empty() {
        return Err(DataError::NoImages { path: dir.into() });
    }
    hold_out(
        &files,
        vec!["images".into()],
        size,
        val_split,
        dir,
        "file name order",
    )
}

#[cfg(test)]
mod tests {
    use super::held_out_positions;

    #[test]
    fn held_out_positions_are_distinct_and_spread() {
        for n in 2..60 {
            for v in 1..n {
                let p = held_out_positions(n, v);
                assert_eq!(p.len(), v);
                assert!(p.windows(2).all(|w| w[0] < w[1]), "n={n} v={v} {p:?}");
                assert!(*p.last().unwrap() < n);
            }
        }
        assert_eq!(held_out_positions(10, 2), vec![2, 7]);
    }
}
