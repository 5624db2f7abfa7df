//! Mixup/CutMix and the weights' EMA through the CLI: a run with both resumes to exactly the
//! uninterrupted result (state.safetensors with its `ema` tensor, model_ema.safetensors),
//! records both accuracies, differs from a run without mixing, and bad values are refused with
//! nothing written.

mod cli_common;

use cli_common::{assert_same_tensors, fails, ok, s, synth, train_args, with};

const RECIPE: [&str; 6] = ["--mixup", "0.8", "--cutmix", "1.0", "--ema-decay", "0.99"];

#[test]
fn a_run_with_mixup_cutmix_and_ema_resumes_bitwise() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let out = ok(&with(train_args(s(&data), s(&a), "2"), &RECIPE));
    assert!(out.contains("val_acc_ema="), "final line: {out}");
    ok(&with(
        with(train_args(s(&data), s(&b), "2"), &RECIPE),
        &["--steps", "7"],
    ));
    ok(&["train", "--resume", s(&b), "--threads", "2"]);
    for f in [
        "state.safetensors",
        "model_ema.safetensors",
        "best_ema.safetensors",
        "model.safetensors",
    ] {
        assert_same_tensors(&a.join(f), &b.join(f));
    }
    let state = std::fs::read(a.join("state.safetensors")).expect("state");
    let st = safetensors::SafeTensors::deserialize(&state).expect("safetensors");
    assert!(st.tensor("ema").is_ok(), "state holds the EMA");
    let config = std::fs::read_to_string(a.join("config.json")).expect("config");
    for needle in [
        "\"mixup\": 0.8",
        "\"cutmix\": 1.0",
        "\"mixup_switch_prob\": 0.5",
        "\"ema_decay\": 0.99",
    ] {
        assert!(config.contains(needle), "{needle} in {config}");
    }
    let metrics = std::fs::read_to_string(a.join("metrics.jsonl")).expect("metrics");
    let evals: Vec<&str> = metrics.lines().filter(|l| l.contains("val_acc")).collect();
    assert_eq!(evals.len(), 2, "{metrics}");
    assert!(evals
        .iter()
        .all(|l| l.contains("\"val_acc_ema\"") && l.contains("\"val_loss_ema\"")));
    // best_ema.safetensors is the EMA of the epoch with the best val_acc_ema (the first of
    // equals): the last EMA exactly when that epoch is the last one.
    let num = |line: &str, key: &str| -> f64 {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        v[key].as_f64().expect(key)
    };
    let best_epoch = (0..evals.len())
        .reduce(|b, i| {
            if num(evals[i], "val_acc_ema") > num(evals[b], "val_acc_ema") {
                i
            } else {
                b
            }
        })
        .expect("evals");
    assert_eq!(
        cli_common::same_tensors(
            &a.join("best_ema.safetensors"),
            &a.join("model_ema.safetensors")
        ),
        best_epoch == evals.len() - 1,
        "best EMA at epoch {best_epoch}: {metrics}"
    );
    assert!(
        out.contains("best val_acc_ema") && out.contains("best_ema.safetensors"),
        "summary: {out}"
    );
    // Mixing changes the steps: a run with EMA only ends elsewhere, and has no EMA metrics
    // without --ema-decay.
    let plain = tmp.path().join("plain");
    ok(&with(
        train_args(s(&data), s(&plain), "2"),
        &["--ema-decay", "0.99"],
    ));
    assert!(!cli_common::same_tensors(
        &a.join("model.safetensors"),
        &plain.join("model.safetensors")
    ));
    let bare = tmp.path().join("bare");
    ok(&with(
        train_args(s(&data), s(&bare), "1"),
        &["--steps", "2"],
    ));
    assert!(!bare.join("model_ema.safetensors").exists());
    assert!(!bare.join("best_ema.safetensors").exists());
    let metrics = std::fs::read_to_string(bare.join("metrics.jsonl")).expect("metrics");
    assert!(!metrics.contains("_ema"), "{metrics}");
}

#[test]
fn mixup_and_ema_flags_out_of_range_are_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let out = tmp.path().join("never");
    let cases: [(&[&str], &[&str]); 7] = [
        (&["--mixup", "-0.5"], &["--mixup -0.5", ">= 0"]),
        (&["--cutmix", "inf"], &["--cutmix inf"]),
        (
            &["--mixup-switch-prob", "1.5"],
            &["--mixup-switch-prob 1.5", "[0, 1]"],
        ),
        (
            &["--mixup-off-epoch", "0"],
            &["--mixup-off-epoch 0", "1..="],
        ),
        (&["--ema-decay", "1"], &["--ema-decay 1", "(0, 1)"]),
        (&["--ema-decay", "0"], &["--ema-decay 0", "(0, 1)"]),
        (&["--ema-decay", "nan"], &["--ema-decay"]),
    ];
    for (more, needles) in cases {
        fails(&with(train_args(s(&data), s(&out), "1"), more), needles);
        assert!(!out.exists(), "{more:?} left {}", out.display());
    }
    // An odd batch with mixing (train_args' batch is 50).
    let odd: Vec<&str> = train_args(s(&data), s(&out), "1")
        .into_iter()
        .map(|a| if a == "50" { "25" } else { a })
        .chain(["--cutmix", "1"])
        .collect();
    fails(&odd, &["--batch-size 25", "even"]);
    assert!(!out.exists());
    // With --resume, the run keeps its own.
    let run = tmp.path().join("run");
    ok(&with(train_args(s(&data), s(&run), "1"), &["--steps", "1"]));
    for flag in [
        ["--mixup", "0.8"],
        ["--cutmix", "1"],
        ["--mixup-switch-prob", "0.2"],
        ["--mixup-off-epoch", "3"],
        ["--ema-decay", "0.9"],
    ] {
        let args = [&["train", "--resume", s(&run)][..], &flag[..]].concat();
        fails(&args, &[flag[0], "cannot be combined with --resume"]);
    }
}
