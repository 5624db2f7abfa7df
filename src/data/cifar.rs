//! CIFAR-10 binary layout (the "binary version" of Krizhevsky's release):
//! `data_batch_1.bin`..`data_batch_5.bin` (training), optional `test_batch.bin`,
//! optional `batches.meta.txt` (class names, one per line). Each file is a sequence of
//! 3073-byte records: 1 label byte, then 1024 R, 1024 G, 1024 B bytes (32x32, row-major),
//! which is exactly the [C, S, S] layout of [`Dataset`], so records are copied as they are.

use std::fs;
use std::path::{Path, PathBuf};

use super::{DataError, Dataset, Splits, CIFAR_RECORD_BYTES};
use crate::model::ImageSize;

/// S of CIFAR-10 images.
pub const SIDE: usize = 32;
/// C of CIFAR-10 images.
pub const CHANNELS: usize = 3;
/// Training files of the layout: data_batch_1.bin..data_batch_5.bin.
pub const MAX_TRAIN_FILES: usize = 5;
pub const TEST_FILE: &str = "test_batch.bin";
pub const META_FILE: &str = "batches.meta.txt";
/// Class names used when `batches.meta.txt` is absent.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

const PIXELS: usize = CIFAR_RECORD_BYTES - 1;

/// Name of training file `k` (1-based).
pub fn train_file_name(k: usize) -> String {
    format!("data_batch_{k}.bin")
}

/// True when `dir` holds at least one of data_batch_1.bin..data_batch_5.bin.
pub fn is_cifar_dir(dir: &Path) -> bool {
    (1..=MAX_TRAIN_FILES).any(|k| dir.join(train_file_name(k)).is_file())
}

/// Reads the class names of `batches.meta.txt`, or the CIFAR-10 names when it is absent.
/// Trailing blank lines are ignored (the official file ends with some).
fn read_classes(dir: &Path) -> Result<Vec<String>, DataError> {
    let path = dir.join(META_FILE);
    if !path.exists() {
        return Ok(CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect());
    }
    let text = fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
    let mut names: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    while names.last().is_some_and(|n| n.is_empty()) {
        names.pop();
    }
    if names.is_empty() {
        return Err(DataError::BadClassNames {
            path,
            problem: "no class names (expected one class name per line)".into(),
        });
    }
    if let Some(i) = names.iter().position(|n| n.is_empty()) {
        return Err(DataError::BadClassNames {
            path,
            problem: format!("line {} is empty (expected one class name per line)", i + 1),
        });
    }
    Ok(names)
}

/// Reads one record file into a [n, 3, 32, 32] set, checking its size and labels.
fn read_records(path: &Path, classes: &[String]) -> Result<Dataset, DataError> {
    let size = fs::metadata(path)
        .map_err(|e| DataError::io(path, e))?
        .len();
    if size == 0 {
        return Err(DataError::CifarEmpty { path: path.into() });
    }
    if !size.is_multiple_of(CIFAR_RECORD_BYTES as u64) {
        return Err(DataError::CifarSize {
            path: path.into(),
            size,
        });
    }
    let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
    // The file may have changed between stat and read; check what was actually read.
    if bytes.is_empty() || !bytes.len().is_multiple_of(CIFAR_RECORD_BYTES) {
        return Err(DataError::CifarSize {
            path: path.into(),
            size: bytes.len() as u64,
        });
    }
    let n = bytes.len() / CIFAR_RECORD_BYTES;
    let mut images = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (record, chunk) in bytes.chunks_exact(CIFAR_RECORD_BYTES).enumerate() {
        let label = chunk[0];
        if label as usize >= classes.len() {
            return Err(DataError::LabelOutOfRange {
                path: path.into(),
                record,
                label: label as u32,
                classes: classes.len(),
            });
        }
        labels.push(label as u16);
        images.extend_from_slice(&chunk[1..]);
    }
    Ok(Dataset {
        images,
        labels,
        classes: classes.to_vec(),
        channels: CHANNELS,
        size: ImageSize::square(SIDE),
    })
}

