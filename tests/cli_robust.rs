//! `vitk train` on bad input and in bad situations: every flag out of range, a model that does
//! not fit the data or the memory, a start that fails after the run directory exists, two
//! processes on one run directory, a log that belongs to another run. Each fails cleanly
//! (exit code 1 or 2, never a panic or an abort), names the flag or file, and leaves nothing
//! behind that blocks the next attempt.

mod cli_common;
use cli_common::*;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_synthetic_set_refuses_another_image_size() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("run");
    for size in [
        ["--image-size", "64", "--patch-size", "8"],
        ["--image-size", "16", "--patch-size", "4"],
    ] {
        let mut args = vec!["train", "--out", s(&out), "--steps", "2"];
        args.extend(size);
        fails(&args, &["--image-size", size[1], "32x32", "--data"]);
    }
    assert!(!out.exists(), "nothing written");
}

#[test]
fn a_batch_larger_than_the_data_is_refused_before_allocating() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let out = tmp.path().join("run");
    fails(
        &["train", "--out", s(&out), "--batch-size", "1000000"],
        &[
            "--batch-size 1000000",
            "larger than the training set",
            "10000",
        ],
    );
    let mut args = train_args(s(&data), s(&out), "1");
    let at = args.iter().position(|a| *a == "50").expect("batch");
    args[at] = "301";
    fails(&args, &["--batch-size 301", "300 images"]);
    assert!(!out.exists(), "nothing written");
}

#[test]
fn a_model_too_large_for_memory_is_refused_with_the_estimate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("run");
    // Past the limits: a range error naming the flag.
    fails(
        &["train", "--out", s(&out), "--embed-dim", "1000000"],
        &["--embed-dim 1000000", "expected 1..=16384"],
    );
    // Within them but terabytes: the estimate, its largest part and what to change.
    let t = fails(
        &[
            "train",
            "--device",
            "cpu",
            "--out",
            s(&out),
            "--embed-dim",
            "16384",
            "--num-heads",
            "128",
            "--depth",
            "1024",
            "--mlp-dim",
            "65536",
        ],
        &[
            "not enough memory on the host",
            "GiB",
            "parameters",
            "Try a smaller model",
        ],
    );
    assert!(t.contains("--embed-dim"), "{t}");
    // A batch whose activations cannot fit: the batch is named.
    fails(
        &[
            "train",
            "--device",
            "cpu",
            "--out",
            s(&out),
            "--model",
            "small",
            "--patch-size",
            "1",
            "--batch-size",
            "10000",
        ],
        &[
            "not enough memory",
            "--batch-size 10000",
            "Try a smaller --batch-size",
        ],
    );
    assert!(!out.exists(), "nothing written");
}

#[test]
fn optimizer_and_normalisation_flags_get_range_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("run");
    let o = s(&out);
    fails(
        &["train", "--out", o, "--beta1", "1.5"],
        &["--beta1 1.5", "[0, 1)"],
    );
    fails(
        &["train", "--out", o, "--beta2", "1"],
        &["--beta2 1", "[0, 1)"],
    );
    let t = fails(
        &["train", "--out", o, "--clip-grad", "0"],
        &["--clip-grad 0", "> 0"],
    );
    assert!(!t.contains("Some("), "{t}");
    // Negative values reach the range check instead of reading as unknown flags.
    for flag in [
        "--lr",
        "--min-lr",
        "--weight-decay",
        "--label-smoothing",
        "--warmup-epochs",
    ] {
        let t = fails(
            &["train", "--out", o, flag, "-1"],
            &[flag, "-1", "expected"],
        );
        assert!(!t.contains("unexpected argument"), "{t}");
    }
    fails(
        &["train", "--out", o, "--batch-size", "-1"],
        &["--batch-size", "-1", "whole number"],
    );
    fails(
        &["train", "--out", o, "--std", "0,1,1"],
        &["--std 0,1,1", "channel 0"],
    );
    fails(
        &["train", "--out", o, "--mean", "125.3,123,114"],
        &["--mean", "[0, 1]"],
    );
    fails(
        &["train", "--out", o, "--mean", "0.5,0.5"],
        &["--mean 0.5,0.5", "3 comma-separated values"],
    );
    fails(
        &["train", "--out", o, "--threads", "0"],
        &["--threads 0", "1..=1024"],
    );
    // The syntax --help shows is accepted.
    let t = ok(&[
        "train",
        "--out",
        o,
        "--mean",
        "0.5,0.5,0.5",
        "--std",
        "0.25,0.25,0.25",
        "--check",
    ]);
    assert!(
        t.contains("check: new run") && t.contains("nothing written"),
        "{t}"
    );
    assert!(!out.exists(), "nothing written");
}

