//! Which metrics log a run may write. The rule: a log belongs to the run whose directory
//! holds it (`RUN_DIR/metrics.jsonl`, the default), or, for a log elsewhere (`--log FILE`),
//! to the run named in its first line (`{"kind":"run","run_dir":...}`, written when the run
//! creates it). So `--log FILE` refuses
//! - a FILE inside another run's directory (one holding config.json or train.lock);
//! - an existing, non-empty FILE when a run starts (a new run starts a new log);
//! - on --resume, an existing FILE whose first line names another run, or none.
//!
//! The run directory's lock (run_lock.rs) then keeps a second process off the same log.

use super::metrics::Record;
use super::run_dir::RunDir;
use super::run_lock::LOCK_FILE;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// The log of a run, once checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogPlan {
    /// RUN_DIR/metrics.jsonl.
    Default,
    /// A file outside the run directory; `exists`: it holds this run's earlier records.
    External { path: PathBuf, exists: bool },
}

/// The directory holding `path` ("." for a bare file name).
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `a` and `b` name the same directory (compared canonically when both exist).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The run directory a log names in its first line, if it has one.
fn owner_of(path: &Path) -> Result<Option<String>, String> {
    let file = std::fs::File::open(path)
        .map_err(|e| format!("--log {}: cannot read: {e}", path.display()))?;
    let mut first = String::new();
    BufReader::new(file)
        .read_line(&mut first)
        .map_err(|e| format!("--log {}: cannot read: {e}", path.display()))?;
    Ok(match serde_json::from_str::<Record>(first.trim()) {
        Ok(Record::Run { run_dir }) => Some(run_dir),
        _ => None,
    })
}

/// How the run in `run_dir` (which may not exist yet) names itself in a log's first line.
pub fn run_name(run_dir: &Path) -> String {
    run_dir
        .canonicalize()
        .unwrap_or_else(|_| run_dir.to_path_buf())
        .display()
        .to_string()
}

/// Checks `--log` (None: the default) for the run in `run_dir`, before anything is written.
pub fn check_log(log: Option<&Path>, run_dir: &Path, resuming: bool) -> Result<LogPlan, String> {
    let Some(log) = log else {
        return Ok(LogPlan::Default);
    };
    let shown = log.display();
    let parent = parent_of(log);
    if log.file_name().is_some_and(|n| n == "metrics.jsonl") && same_dir(&parent, run_dir) {
        return Ok(LogPlan::Default);
    }
    if log.is_dir() {
        return Err(format!(
            "--log {shown} is a directory: expected a file path"
        ));
    }
    if !parent.is_dir() {
        return Err(format!(
            "--log {shown}: {} is not an existing directory",
            parent.display()
        ));
    }
    let other_run = RunDir {
        path: parent.clone(),
    };
    if other_run.config_path().exists() || parent.join(LOCK_FILE).exists() {
        return Err(format!(
            "--log {shown} lies in the run directory {} of another run: choose a path outside it (this run logs to {} by default)",
            parent.display(),
            run_dir.join("metrics.jsonl").display()
        ));
    }
    let exists = std::fs::metadata(log).is_ok_and(|m| m.len() > 0);
    if !exists {
        return Ok(LogPlan::External {
            path: log.to_path_buf(),
            exists: false,
        });
    }
    if !resuming {
        return Err(format!(
            "--log {shown} already exists: a new run starts a new log (choose another name, or remove it)"
        ));
    }
    let me = run_name(run_dir);
    match owner_of(log)? {
        Some(owner) if owner == me => Ok(LogPlan::External {
            path: log.to_path_buf(),
            exists: true,
        }),
        Some(owner) => Err(format!(
            "--log {shown} belongs to the run {owner}, not to {me}"
        )),
        None => Err(format!(
            "--log {shown} exists and was not started by this run (its first line does not name {me})"
        )),
    }
}

/// Creates an external log that did not exist, with the line naming its run; fails if it
/// appeared meanwhile (another process). Returns whether a file was created.
pub fn claim(plan: &LogPlan, run_dir: &Path) -> Result<bool, String> {
    let LogPlan::External {
        path,
        exists: false,
    } = plan
    else {
        return Ok(false);
    };
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path);
    let (mut f, created) = match created {
        Ok(f) => (f, true),
        // An empty file (e.g. made by mktemp) is taken as new, and kept on failure.
        Err(_) if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) => (
            std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|e| format!("--log {}: cannot open: {e}", path.display()))?,
            false,
        ),
        Err(e) => return Err(format!("--log {}: cannot create: {e}", path.display())),
    };
    let header = Record::Run {
        run_dir: run_name(run_dir),
    };
    writeln!(f, "{}", serde_json::to_string(&header).unwrap_or_default())
        .map_err(|e| format!("--log {}: cannot write: {e}", path.display()))?;
    Ok(created)
}

/// The path the metrics go to.
pub fn resolve(plan: &LogPlan) -> Option<PathBuf> {
    match plan {
        LogPlan::Default => None,
        LogPlan::External { path, .. } => Some(path.clone()),
    }
}
