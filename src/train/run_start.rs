//! A run directory in use by this process: locked (run_lock.rs) before anything is written
//! in it. A new run whose start fails before its first checkpoint leaves nothing behind: the
//! guard removes what it created (the directory and the parents it made, or, in a directory
//! that existed empty, every entry; a log file it created elsewhere), so that the same
//! `--out` can be used again. A directory holding a saved state is always kept.

use super::run_dir::RunDir;
use super::run_lock::{RunLock, Stale};
use std::path::{Path, PathBuf};

/// A locked run directory; cleans up a failed new run on drop unless [`Self::keep`] was called.
#[derive(Debug)]
pub struct RunStart {
    pub dir: RunDir,
    /// None for a resumed run, or once the run is under way.
    cleanup: Option<Cleanup>,
    /// Held until the run ends (released on drop, after the cleanup).
    _lock: RunLock,
}

/// What a new run created, removed if it fails before saving a state.
#[derive(Debug, Default)]
struct Cleanup {
    /// Directories created for the run, innermost first.
    created_dirs: Vec<PathBuf>,
    /// Files created outside the run directory (an external log).
    files: Vec<PathBuf>,
}

impl RunStart {
    /// Creates (or takes, when it exists empty) the directory of a new run and locks it.
    pub fn create(path: &Path) -> Result<Self, String> {
        if path.exists() && !path.is_dir() {
            return Err(format!(
                "{}: exists and is not a directory (choose another --out)",
                path.display()
            ));
        }
        // The directories about to be made, innermost first.
        let created_dirs: Vec<PathBuf> = path
            .ancestors()
            .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
            .map(Path::to_path_buf)
            .collect();
        let undo = |dirs: &[PathBuf]| {
            for d in dirs {
                let _ = std::fs::remove_dir(d);
            }
        };
        std::fs::create_dir_all(path)
            .map_err(|e| format!("{}: cannot create run directory: {e}", path.display()))?;
        let (lock, _) = RunLock::acquire(path).inspect_err(|_| undo(&created_dirs))?;
        let dir = match RunDir::create(path) {
            Ok(dir) => dir,
            Err(e) => {
                drop(lock);
                undo(&created_dirs);
                return Err(e);
            }
        };
        Ok(Self {
            dir,
            cleanup: Some(Cleanup {
                created_dirs,
                files: Vec::new(),
            }),
            _lock: lock,
        })
    }

    /// Locks the directory of a run to resume (never cleaned up); also returns a stale lock
    /// left by a process that did not exit cleanly.
    pub fn resume(path: &Path) -> Result<(Self, Option<Stale>), String> {
        if !path.is_dir() {
            // RunDir::open names the missing files.
            RunDir::open(path)?;
        }
        let (lock, stale) = RunLock::acquire(path)?;
        let dir = RunDir::open(path)?;
        Ok((
            Self {
                dir,
                cleanup: None,
                _lock: lock,
            },
            stale,
        ))
    }

    /// A file this run created outside its directory, to remove if the start fails.
    pub fn created_file(&mut self, path: PathBuf) {
        if let Some(c) = &mut self.cleanup {
            c.files.push(path);
        }
    }

    /// The run got under way (or ended well): keep everything.
    pub fn keep(&mut self) {
        self.cleanup = None;
    }
}

impl Drop for RunStart {
    /// Runs before the fields drop, so under the lock.
    fn drop(&mut self) {
        let Some(c) = self.cleanup.take() else {
            return;
        };
        if self.dir.state_path().exists() {
            return;
        }
        for f in &c.files {
            let _ = std::fs::remove_file(f);
        }
        // The directory was empty when locked and stayed locked: every entry is this run's
        // (the lock file goes last, still locked).
        if let Ok(entries) = std::fs::read_dir(&self.dir.path) {
            for e in entries.flatten() {
                if e.file_name() != super::run_lock::LOCK_FILE {
                    let p = e.path();
                    let _ = if p.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                }
            }
        }
        let _ = std::fs::remove_file(self.dir.path.join(super::run_lock::LOCK_FILE));
        for d in &c.created_dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}
