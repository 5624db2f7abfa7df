//! What a run shows and keeps, as a timm user expects it: top-1 and top-5 validation accuracy
//! and training accuracy per epoch (on screen and in metrics.jsonl, with the epoch's time,
//! images/s, ETA and timestamps), best.safetensors at the best validation top-1, an
//! end-of-run summary, `--save-every` for saves inside an epoch, `--resume RUN --epochs N`
//! to extend a run, a note when a run never left the warm-up, and the fine-tuning controls
//! (`--layer-decay`, `--freeze-backbone`) recorded in config.json and kept on resume.

mod cli_common;
use cli_common::*;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn records(run: &Path, kind: &str) -> Vec<serde_json::Value> {
    String::from_utf8(read(&run.join("metrics.jsonl")))
        .expect("utf-8 log")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"))
        .filter(|r| r["kind"] == kind)
        .collect()
}

fn num(r: &serde_json::Value, key: &str) -> f64 {
    r[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {r}"))
}

/// "accuracy: 0.6833" of `vitk eval` output.
fn eval_accuracy(out: &str) -> f64 {
    let at = out.find("accuracy: ").expect("accuracy in eval output") + "accuracy: ".len();
    out[at..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a number")
}

#[test]
fn epochs_report_top5_train_accuracy_pace_and_keep_the_best_weights() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let run = tmp.path().join("run");
    let o = vitk(&with(
        train_args(s(&data), s(&run), "3"),
        &["--warmup-epochs", "0", "--lr", "3e-3"],
    ));
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for needle in [
        "val_top5=",
        "train_acc=",
        "| epoch in ",
        "img/s, eta ",
        "run summary: all 18 steps of the schedule done",
        "best val_acc",
        "best.safetensors",
        "state (resume):",
    ] {
        assert!(t.contains(needle), "no {needle:?} in:\n{t}");
    }
    assert!(!t.contains("warm-up"), "no warm-up in this run:\n{t}");
    // the `final:` line stays the last of stdout (scripts read it)
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("final: ")),
        "{t}"
    );

    let evals = records(&run, "eval");
    assert_eq!(evals.len(), 3, "one evaluation per epoch");
    for e in &evals {
        let (top1, top5) = (num(e, "val_acc"), num(e, "val_top5"));
        assert!(
            (0.0..=1.0).contains(&top1) && top5 >= top1 && top5 <= 1.0,
            "{e}"
        );
        assert!((0.0..=1.0).contains(&num(e, "train_acc")), "{e}");
        assert!(
            num(e, "epoch_secs") > 0.0 && num(e, "img_per_s") > 0.0,
            "{e}"
        );
        assert!(num(e, "eta_secs") >= 0.0 && num(e, "time") > 1.6e9, "{e}");
    }
    let steps = records(&run, "step");
    assert_eq!(steps.len(), 18);
    assert!(steps.iter().all(|r| num(r, "time") > 1.6e9), "timestamps");
    assert!(
        steps
            .windows(2)
            .all(|w| num(&w[1], "time") >= num(&w[0], "time")),
        "timestamps in order"
    );

    // best.safetensors holds the weights of the first best top-1: `vitk eval` on the same
    // validation images gives that accuracy, and they are the last weights only when the
    // best epoch was the last.
    let best = evals.iter().fold(&evals[0], |b, e| {
        if num(e, "val_acc") > num(b, "val_acc") {
            e
        } else {
            b
        }
    });
    let best_file = run.join("best.safetensors");
    let eval = |ckpt: &Path| {
        eval_accuracy(&ok(&[
            "eval",
            "--data",
            s(&data),
            "--checkpoint",
            s(ckpt),
            "--batch-size",
            "50",
            "--threads",
            "2",
        ]))
    };
    // (eval prints 4 decimals; accuracies of 60 images are 1/60 apart)
    assert!(
        (eval(&best_file) - num(best, "val_acc")).abs() < 1e-4,
        "best.safetensors does not give the best accuracy {}",
        num(best, "val_acc")
    );
    let same = same_tensors(&best_file, &run.join("model.safetensors"));
    assert_eq!(same, num(best, "step") == 18.0, "best {best}");
    assert!(
        t.contains(&format!("best val_acc {:.4}", num(best, "val_acc"))),
        "{t}"
    );
}

