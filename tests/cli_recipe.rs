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

/// Everything at once: `--recipe cifar-best` (AutoAugment, erasing, 3 repeats, Mixup and
/// CutMix with smoothing folded in, drop-path, its schedule) with an EMA, on the tests' small
/// model and batch. An interrupted run resumes to the uninterrupted one bit for bit.
#[test]
fn the_whole_recipe_with_an_ema_resumes_bitwise() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let whole = ["--recipe", "cifar-best", "--ema-decay", "0.99"];
    ok(&with(train_args(s(&data), s(&a), "2"), &whole));
    ok(&with(
        with(train_args(s(&data), s(&b), "2"), &whole),
        &["--steps", "5"],
    ));
    ok(&["train", "--resume", s(&b), "--threads", "2"]);
    for f in [
        "state.safetensors",
        "model.safetensors",
        "model_ema.safetensors",
        "best.safetensors",
        "best_ema.safetensors",
    ] {
        assert_same_tensors(&a.join(f), &b.join(f));
    }
    let config = std::fs::read_to_string(a.join("config.json")).expect("config");
    for needle in [
        "\"auto_augment\": \"cifar10\"",
        "\"mixup\": 0.8",
        "\"cutmix\": 1.0",
        "\"aug_repeats\": 3",
        "\"drop_path\": 0.1",
        "\"reprob\": 0.25",
        "\"ema_decay\": 0.99",
    ] {
        assert!(config.contains(needle), "{needle} in {config}");
    }
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

#[test]
fn a_recipe_fills_the_flags_not_given_and_records_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let run = tmp.path().join("fast");
    // The small model and batch of the tests override the recipe's; the rest is the recipe's.
    let out = ok(&with(
        train_args(s(&data), s(&run), "2"),
        &[
            "--recipe",
            "cifar-fast",
            "--steps",
            "2",
            "--warmup-epochs",
            "1",
        ],
    ));
    assert!(out.contains("recipe cifar-fast:"), "{out}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).expect("config"))
            .expect("json");
    assert_eq!(config["recipe"]["name"], "cifar-fast");
    let filled: Vec<&str> = config["recipe"]["filled"]
        .as_array()
        .expect("filled")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        filled.contains(&"--auto-augment rand-m9-mstd0.5-inc1"),
        "{filled:?}"
    );
    assert!(filled.contains(&"--drop-path 0.05"), "{filled:?}");
    // Given flags win: neither the epochs, the batch nor the warm-up came from the recipe.
    for given in ["--epochs", "--batch-size", "--warmup-epochs"] {
        assert!(
            !filled.iter().any(|f| f.starts_with(given)),
            "{given} in {filled:?}"
        );
    }
    assert_eq!(config["epochs"], 2);
    assert_eq!(config["batch_size"], 50);
    assert_eq!(config["drop_path"], 0.05);
    assert_eq!(config["reprob"], 0.25);
    assert_eq!(config["ema_decay"], 0.999);
    assert_eq!(config["lr"], 2e-3);
    fails(
        &with(
            train_args(s(&data), s(&run), "2"),
            &["--recipe", "cifar-slow"],
        ),
        &["cifar-slow", "cifar-best, cifar-fast"],
    );
}
