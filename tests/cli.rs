//! End-to-end tests of the `vitk` binary: resume reproduces an uninterrupted run bitwise,
//! Ctrl-C saves a resumable state, and bad input fails cleanly without writing anything.

mod cli_common;
use cli_common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn resume_reproduces_an_uninterrupted_run_bitwise() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    ok(&train_args(s(&data), s(&a), "3"));
    // Stop mid-epoch (step 8 of 18), then continue.
    let mut first = train_args(s(&data), s(&b), "3");
    first.extend(["--steps", "8"]);
    ok(&first);
    let out = ok(&["train", "--resume", s(&b), "--threads", "2"]);
    assert!(
        out.contains("resuming") && out.contains("at step 8"),
        "{out}"
    );
    assert_same_tensors(&a.join("model.safetensors"), &b.join("model.safetensors"));
    assert_same_tensors(&a.join("state.safetensors"), &b.join("state.safetensors"));
    // The resumed log holds each step once, with the same losses as the uninterrupted run.
    let steps = |p: &Path| -> Vec<String> {
        String::from_utf8(read(&p.join("metrics.jsonl")))
            .expect("utf-8")
            .lines()
            .filter(|l| l.contains("\"kind\":\"step\""))
            .map(|l| {
                l.split("\"img_per_s\"")
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(steps(&a), steps(&b));
    assert_eq!(steps(&a).len(), 18);
    for f in ["config.json", "curves.png"] {
        assert!(b.join(f).is_file(), "{f} missing");
    }
}

#[test]
fn resume_refuses_flags_that_would_change_the_run() {
    let (tmp, _, run) = short_run("2");
    fails(
        &["train", "--resume", s(&run), "--lr", "0.1"],
        &["--lr", "cannot be combined with --resume"],
    );
    fails(
        &["train", "--resume", s(&tmp.path().join("nope"))],
        &["nope", "config.json"],
    );
}

#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_state_that_resumes_to_the_uninterrupted_result() {
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    // Long enough (100 epochs) that the interrupt lands mid-run.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitk"))
        .args(train_args(s(&data), s(&b), "100"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn vitk");
    let log = b.join("metrics.jsonl");
    let t0 = Instant::now();
    while std::fs::read_to_string(&log).map_or(0, |t| t.lines().count()) < 10 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "training did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130), "exit code after Ctrl-C");
    let state = ok(&["train", "--resume", s(&b), "--steps", "0"]);
    let step: u64 = state
        .split("at step ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume step in: {state}"));
    assert!((10..600).contains(&step), "interrupted at step {step}");
    // Continue 5 steps past the interruption; an uninterrupted run to the same step agrees.
    let target = (step + 5).to_string();
    ok(&["train", "--resume", s(&b), "--steps", &target]);
    let mut uninterrupted = train_args(s(&data), s(&a), "100");
    uninterrupted.extend(["--steps", &target]);
    ok(&uninterrupted);
    assert_same_tensors(&a.join("model.safetensors"), &b.join("model.safetensors"));
}

#[test]
fn default_run_directory_is_never_overwritten() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).expect("mkdir");
    std::fs::write(run.join("model.safetensors"), b"precious").expect("write");
    fails(
        &train_args(s(&data), s(&run), "1"),
        &["already exists", s(&run)],
    );
    assert_eq!(read(&run.join("model.safetensors")), b"precious");
}

#[test]
fn bad_data_fails_cleanly_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let out = tmp.path().join("out");
    let missing = tmp.path().join("missing");
    fails(
        &train_args(s(&missing), s(&out), "1"),
        &[s(&missing), "no such directory"],
    );

    // A copy of the five training batches, one of which is then spoiled.
    let copy = |name: &str| -> PathBuf {
        let d = tmp.path().join(name);
        std::fs::create_dir(&d).expect("mkdir");
        for k in 1..=5 {
            let f = format!("data_batch_{k}.bin");
            std::fs::copy(data.join(&f), d.join(&f)).expect("copy");
        }
        d
    };
    // Truncated training file: named, with its size.
    let bad = copy("truncated");
    let rec = read(&data.join("data_batch_1.bin"));
    std::fs::write(bad.join("data_batch_1.bin"), &rec[..3073 * 4 + 100]).expect("write");
    fails(
        &train_args(s(&bad), s(&out), "1"),
        &["data_batch_1.bin", "not a multiple of the 3073-byte"],
    );

    // A label byte outside the 10 classes.
    let bad = copy("label");
    let mut r = rec[..3073 * 4].to_vec();
    r[3073 * 2] = 17;
    std::fs::write(bad.join("data_batch_1.bin"), r).expect("write");
    fails(
        &train_args(s(&bad), s(&out), "1"),
        &["data_batch_1.bin", "label 17"],
    );

    // An empty folder and a folder of unreadable images.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    fails(&train_args(s(&empty), s(&out), "1"), &[s(&empty), "empty"]);
    let folder = tmp.path().join("folder");
    std::fs::create_dir_all(folder.join("cat")).expect("mkdir");
    std::fs::write(folder.join("cat").join("broken.png"), b"not a png").expect("write");
    fails(&train_args(s(&folder), s(&out), "1"), &["broken.png"]);

    assert!(
        !out.exists(),
        "a failed run must not create its run directory"
    );
}

