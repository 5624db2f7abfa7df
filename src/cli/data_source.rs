//! The data of a run: where it is, and whether it is still the data the run started on.
//! A new run records its data directory as an absolute path with the data's fingerprint
//! (`vitk::data::fingerprint`); `--resume` finds the data at that path, or at `--data` when
//! it moved, checks the fingerprint and loads it.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use vitk::data::fingerprint::Fingerprint;
use vitk::data::{self, synthetic, Splits};
use vitk::model::ImageSize;
use vitk::train::{DataSource, RunDir, TrainConfig};

/// Loads `--data` for a new run, printing the loader's warnings. `unlabelled` (pre-training):
/// a folder of images with no class subfolders is accepted too.
pub fn load_new(
    path: &Path,
    side: ImageSize,
    val_split: Option<usize>,
    allow_partial: bool,
    unlabelled: bool,
) -> Result<Splits> {
    let splits = load(path, side, val_split, allow_partial, unlabelled)?;
    warn(&splits);
    Ok(splits)
}

/// `data::load`, or `data::load_unlabelled` for a pre-training run.
fn load(
    path: &Path,
    side: ImageSize,
    val_split: Option<usize>,
    allow_partial: bool,
    unlabelled: bool,
) -> Result<Splits> {
    Ok(if unlabelled {
        data::load_unlabelled(path, side, val_split, allow_partial)?
    } else {
        data::load(path, side, val_split, allow_partial)?
    })
}

/// Records in a new run's config where its data is, as an absolute path (so that the run
/// resumes from any working directory), and what it is (its fingerprint).
pub fn pin(source: &mut DataSource, splits: &Splits) -> Result<()> {
    if let DataSource::Dir {
        path, fingerprint, ..
    } = source
    {
        *path = absolute(path)?;
        *fingerprint = Some(Fingerprint::of(splits));
    }
    Ok(())
}

/// Loads the data of the run being resumed: at the path in its config, or at `moved_to`
/// (`--data`) when the data moved, which must have the fingerprint recorded at the start;
/// config.json then names the new place (when `record_move`: not for `--check`).
pub fn load_for_resume(
    run: &RunDir,
    cfg: &mut TrainConfig,
    moved_to: Option<&Path>,
    record_move: bool,
) -> Result<Splits> {
    let side = cfg.model.image_size;
    let unlabelled = cfg.pretrain.is_some();
    let config = run.config_path();
    let (path, val_split, allow_partial, recorded) = match &cfg.data {
        DataSource::Synthetic { train, val, seed } => {
            if let Some(p) = moved_to {
                bail!(
                    "--data {}: the run in {} trains on the built-in synthetic set (see {}), which no directory can replace",
                    p.display(),
                    run.path.display(),
                    config.display()
                );
            }
            if side != ImageSize::square(synthetic::SIDE) {
                bail!(
                    "{}: the synthetic set is {1}x{1}, but the model takes {2}x{3} images",
                    config.display(),
                    synthetic::SIDE,
                    side.height,
                    side.width
                );
            }
            return Ok(synthetic::generate_splits(*train, *val, *seed));
        }
        DataSource::Dir {
            path,
            val_split,
            allow_partial,
            fingerprint,
        } => (
            path.clone(),
            *val_split,
            *allow_partial,
            fingerprint.clone(),
        ),
    };
    let Some(new) = moved_to else {
        check_recorded_path(&path, &config)?;
        let splits = load(&path, side, val_split, allow_partial, unlabelled)?;
        warn(&splits);
        if let Some(expected) = &recorded {
            let diff = Fingerprint::of(&splits).differences(expected);
            if !diff.is_empty() {
                bail!(
                    "{}: the data changed since the run started ({} records its fingerprint): {}. Resuming on other data would not continue the same run",
                    path.display(),
                    config.display(),
                    diff.join("; ")
                );
            }
        }
        return Ok(splits);
    };
    let Some(expected) = recorded else {
        bail!(
            "--data {}: {} records no fingerprint of the run's data (written by an older vitk), so other data cannot be checked against it; resume without --data, with the data at {}",
            new.display(),
            config.display(),
            path.display()
        );
    };
    let splits = load(new, side, val_split, allow_partial, unlabelled)?;
    warn(&splits);
    let diff = Fingerprint::of(&splits).differences(&expected);
    if !diff.is_empty() {
        bail!(
            "--data {}: not the data this run started on ({} records its fingerprint): {}",
            new.display(),
            config.display(),
            diff.join("; ")
        );
    }
    let new = absolute(new)?;
    if new != path && record_move {
        eprintln!(
            "data moved: {} -> {} (same fingerprint); {} updated",
            path.display(),
            new.display(),
            config.display()
        );
        if let DataSource::Dir { path, .. } = &mut cfg.data {
            *path = new;
        }
        run.write_config(cfg).map_err(anyhow::Error::msg)?;
    }
    Ok(splits)
}

/// The recorded data path must exist: say why not, and what to do.
fn check_recorded_path(path: &Path, config: &Path) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    if path.is_relative() {
        let cwd = std::env::current_dir()
            .map_or_else(|_| PathBuf::from("."), |d| d.to_path_buf())
            .join(path);
        bail!(
            "{}: its \"data\" path {} is relative (written by an older vitk) and {} does not exist: resume from the directory the run was started in",
            config.display(),
            path.display(),
            cwd.display()
        );
    }
    bail!(
        "{}: the run's data directory (recorded in {}) does not exist; if the data moved, give its new place with --resume {} --data NEW_DIR (checked against the data's fingerprint)",
        path.display(),
        config.display(),
        config
            .parent()
            .map_or_else(|| ".".into(), |p| p.display().to_string())
    );
}

/// `path` made absolute, symbolic links resolved.
fn absolute(path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path).with_context(|| {
        format!(
            "--data {}: cannot resolve it to an absolute path",
            path.display()
        )
    })
}

/// Prints what the loader accepted but wants the user to know.
pub fn warn(splits: &Splits) {
    for w in &splits.warnings {
        eprintln!("warning: {w}");
    }
}
