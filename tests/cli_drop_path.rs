//! `vitk train --drop-path P` through the CLI: recorded in config.json, a run resumes to
//! exactly the uninterrupted result on the CPU and on the device (the emulator, whose steps
//! are graph replays reading their staged drop-path scales), P = 0 is the run without it bit
//! for bit, and out-of-range values are refused naming the flag with nothing written.

mod cli_common;

use std::path::{Path, PathBuf};

use cli_common::{assert_same_tensors, fails, ok, s, same_tensors, synth, train_args, with};

const DROP: [&str; 2] = ["--drop-path", "0.5"];

/// A run of `epochs` epochs with drop-path on `device` against one stopped after `stop`
/// steps and resumed: the same state, bit for bit. Returns the uninterrupted run.
fn resumes_bitwise(tmp: &Path, data: &Path, device: &str, epochs: &str, stop: &str) -> PathBuf {
    let dev = ["--device", device];
    let (a, b) = (tmp.join(device), tmp.join(format!("{device}-b")));
    ok(&with(with(train_args(s(data), s(&a), epochs), &DROP), &dev));
    ok(&with(
        with(with(train_args(s(data), s(&b), epochs), &DROP), &dev),
        &["--steps", stop],
    ));
    ok(&[
        "train",
        "--resume",
        s(&b),
        "--threads",
        "2",
        "--device",
        device,
    ]);
    assert_same_tensors(&a.join("state.safetensors"), &b.join("state.safetensors"));
    a
}

#[test]
fn a_run_with_drop_path_resumes_bitwise_and_p_zero_is_no_drop_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let a = resumes_bitwise(tmp.path(), &data, "cpu", "2", "7");
    let config = std::fs::read_to_string(a.join("config.json")).expect("config");
    assert!(config.contains("\"drop_path\": 0.5"), "{config}");
    // Drop-path changes the training: a run without it ends elsewhere.
    let plain = tmp.path().join("plain");
    ok(&train_args(s(&data), s(&plain), "2"));
    // The default is no drop-path (recorded as 0), so that the equality below means something.
    let plain_config = std::fs::read_to_string(plain.join("config.json")).expect("config");
    assert!(
        plain_config.contains("\"drop_path\": 0.0"),
        "{plain_config}"
    );
    assert!(!same_tensors(
        &a.join("model.safetensors"),
        &plain.join("model.safetensors")
    ));
    // P = 0 is no drop-path at all, bit for bit.
    let zero = tmp.path().join("zero");
    ok(&with(
        train_args(s(&data), s(&zero), "2"),
        &["--drop-path", "0"],
    ));
    assert_same_tensors(
        &plain.join("state.safetensors"),
        &zero.join("state.safetensors"),
    );
}

/// The device's queued steps (graph replays on the emulator) resume bitwise too: the step
/// count keying the flags is restored with the optimizer state.
#[test]
fn a_device_run_with_drop_path_resumes_bitwise() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    resumes_bitwise(tmp.path(), &data, "emu", "1", "4");
}

#[test]
fn drop_path_out_of_range_or_with_resume_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let out = tmp.path().join("never");
    let cases: [(&[&str], &[&str]); 4] = [
        (&["--drop-path", "1"], &["--drop-path 1", "[0, 1)"]),
        (&["--drop-path", "-0.1"], &["--drop-path -0.1", "[0, 1)"]),
        (&["--drop-path", "nan"], &["--drop-path"]),
        (&["--drop-path", "half"], &["--drop-path"]),
    ];
    for (more, needles) in cases {
        fails(&with(train_args(s(&data), s(&out), "1"), more), needles);
        assert!(!out.exists(), "{more:?} left {}", out.display());
    }
    // A run's rate is its own: --resume takes it from config.json.
    let run = tmp.path().join("run");
    ok(&with(
        with(train_args(s(&data), s(&run), "1"), &DROP),
        &["--steps", "2"],
    ));
    fails(
        &["train", "--resume", s(&run), "--drop-path", "0.1"],
        &["--drop-path"],
    );
}
