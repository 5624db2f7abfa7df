//! Helpers of the end-to-end tests of the `vitk` binary: running it (in a directory, without
//! backtraces), expecting success or a clean failure, a small synthetic data set and the tiny
//! model the tests train.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs vitk (in `cwd` when given).
pub fn vitk_in(cwd: Option<&Path>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vitk"));
    c.args(args).env("RUST_BACKTRACE", "0");
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    c.output().expect("run vitk")
}

pub fn vitk(args: &[&str]) -> Output {
    vitk_in(None, args)
}

/// stdout then stderr.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs vitk (in `cwd` when given) expecting success; returns stdout + stderr.
pub fn ok_in(cwd: Option<&Path>, args: &[&str]) -> String {
    let o = vitk_in(cwd, args);
    assert!(o.status.success(), "vitk {args:?} failed:\n{}", text(&o));
    text(&o)
}

pub fn ok(args: &[&str]) -> String {
    ok_in(None, args)
}

/// Runs vitk expecting a clean failure: exit code 1 (or 2 from the argument parser), no
/// panic, and every string of `needles` in the message.
pub fn fails_in(cwd: Option<&Path>, args: &[&str], needles: &[&str]) -> String {
    let o = vitk_in(cwd, args);
    let t = text(&o);
    assert!(
        matches!(o.status.code(), Some(1 | 2)),
        "vitk {args:?}: expected exit code 1 or 2, got {:?}:\n{t}",
        o.status
    );
    assert!(!t.contains("panicked"), "vitk {args:?} panicked:\n{t}");
    for n in needles {
        assert!(t.contains(n), "vitk {args:?}: message lacks {n:?}:\n{t}");
    }
    t
}

pub fn fails(args: &[&str], needles: &[&str]) -> String {
    fails_in(None, args, needles)
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A synthetic CIFAR-layout set (300 training, 60 validation images) in `dir/name`.
pub fn synth_named(dir: &Path, name: &str, seed: &str) -> PathBuf {
    let d = dir.join(name);
    ok(&[
        "synth",
        "--out",
        s(&d),
        "--train",
        "300",
        "--val",
        "60",
        "--seed",
        seed,
    ]);
    d
}

/// The synthetic set of `synth_named(dir, "data", "3")`.
pub fn synth(dir: &Path) -> PathBuf {
    synth_named(dir, "data", "3")
}

/// A tiny model trained on `data` for `epochs` epochs of 6 steps (batch 50).
pub fn train_args<'a>(data: &'a str, out: &'a str, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        data,
        "--out",
        out,
        "--embed-dim",
        "16",
        "--depth",
        "2",
        "--num-heads",
        "2",
        "--mlp-dim",
        "24",
        "--batch-size",
        "50",
        "--epochs",
        epochs,
        "--threads",
        "2",
        "--seed",
        "5",
    ]
}

/// `base` followed by `more`.
pub fn with<'a>(mut base: Vec<&'a str>, more: &[&'a str]) -> Vec<&'a str> {
    base.extend_from_slice(more);
    base
}

/// A run of `steps` steps of the tiny model on a fresh synthetic set: (temporary directory,
/// data directory, run directory).
pub fn short_run(steps: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let run = tmp.path().join("run");
    ok(&with(
        train_args(s(&data), s(&run), "1"),
        &["--steps", steps],
    ));
    (tmp, data, run)
}

/// Whether two safetensors files hold the same tensors, bit for bit (their metadata's key
/// order may differ between processes).
pub fn same_tensors(a: &Path, b: &Path) -> bool {
    use safetensors::SafeTensors;
    let (ba, bb) = (read(a), read(b));
    let (ta, tb) = (
        SafeTensors::deserialize(&ba).expect("safetensors"),
        SafeTensors::deserialize(&bb).expect("safetensors"),
    );
    let mut names = ta.names();
    names.sort();
    let mut other = tb.names();
    other.sort();
    names == other
        && names.iter().all(|n| {
            let (x, y) = (ta.tensor(n).expect("tensor"), tb.tensor(n).expect("tensor"));
            x.shape() == y.shape() && x.data() == y.data()
        })
}

/// Two safetensors files hold the same tensors, bit for bit, and the same metadata (the
/// header's key order may differ between processes).
pub fn assert_same_tensors(a: &Path, b: &Path) {
    use safetensors::SafeTensors;
    assert!(
        same_tensors(a, b),
        "the tensors of {} and {} differ",
        a.display(),
        b.display()
    );
    let meta = |p: &Path| {
        SafeTensors::read_metadata(&read(p))
            .expect("header")
            .1
            .metadata()
            .clone()
    };
    assert_eq!(
        meta(a),
        meta(b),
        "metadata of {} and {}",
        a.display(),
        b.display()
    );
}
