//! The training recipe's flags through the CLI: recorded in config.json, refused out of range
//! with nothing written, and a run with the whole augmentation recipe on resumes to exactly
//! the uninterrupted result.

mod cli_common;

use cli_common::{assert_same_tensors, fails, ok, s, synth, train_args, with};

const RECIPE: [&str; 6] = [
    "--auto-augment",
    "rand-m9-mstd0.5-inc1",
    "--reprob",
    "0.25",
    "--aug-repeats",
    "3",
];

#[test]
fn a_run_with_the_augmentation_recipe_resumes_bitwise() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    ok(&with(train_args(s(&data), s(&a), "2"), &RECIPE));
    ok(&with(
        with(train_args(s(&data), s(&b), "2"), &RECIPE),
        &["--steps", "7"],
    ));
    ok(&["train", "--resume", s(&b), "--threads", "2"]);
    assert_same_tensors(&a.join("state.safetensors"), &b.join("state.safetensors"));
    let config = std::fs::read_to_string(a.join("config.json")).expect("config");
    for needle in [
        "\"auto_augment\": \"rand-m9-mstd0.5-inc1\"",
        "\"reprob\": 0.25",
        "\"aug_repeats\": 3",
    ] {
        assert!(config.contains(needle), "{needle} in {config}");
    }
    // The recipe changes the batches: a run without it ends elsewhere.
    let plain = tmp.path().join("plain");
    ok(&train_args(s(&data), s(&plain), "2"));
    assert!(!cli_common::same_tensors(
        &a.join("model.safetensors"),
        &plain.join("model.safetensors")
    ));
}

#[test]
fn recipe_flags_out_of_range_are_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let out = tmp.path().join("never");
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &["--auto-augment", "rand-x9"],
            &["rand-x9", "expected m, n"],
        ),
        (&["--auto-augment", "imagenet"], &["imagenet", "cifar10"]),
        (&["--reprob", "1.5"], &["--reprob 1.5", "[0, 1]"]),
        (&["--aug-repeats", "0"], &["--aug-repeats 0", "1..=64"]),
        (&["--reprob", "nan"], &["--reprob"]),
    ];
    for (more, needles) in cases {
        fails(&with(train_args(s(&data), s(&out), "1"), more), needles);
        assert!(!out.exists(), "{more:?} left {}", out.display());
    }
}