#[test]
fn save_every_saves_inside_an_epoch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    ok(&["synth", "--out", s(&data), "--train", "3000", "--val", "20"]);
    let run = tmp.path().join("run");
    // 60 steps per epoch; a state every 3 steps. Killed once the first state exists.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitk"))
        .args(with(
            train_args(s(&data), s(&run), "1"),
            &["--save-every", "3"],
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vitk");
    let t0 = Instant::now();
    while !run.join("state.safetensors").exists() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no state saved");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
    let t = ok(&["train", "--resume", s(&run), "--steps", "1"]);
    let at = t.find("at step ").expect("resume position") + "at step ".len();
    let step: u64 = t[at..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a step");
    assert!(
        step.is_multiple_of(3) && step > 0 && step < 60,
        "state at step {step}: expected a multiple of 3 inside the first epoch\n{t}"
    );
    assert!(t.contains(&format!("(epoch 0, batch {step})")), "{t}");
    fails(
        &with(
            train_args(s(&data), s(&tmp.path().join("r2")), "1"),
            &["--save-every", "0"],
        ),
        &["--save-every 0", "at least 1"],
    );
}

#[test]
fn resume_with_more_epochs_extends_a_finished_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let run = tmp.path().join("run");
    let t = ok(&train_args(s(&data), s(&run), "1"));
    assert!(
        t.contains("note: the whole run was learning-rate warm-up"),
        "1 epoch of 1 warm-up epoch:\n{t}"
    );
    fails(
        &["train", "--resume", s(&run), "--epochs", "1"],
        &["--epochs 1", "expected more than 1"],
    );
    let t = ok(&["train", "--resume", s(&run), "--epochs", "3"]);
    assert!(
        t.contains("extending the run from 1 to 3 epochs") && t.contains("schedule is recomputed"),
        "{t}"
    );
    assert!(
        t.contains("run summary: all 18 steps of the schedule done"),
        "{t}"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&read(&run.join("config.json"))).expect("config.json");
    assert_eq!(config["epochs"], 3);
    assert_eq!(records(&run, "step").len(), 18);
    assert_eq!(records(&run, "eval").len(), 3);
    // The best of the whole run, the first invocation's evaluation included.
    let evals = records(&run, "eval");
    let best = evals.iter().map(|e| num(e, "val_acc")).fold(0.0, f64::max);
    assert!(t.contains(&format!("best val_acc {best:.4}")), "{t}");
}

/// Whether every tensor but those whose names start with one of `keep` is bit for bit the
/// same in two safetensors files.
fn backbone_unchanged(a: &Path, b: &Path, keep: &[&str]) -> bool {
    use safetensors::SafeTensors;
    let (ba, bb) = (read(a), read(b));
    let (ta, tb) = (
        SafeTensors::deserialize(&ba).expect("safetensors"),
        SafeTensors::deserialize(&bb).expect("safetensors"),
    );
    let names: Vec<&str> = ta
        .names()
        .into_iter()
        .filter(|n| !keep.iter().any(|k| n.starts_with(k)))
        .collect();
    assert!(names.iter().any(|n| n.starts_with("blocks.")), "{names:?}");
    names
        .iter()
        .all(|n| ta.tensor(n).expect("tensor").data() == tb.tensor(n).expect("tensor").data())
}

/// A linear probe with layer decay from a run's weights: config.json records both controls,
/// the backbone comes out bit for bit as it went in (also after a resume, which keeps the
/// controls and refuses them as flags), the head and its norm trained; a config.json of an
/// older vitk without the fields resumes as a plain run.
#[test]
fn fine_tuning_controls_are_recorded_and_kept_on_resume() {
    let (tmp, data, base) = short_run("2");
    let weights = base.join("model.safetensors");
    let run = tmp.path().join("probe");
    let t = ok(&with(
        train_args(s(&data), s(&run), "1"),
        &[
            "--init-from",
            s(&weights),
            "--layer-decay",
            "0.75",
            "--freeze-backbone",
            "--steps",
            "3",
        ],
    ));
    assert!(
        t.contains("fine-tuning: layer decay 0.75")
            && t.contains(
                "backbone frozen: only norm.weight, norm.bias, head.weight, head.bias train"
            ),
        "{t}"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&read(&run.join("config.json"))).expect("config.json");
    assert_eq!(config["layer_decay"], 0.75);
    assert_eq!(config["freeze_backbone"], true);
    let model = run.join("model.safetensors");
    assert!(backbone_unchanged(&weights, &model, &["norm.", "head."]));
    assert!(!same_tensors(&weights, &model), "the head did not train");

    for flag in [&["--freeze-backbone"][..], &["--layer-decay", "0.5"]] {
        fails(
            &with(vec!["train", "--resume", s(&run)], flag),
            &[flag[0], "cannot be combined with --resume"],
        );
    }
    let t = ok(&["train", "--resume", s(&run), "--steps", "5"]);
    assert!(t.contains("backbone frozen"), "{t}");
    assert_eq!(records(&run, "step").len(), 5);
    assert!(backbone_unchanged(&weights, &model, &["norm.", "head."]));

    // An older config.json, without the fields: a plain run, whose backbone trains.
    let path = base.join("config.json");
    let mut old: serde_json::Value = serde_json::from_slice(&read(&path)).expect("config.json");
    let fields = old.as_object_mut().expect("object");
    assert_eq!(fields.remove("layer_decay"), Some(serde_json::Value::Null));
    assert_eq!(fields.remove("freeze_backbone"), Some(false.into()));
    std::fs::write(&path, serde_json::to_vec_pretty(&old).expect("json")).expect("write");
    let before = tmp.path().join("before.safetensors");
    std::fs::copy(&weights, &before).expect("copy");
    let t = ok(&["train", "--resume", s(&base), "--steps", "3"]);
    assert!(!t.contains("fine-tuning:"), "{t}");
    assert!(!backbone_unchanged(&before, &weights, &["norm.", "head."]));
}
