//! One process per run directory: an exclusive advisory lock (flock, through std's
//! `File::try_lock`) on `RUN_DIR/train.lock`, taken before anything else is written there and
//! held until the process exits. The holder writes its pid into the file, so that a refused
//! process can name it. The lock dies with its process (even killed), so a lock file that
//! exists but is not locked is a leftover of a process that did not exit cleanly: it is
//! taken over, and reported.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Name of the lock file inside a run directory.
pub const LOCK_FILE: &str = "train.lock";

/// The lock of one run directory, released (and its file removed) on drop.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
}

/// A lock file found unlocked: the process that wrote it did not exit cleanly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stale {
    /// The pid it held (None when it could not be read).
    pub pid: Option<u32>,
}

impl RunLock {
    /// Locks the existing directory `dir`, or fails naming it and the pid of the process that
    /// holds it. Also returns the stale lock taken over, if there was one.
    pub fn acquire(dir: &Path) -> Result<(Self, Option<Stale>), String> {
        let path = dir.join(LOCK_FILE);
        // A holder removes the file while locked before it unlocks: a file locked here but
        // no longer at `path` was released meanwhile, so open again (a few times at most).
        for _ in 0..8 {
            let existed = path.exists();
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| format!("{}: cannot open the lock file: {e}", path.display()))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => return Err(in_use(dir, read_pid(&mut file))),
                Err(TryLockError::Error(e)) => {
                    return Err(format!("{}: cannot lock: {e}", path.display()));
                }
            }
            if !same_file(&file, &path) {
                continue;
            }
            let stale = existed.then(|| Stale {
                pid: read_pid(&mut file),
            });
            write_pid(&mut file)
                .map_err(|e| format!("{}: cannot write the lock file: {e}", path.display()))?;
            return Ok((Self { file, path }, stale));
        }
        Err(format!(
            "{}: the lock file keeps being replaced; is another process starting and stopping runs here?",
            path.display()
        ))
    }

    /// Fails, as [`Self::acquire`] would, when another process holds `dir`; writes nothing.
    pub fn check_free(dir: &Path) -> Result<(), String> {
        let Ok(mut file) = File::open(dir.join(LOCK_FILE)) else {
            return Ok(());
        };
        match file.try_lock_shared() {
            Err(TryLockError::WouldBlock) => Err(in_use(dir, read_pid(&mut file))),
            _ => Ok(()),
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Removed while still locked, so that no other process takes a lock on a file that
        // is about to disappear (see `acquire`); the lock goes with the handle.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

fn in_use(dir: &Path, pid: Option<u32>) -> String {
    let pid = pid.map_or("pid unknown".to_string(), |p| format!("pid {p}"));
    format!(
        "{}: run directory in use by another vitk process ({pid}); wait for it to finish or stop it (one process per run directory)",
        dir.display()
    )
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

fn write_pid(file: &mut File) -> std::io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_data()
}

/// Whether `path` still names the file `file` is open on.
#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &File, path: &Path) -> bool {
    path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_pid_and_a_stale_one_is_taken_over() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (lock, stale) = RunLock::acquire(tmp.path()).expect("first");
        assert_eq!(stale, None);
        let err = RunLock::acquire(tmp.path()).expect_err("second");
        assert!(
            err.contains(&format!("pid {}", std::process::id()))
                && err.contains(&tmp.path().display().to_string()),
            "{err}"
        );
        drop(lock);
        assert!(!tmp.path().join(LOCK_FILE).exists(), "released lock file");
        // A file left by a process that died: unlocked, with its pid.
        std::fs::write(tmp.path().join(LOCK_FILE), "4242\n").expect("write");
        let (_lock, stale) = RunLock::acquire(tmp.path()).expect("stale");
        assert_eq!(stale, Some(Stale { pid: Some(4242) }));
    }
}