/// --layer-decay outside (0, 1]: one line naming the flag, the value and the range, before
/// anything is written.
#[test]
fn layer_decay_out_of_range_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("run");
    for (value, shown) in [
        ("0", "--layer-decay 0 "),
        ("1.5", "--layer-decay 1.5 "),
        ("nan", "--layer-decay NaN "),
        ("-0.5", "--layer-decay -0.5 "),
        ("inf", "--layer-decay inf "),
    ] {
        let t = fails(
            &["train", "--out", s(&out), "--layer-decay", value],
            &[shown, "out of range", "expected (0, 1]"],
        );
        assert_eq!(t.trim().lines().count(), 1, "one line:\n{t}");
        assert!(
            !out.exists(),
            "--layer-decay {value} left {}",
            out.display()
        );
    }
    fails(
        &["train", "--out", s(&out), "--layer-decay", "x"],
        &["--layer-decay", "expected a number"],
    );
    assert!(!out.exists());
}

#[test]
fn a_failed_start_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let run = tmp.path().join("runs").join("run");
    let r = s(&run);
    // No CUDA device 99 anywhere: refused before the directory exists.
    fails(
        &with(train_args(s(&data), r, "1"), &["--device", "cuda:99"]),
        &["--device cuda:99"],
    );
    assert!(!run.exists(), "device failure left {}", run.display());
    // A log that cannot be created (a link into a missing folder): the directory was made
    // and locked by then; it goes again, with the parent made for it.
    let link = tmp.path().join("log.jsonl");
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(tmp.path().join("missing").join("x.jsonl"), &link)
            .expect("symlink");
        fails(
            &with(train_args(s(&data), r, "1"), &["--log", s(&link)]),
            &["--log", "log.jsonl"],
        );
        assert!(!run.exists(), "log failure left {}", run.display());
        assert!(
            !run.parent().expect("parent").exists(),
            "created parent left"
        );
    }
    // Divergence before the first checkpoint: nothing to keep.
    let t = fails(
        &with(
            train_args(s(&data), r, "3"),
            &["--lr", "1e38", "--warmup-epochs", "0", "--min-lr", "0"],
        ),
        &["NaN", "No checkpoint has been saved"],
    );
    assert!(!run.exists(), "diverged start left {}:\n{t}", run.display());
    // The same --out then works.
    ok(&with(train_args(s(&data), r, "1"), &["--steps", "1"]));
    assert!(run.join("config.json").is_file() && !run.join("train.lock").exists());
}

#[test]
fn an_empty_existing_out_directory_is_kept_but_emptied_after_a_failed_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let run = tmp.path().join("mine");
    std::fs::create_dir(&run).expect("mkdir");
    fails(
        &with(
            train_args(s(&data), s(&run), "3"),
            &["--lr", "1e38", "--warmup-epochs", "0", "--min-lr", "0"],
        ),
        &["NaN"],
    );
    assert!(run.is_dir(), "a directory the user made is not removed");
    assert_eq!(std::fs::read_dir(&run).expect("read").count(), 0);
}

#[test]
fn resume_of_a_run_that_never_saved_says_so() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).expect("mkdir");
    std::fs::write(run.join("config.json"), "{}").expect("write");
    fails(
        &["train", "--resume", s(&run)],
        &["state.safetensors", "before its first checkpoint"],
    );
    fails(
        &["train", "--out", s(&run)],
        &["not empty", "before its first checkpoint"],
    );
}

/// Waits until `f` exists (a training process got under way).
fn wait_for(f: &Path) {
    let t0 = Instant::now();
    while !f.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{} never appeared",
            f.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(unix)]