#[test]
fn checkpoints_of_another_config_or_corrupted_are_rejected() {
    let (tmp, data, run) = short_run("1");
    let ckpt = run.join("model.safetensors");

    // Another width: the tensor and both shapes are named.
    let mut other = vec![
        "train",
        "--data",
        s(&data),
        "--embed-dim",
        "32",
        "--depth",
        "2",
        "--num-heads",
        "2",
        "--mlp-dim",
        "24",
        "--steps",
        "1",
        "--init-from",
        s(&ckpt),
    ];
    let out2 = tmp.path().join("other");
    other.extend(["--out", s(&out2)]);
    fails(
        &other,
        &["model.safetensors", "cls_token", "[1, 1, 16]", "[1, 1, 32]"],
    );
    assert!(!out2.exists());

    // Evaluation and prediction with a good checkpoint work...
    let e = ok(&["eval", "--data", s(&data), "--checkpoint", s(&ckpt)]);
    assert!(
        e.contains("accuracy") && e.contains("confusion matrix"),
        "{e}"
    );
    // ...and with a truncated one fail, naming the file.
    let bytes = read(&ckpt);
    let broken = tmp.path().join("broken.safetensors");
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).expect("write");
    fails(
        &["eval", "--data", s(&data), "--checkpoint", s(&broken)],
        &["broken.safetensors"],
    );
    fails(
        &["predict", "--checkpoint", s(&broken), s(&ckpt)],
        &["broken.safetensors"],
    );
    let not_image = tmp.path().join("notes.png");
    std::fs::write(&not_image, b"text").expect("write");
    fails(
        &["predict", "--checkpoint", s(&ckpt), s(&not_image)],
        &["notes.png"],
    );
}

#[test]
fn diverging_training_stops_without_saving_the_diverged_weights() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let run = tmp.path().join("run");
    // One step per epoch (batch 300 of 300 images); the first update (lr 1e38) ruins the
    // parameters, which the evaluation after that step sees.
    let mut args = train_args(s(&data), s(&run), "3");
    let at = args.iter().position(|a| *a == "50").expect("batch size");
    args[at] = "300";
    args.extend(["--lr", "1e38", "--warmup-epochs", "0", "--min-lr", "0"]);
    let t = fails(&args, &["NaN", "step 1", "No checkpoint has been saved"]);
    assert!(
        !run.join("model.safetensors").exists(),
        "diverged weights must not be saved:\n{t}"
    );
    // Nothing to keep: the run directory of the failed start is gone.
    assert!(!run.exists(), "{t}");
}

#[test]
fn predict_lists_top_classes() {
    let (tmp, _, run) = short_run("2");
    let img = tmp.path().join("x.png");
    image::RgbImage::from_fn(40, 24, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 10) as u8, 128])
    })
    .save(&img)
    .expect("png");
    let out = ok(&[
        "predict",
        "--checkpoint",
        s(&run.join("model.safetensors")),
        "--top",
        "3",
        s(&img),
    ]);
    let probs: Vec<f64> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(probs.len(), 3, "{out}");
    assert!(
        probs.windows(2).all(|w| w[0] >= w[1]) && probs.iter().all(|p| (0.0..=1.0).contains(p)),
        "{out}"
    );
}

/// `vitk profile` without a GPU: the dry run counts the launches of a `seed` step in both
/// precisions (every matmul of a bf16 step on tensor cores, none of an fp32 step) and models
/// them; on the emulator it runs a tiny model's step.
#[test]
fn profile_counts_and_models_a_step_without_a_gpu() {
    let bf16 = ok(&[
        "profile",
        "--device",
        "dry",
        "--model",
        "seed",
        "--precision",
        "bf16",
    ]);
    let fp32 = ok(&[
        "profile",
        "--device",
        "dry",
        "--model",
        "seed",
        "--precision",
        "fp32",
    ]);
    for t in [&bf16, &fp32] {
        assert!(
            t.contains("step: launches=") && t.contains("roofline model of an H200"),
            "{t}"
        );
        assert!(
            t.contains("a model, not a measurement") && t.contains("nothing timed"),
            "{t}"
        );
        // a queued step: one graph replay, no host wait, nothing pageable
        assert!(
            t.contains("step: launches=0 graphs=1 (")
                && t.contains(" host_syncs=0 fence_waits=1 copies: 4 pinned, 0 pageable"),
            "{t}"
        );
    }
    assert!(
        bf16.contains("vitk_mm_tc_") && !bf16.contains("vitk_matmul "),
        "{bf16}"
    );
    assert!(
        fp32.contains("vitk_matmul ") && !fp32.contains("vitk_mm_tc_"),
        "{fp32}"
    );
    let emu = ok(&[
        "profile",
        "--device",
        "emu",
        "--embed-dim",
        "16",
        "--depth",
        "1",
        "--num-heads",
        "2",
        "--mlp-dim",
        "24",
        "--patch-size",
        "8",
        "--batch-size",
        "4",
        "--precision",
        "bf16",
    ]);
    assert!(
        emu.contains("emulator") && emu.contains("vitk_mm_tc_"),
        "{emu}"
    );
    fails(&["profile", "--device", "tpu"], &["--device 'tpu'"]);
}

/// `vitk info | head -1`: the reader closes the pipe early; vitk ends quietly (SIGPIPE, as a
/// C tool does) instead of panicking on its next line.
#[test]
fn a_closed_stdout_ends_the_program_without_a_panic() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitk"))
        .arg("info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vitk info");
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let status = child.wait().expect("wait");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !status.success(),
        "every line of vitk info fitted in the closed pipe?"
    );
}
