//! Atomic file writes: the bytes go to a temporary file beside the target, are flushed to
//! disk, and the temporary file is renamed over the target. A crash leaves either the old
//! file or the new one, never a half-written one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `dir/.name.tmp-PID`: hidden, beside the target (same file system, so rename is atomic).
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.bin");
        write_atomic(&p, b"old").expect("write");
        write_atomic(&p, b"new").expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"new");
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sub");
        fs::create_dir(&p).expect("mkdir");
        // Renaming a file over a non-empty directory fails: the directory must survive.
        fs::write(p.join("keep"), b"x").expect("write");
        assert!(write_atomic(&p, b"new").is_err());
        assert!(p.join("keep").exists());
        assert_eq!(
            fs::read_dir(dir.path()).expect("ls").count(),
            1,
            "temporary removed"
        );
    }
}