#[test]
fn one_process_per_run_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let run = tmp.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitk"))
        .args(train_args(s(&data), s(&run), "10000"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vitk");
    wait_for(&run.join("state.safetensors"));
    let pid = format!("pid {}", child.id());
    fails(
        &["train", "--resume", s(&run), "--steps", "1"],
        &[s(&run), "in use by another vitk process", &pid],
    );
    fails(
        &train_args(s(&data), s(&run), "1"),
        &[s(&run), "in use by another vitk process", &pid],
    );
    // Killed: the lock dies with it; the next process takes it over and says so.
    child.kill().expect("kill");
    child.wait().expect("wait");
    assert!(
        run.join("train.lock").is_file(),
        "a killed process leaves its lock file"
    );
    let t = ok(&["train", "--resume", s(&run), "--steps", "1"]);
    assert!(
        t.contains(&pid) && t.contains("did not exit cleanly"),
        "{t}"
    );
    assert!(!run.join("train.lock").exists(), "released on exit");
}

#[test]
fn a_log_belongs_to_one_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    ok(&with(train_args(s(&data), s(&a), "1"), &["--steps", "6"]));
    let a_log = a.join("metrics.jsonl");
    let before = std::fs::read(&a_log).expect("a's log");
    // Another run's log, or any file in its directory, is refused.
    fails(
        &with(train_args(s(&data), s(&b), "1"), &["--log", s(&a_log)]),
        &["--log", "run directory", s(&a)],
    );
    assert!(!b.exists());
    // A log elsewhere starts with a line naming its run...
    let ext = tmp.path().join("ext.jsonl");
    ok(&with(
        train_args(s(&data), s(&b), "2"),
        &["--steps", "6", "--log", s(&ext)],
    ));
    let first = std::fs::read_to_string(&ext).expect("ext");
    assert!(
        first.starts_with("{\"kind\":\"run\"") && first.lines().count() > 6,
        "{first}"
    );
    // ...so a new run refuses it, and so does another run's resume; its own resume appends.
    fails(
        &with(train_args(s(&data), s(&c), "1"), &["--log", s(&ext)]),
        &["--log", "ext.jsonl", "already exists"],
    );
    fails(
        &["train", "--resume", s(&a), "--log", s(&ext)],
        &["--log", "ext.jsonl", "belongs to the run"],
    );
    ok(&["train", "--resume", s(&b), "--log", s(&ext)]);
    let steps = std::fs::read_to_string(&ext)
        .expect("ext")
        .lines()
        .filter(|l| l.contains("\"kind\":\"step\""))
        .count();
    assert_eq!(steps, 12, "each of the 12 steps once");
    assert_eq!(
        std::fs::read(&a_log).expect("a's log"),
        before,
        "a untouched"
    );
}

#[test]
fn check_validates_everything_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let run = tmp.path().join("run");
    let t = ok(&with(train_args(s(&data), s(&run), "1"), &["--check"]));
    assert!(
        t.contains("check: new run") && t.contains("available on the host"),
        "{t}"
    );
    assert!(!run.exists());
    ok(&with(train_args(s(&data), s(&run), "1"), &["--steps", "6"]));
    let t = ok(&["train", "--resume", s(&run), "--check"]);
    assert!(t.contains("check: resume"), "{t}");
    assert!(!run.join("train.lock").exists());
}

#[test]
fn eval_predict_and_profile_refuse_bad_counts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let run = tmp.path().join("run");
    ok(&with(train_args(s(&data), s(&run), "1"), &["--steps", "1"]));
    let ckpt = run.join("model.safetensors");
    fails(
        &[
            "eval",
            "--data",
            s(&data),
            "--checkpoint",
            s(&ckpt),
            "--batch-size",
            "0",
        ],
        &["--batch-size 0"],
    );
    // A batch far beyond the validation set is cut to it, not allocated.
    let t = ok(&[
        "eval",
        "--data",
        s(&data),
        "--checkpoint",
        s(&ckpt),
        "--batch-size",
        "100000000",
    ]);
    assert!(t.contains("samples: 60"), "{t}");
    fails(
        &["predict", "--checkpoint", s(&ckpt), "--top", "0", s(&ckpt)],
        &["--top 0"],
    );
    fails(
        &["profile", "--device", "dry", "--classes", "0"],
        &["--classes 0"],
    );
    fails(
        &["profile", "--device", "dry", "--batch-size", "100000000"],
        &["not enough memory", "--batch-size 100000000"],
    );
}