/// Appends `b` to `a` (same classes and shape).
fn append(a: &mut Dataset, b: Dataset) {
    a.images.extend_from_slice(&b.images);
    a.labels.extend_from_slice(&b.labels);
}

/// Loads a CIFAR-10 binary directory.
///
/// Training records: data_batch_1.bin..data_batch_5.bin, in that order. All five must be
/// present unless `allow_partial`, which reads those that exist (at least one) and says so
/// in [`Splits::warnings`]: a download or copy that stopped half-way must not train on
/// part of the data unnoticed. Validation: `test_batch.bin` when present (`val_split` is then unused);
/// otherwise the LAST `val_split` training records are held out (deterministic; the
/// official files are already shuffled). `val_split = 0` without `test_batch.bin` gives
/// an empty validation set. Errors name the file for a size that is not a positive
/// multiple of 3073 bytes, a label not below the number of class names, or
/// `val_split >= number of training records`. `None` holds out [`super::default_val_split`].
pub fn load_cifar_dir(
    dir: &Path,
    val_split: Option<usize>,
    allow_partial: bool,
) -> Result<Splits, DataError> {
    if !dir.is_dir() {
        return Err(if dir.exists() {
            DataError::NotADir { path: dir.into() }
        } else {
            DataError::MissingDir { path: dir.into() }
        });
    }
    let classes = read_classes(dir)?;
    let (files, missing): (Vec<PathBuf>, Vec<PathBuf>) = (1..=MAX_TRAIN_FILES)
        .map(|k| dir.join(train_file_name(k)))
        .partition(|p| p.exists());
    if files.is_empty() {
        return Err(DataError::NoCifarFiles { path: dir.into() });
    }
    let names = |paths: &[PathBuf]| -> String {
        paths
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !missing.is_empty() && !allow_partial {
        return Err(DataError::CifarPartial {
            path: dir.into(),
            missing: names(&missing),
            present: files.len(),
        });
    }
    let mut train = Dataset::empty(classes.clone(), CHANNELS, ImageSize::square(SIDE));
    for f in &files {
        append(&mut train, read_records(f, &classes)?);
    }
    let warnings = if missing.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "{}: training on {} of {MAX_TRAIN_FILES} CIFAR-10 training batches ({}: {} records); {} missing (allowed by --allow-partial)",
            dir.display(),
            files.len(),
            names(&files),
            train.len(),
            names(&missing)
        )]
    };
    let test_path = dir.join(TEST_FILE);
    if test_path.exists() {
        let val = read_records(&test_path, &classes)?;
        let val_source = format!("{TEST_FILE} ({} records)", val.len());
        return Ok(Splits {
            train,
            val,
            val_source,
            warnings,
        });
    }
    let n = train.len();
    let val_split = val_split.unwrap_or_else(|| super::default_val_split(n));
    if val_split == 0 {
        return Ok(Splits {
            train,
            val: Dataset::empty(classes, CHANNELS, ImageSize::square(SIDE)),
            val_source: format!("none: no {TEST_FILE} and val_split = 0"),
            warnings,
        });
    }
    if val_split >= n {
        return Err(DataError::ValSplitTooLarge {
            what: dir.display().to_string(),
            val_split,
            len: n,
        });
    }
    let keep = n - val_split;
    let val = Dataset {
        images: train.images.split_off(keep * PIXELS),
        labels: train.labels.split_off(keep),
        classes,
        channels: CHANNELS,
        size: ImageSize::square(SIDE),
    };
    Ok(Splits {
        train,
        val,
        val_source: format!("held out: last {val_split} of {n} training records (no {TEST_FILE})"),
        warnings,
    })
}

/// Checks that a set can be stored as CIFAR-10 records.
fn check_writable(ds: &Dataset, what: &str) -> Result<(), DataError> {
    ds.validate(what)?;
    if ds.channels != CHANNELS || ds.size != ImageSize::square(SIDE) {
        return Err(DataError::NotCifarShape {
            what: what.into(),
            channels: ds.channels,
            height: ds.size.height,
            width: ds.size.width,
        });
    }
    if ds.classes.len() > 256 {
        return Err(DataError::invalid(
            what,
            format!(
                "{} classes cannot be stored in a one-byte label (expected at most 256)",
                ds.classes.len()
            ),
        ));
    }
    if let Some(c) = ds
        .classes
        .iter()
        .find(|c| c.trim().is_empty() || c.trim() != c.as_str() || c.contains('\n'))
    {
        return Err(DataError::invalid(
            what,
            format!("class name {c:?} cannot be written one per line (expected a non-empty name without surrounding spaces or newlines)"),
        ));
    }
    Ok(())
}

/// Serialises records [1 label byte + 3072 pixels] of images `range`.
fn records(ds: &Dataset, range: std::ops::Range<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(range.len() * CIFAR_RECORD_BYTES);
    for i in range {
        out.push(ds.labels[i] as u8); // < 256 classes checked by check_writable
        out.extend_from_slice(ds.image(i));
    }
    out
}

/// Writes one data file atomically (see [`crate::atomic`]).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    crate::atomic::write_atomic(path, bytes).map_err(|e| DataError::io(path, e))
}

/// Writes `train` (and `val` as `test_batch.bin` when given) in the CIFAR-10 binary
/// layout into `dir` (created if missing), with `batches.meta.txt` holding the class names.
///
/// The training records are split evenly over data_batch_1.bin..data_batch_5.bin, so at
/// least 5 are needed (the loader expects all five files). Only 3x32x32 sets with at most
/// 256 classes can be written. Each file is written atomically. Unless `overwrite` is
/// true, nothing is written when any CIFAR file (data_batch_*.bin, test_batch.bin,
/// batches.meta.txt) already exists in `dir`; with `overwrite`, a stale test_batch.bin is
/// removed so the directory holds exactly this data. Returns the paths written.
pub fn write_cifar_dir(
    train: &Dataset,
    val: Option<&Dataset>,
    dir: &Path,
    overwrite: bool,
) -> Result<Vec<PathBuf>, DataError> {
    check_writable(train, "training set")?;
    if train.len() < MAX_TRAIN_FILES {
        return Err(DataError::invalid(
            "training set",
            format!(
                "{} images cannot fill data_batch_1.bin..data_batch_{MAX_TRAIN_FILES}.bin (expected at least {MAX_TRAIN_FILES})",
                train.len()
            ),
        ));
    }
    if let Some(v) = val {
        check_writable(v, "validation set")?;
        if v.classes != train.classes {
            return Err(DataError::invalid(
                "validation set",
                format!(
                    "classes {:?} differ from the training classes {:?} (one batches.meta.txt serves both)",
                    v.classes, train.classes
                ),
            ));
        }
        if v.is_empty() {
            return Err(DataError::invalid(
                "validation set",
                "no images (an empty test_batch.bin would not load; pass None instead)",
            ));
        }
    }
    let existing: Vec<PathBuf> = (1..=MAX_TRAIN_FILES)
        .map(|k| dir.join(train_file_name(k)))
        .chain([dir.join(TEST_FILE), dir.join(META_FILE)])
        .filter(|p| p.exists())
        .collect();
    if let (false, Some(first)) = (overwrite, existing.first()) {
        return Err(DataError::WouldOverwrite {
            path: first.clone(),
        });
    }
    fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;

    let n = train.len();
    let files = MAX_TRAIN_FILES;
    let mut written = Vec::new();
    for k in 0..files {
        let path = dir.join(train_file_name(k + 1));
        write_atomic(&path, &records(train, k * n / files..(k + 1) * n / files))?;
        written.push(path);
    }
    let test_path = dir.join(TEST_FILE);
    match val {
        Some(v) => {
            write_atomic(&test_path, &records(v, 0..v.len()))?;
            written.push(test_path);
        }
        None if test_path.exists() => {
            fs::remove_file(&test_path).map_err(|e| DataError::io(&test_path, e))?
        }
        None => {}
    }
    let meta = dir.join(META_FILE);
    write_atomic(&meta, (train.classes.join("\n") + "\n").as_bytes())?;
    written.push(meta);
    Ok(written)
}
