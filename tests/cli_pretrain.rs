//! `vitk pretrain` end to end: a folder of unlabelled images pre-trains and writes the run's
//! files (the encoder under timm's names without a head, the mask token and decoder, the
//! state, the metrics, reconstructions.png); its encoder fine-tunes with `vitk train
//! --init-from`; resuming equals an uninterrupted run; bad input is refused before anything
//! is written.

mod cli_common;

use cli_common::{assert_same_tensors, fails, ok, read, s, synth, with};
use safetensors::SafeTensors;
use std::collections::BTreeSet;
use std::path::Path;
use vitk::model::{ImageSize, ModelConfig, ParamLayout, Pool};
use vitk::pretrain::reconstructions::sheet_size;

/// A flat folder of `n` images of several sizes and no class subfolders (stripes and
/// gradients: something to reconstruct).
fn unlabelled_folder(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for i in 0..n {
        let (w, h) = (18 + (i % 4) * 5, 16 + (i % 3) * 6);
        let img = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
            let stripe = ((x as usize + i) / 3 + y as usize / 4) % 2;
            image::Rgb([
                (40 + stripe * 160) as u8,
                ((x * 255) / w as u32) as u8,
                ((y as usize * 13 + i * 29) % 256) as u8,
            ])
        });
        img.save(dir.join(format!("img{i:03}.png"))).expect("png");
    }
}

/// A tiny model pre-trained on `data` into `out` (batch 10).
fn pretrain_args<'a>(data: &'a str, out: &'a str, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "pretrain",
        "--data",
        data,
        "--out",
        out,
        "--image-size",
        "16",
        "--patch-size",
        "4",
        "--embed-dim",
        "16",
        "--depth",
        "2",
        "--num-heads",
        "2",
        "--mlp-dim",
        "24",
        "--batch-size",
        "10",
        "--epochs",
        epochs,
        "--threads",
        "2",
        "--seed",
        "3",
        "--device",
        "cpu",
    ]
}

fn names(path: &Path) -> BTreeSet<String> {
    let bytes = read(path);
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    st.names().into_iter().map(String::from).collect()
}

#[test]
fn an_unlabelled_folder_pretrains_and_its_encoder_fine_tunes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let folder = tmp.path().join("unlabelled");
    unlabelled_folder(&folder, 50);
    let run = tmp.path().join("pre");
    let out = ok(&with(
        pretrain_args(s(&folder), s(&run), "2"),
        &["--val-split", "10", "--norm-pix", "--loss", "l2"],
    ));
    assert!(
        out.contains("pixels objective, 60% of the patches masked"),
        "{out}"
    );
    assert!(out.contains("final: val_loss="), "{out}");

    // The encoder under timm's names: the classifier's tensors but the head.
    let cfg = ModelConfig {
        image_size: ImageSize::square(16),
        patch_size: 4,
        in_chans: 3,
        num_classes: 1,
        embed_dim: 16,
        depth: 2,
        num_heads: 2,
        mlp_dim: 24,
        pool: Pool::Cls,
    };
    let classifier: BTreeSet<String> = ParamLayout::new(&cfg)
        .entries
        .iter()
        .map(|e| e.name.clone())
        .filter(|n| !n.starts_with("head."))
        .collect();
    assert_eq!(names(&run.join("model.safetensors")), classifier);
    assert_eq!(
        names(&run.join("pretrain.safetensors")),
        ["decoder.bias", "decoder.weight", "mask_token"]
            .map(String::from)
            .into()
    );
    // Two validation records, one per epoch, and a step record per step (4 per epoch).
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics");
    assert_eq!(metrics.matches("\"kind\":\"pretrain_eval\"").count(), 2);
    assert_eq!(metrics.matches("\"kind\":\"step\"").count(), 8);
    let config = std::fs::read_to_string(run.join("config.json")).expect("config");
    assert!(config.contains("\"norm_pix\": true") && config.contains("\"loss\": \"l2\""));
    // The picture: 8 columns of 16x16 images.
    let png = image::open(run.join("reconstructions.png")).expect("png");
    let (w, h) = sheet_size(8, ImageSize::square(16));
    assert_eq!((png.width() as usize, png.height() as usize), (w, h));

    // Fine-tuning the encoder on a labelled set: a new head, every other tensor loaded.
    let data = synth(tmp.path());
    let ft = tmp.path().join("ft");
    let out = ok(&[
        "train",
        "--data",
        s(&data),
        "--init-from",
        s(&run.join("model.safetensors")),
        "--out",
        s(&ft),
        "--image-size",
        "32",
        "--batch-size",
        "50",
        "--epochs",
        "1",
        "--steps",
        "2",
        "--threads",
        "2",
    ]);
    assert!(out.contains("loaded 30 of 32 tensors"), "{out}");
    assert!(out.contains("resampled pos_embed 4x4 -> 8x8"), "{out}");
    assert!(out.contains("new head"), "{out}");
    // Another width is refused, naming the tensor and both shapes; nothing is written.
    let wide = tmp.path().join("wide");
    fails(
        &[
            "train",
            "--data",
            s(&data),
            "--init-from",
            s(&run.join("model.safetensors")),
            "--embed-dim",
            "32",
            "--out",
            s(&wide),
        ],
        &["cls_token", "16", "32"],
    );
    assert!(!wide.exists());
}

#[test]
fn resuming_equals_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let (whole, parts) = (tmp.path().join("whole"), tmp.path().join("parts"));
    // 300 images at batch 10 at 16x16: 30 steps per epoch; stopped inside the first epoch.
    ok(&pretrain_args(s(&data), s(&whole), "2"));
    ok(&with(
        pretrain_args(s(&data), s(&parts), "2"),
        &["--steps", "17"],
    ));
    let out = ok(&[
        "pretrain",
        "--resume",
        s(&parts),
        "--threads",
        "2",
        "--device",
        "cpu",
    ]);
    assert!(out.contains("resuming"), "{out}");
    for file in [
        "state.safetensors",
        "model.safetensors",
        "pretrain.safetensors",
    ] {
        assert_same_tensors(&whole.join(file), &parts.join(file));
    }
    let losses = |run: &Path| -> Vec<String> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .expect("metrics")
            .lines()
            .filter_map(|l| l.split("\"loss\":").nth(1))
            .map(|l| l.split(',').next().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(losses(&whole), losses(&parts));
    assert_eq!(losses(&whole).len(), 60, "one loss per step");
}

#[test]
fn bad_input_is_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let out = tmp.path().join("never");
    let args = |more: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = pretrain_args(s(&data), s(&out), "1")
            .into_iter()
            .map(String::from)
            .collect();
        v.extend(more.iter().map(|m| m.to_string()));
        v
    };
    let cases: [(&[&str], &[&str]); 7] = [
        (&["--mask-ratio", "1.5"], &["--mask-ratio 1.5", "(0, 1]"]),
        (&["--mask-ratio", "0"], &["--mask-ratio 0", "(0, 1]"]),
        (&["--mask-ratio", "nan"], &["--mask-ratio"]),
        (
            &["--objective", "pixel"],
            &["--objective pixel", "pixels or color"],
        ),
        (&["--loss", "l3"], &["--loss l3", "l1 or l2"]),
        (&["--objective", "color", "--norm-pix"], &["--norm-pix"]),
        (
            &["--label-smoothing", "0.1"],
            &["--label-smoothing", "vitk pretrain"],
        ),
    ];
    for (more, needles) in cases {
        let a = args(more);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        fails(&a, needles);
        assert!(!out.exists(), "{more:?} left {}", out.display());
    }
    // An empty folder names itself.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    fails(&pretrain_args(s(&empty), s(&out), "1"), &[s(&empty)]);
    assert!(!out.exists());
    // A classification run is not resumed by pretrain, nor a pre-training run by train.
    let trained = tmp.path().join("trained");
    ok(&with(
        cli_common::train_args(s(&data), s(&trained), "1"),
        &["--steps", "1"],
    ));
    fails(
        &["pretrain", "--resume", s(&trained)],
        &["classification run", "vitk train --resume"],
    );
    let pre = tmp.path().join("pre");
    ok(&with(
        pretrain_args(s(&data), s(&pre), "1"),
        &["--steps", "1"],
    ));
    fails(
        &["train", "--resume", s(&pre)],
        &["pre-training run", "vitk pretrain --resume", "--init-from"],
    );
    fails(
        &["pretrain", "--resume", s(&pre), "--mask-ratio", "0.5"],
        &["--mask-ratio", "--resume"],
    );
}

#[test]
fn the_colour_objective_pretrains_and_draws_its_predictions() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let run = tmp.path().join("colour");
    let out = ok(&with(
        pretrain_args(s(&data), s(&run), "1"),
        &["--objective", "color", "--steps", "8"],
    ));
    assert!(
        out.contains("color objective, 50% of the patches corrupted"),
        "{out}"
    );
    let config = std::fs::read_to_string(run.join("config.json")).expect("config");
    assert!(config.contains("\"objective\": \"color\"") && config.contains("\"mask_ratio\": 0.5"));
    // The decoder classifies 512 colours.
    let bytes = read(&run.join("pretrain.safetensors"));
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    assert_eq!(
        st.tensor("decoder.weight").expect("decoder").shape(),
        [512, 16]
    );
    let png = image::open(run.join("reconstructions.png")).expect("png");
    let (w, h) = sheet_size(8, ImageSize::square(16));
    assert_eq!((png.width() as usize, png.height() as usize), (w, h));
}

#[test]
fn ctrl_c_saves_a_state_that_resumes_to_the_uninterrupted_result() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    // Long enough (100 epochs) that the interrupt lands mid-run.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitk"))
        .args(pretrain_args(s(&data), s(&b), "100"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vitk");
    let log = b.join("metrics.jsonl");
    let t0 = Instant::now();
    while std::fs::read_to_string(&log).map_or(0, |t| t.lines().count()) < 10 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "pre-training did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    assert_eq!(
        child.wait().expect("wait").code(),
        Some(130),
        "exit code after Ctrl-C"
    );
    let state = ok(&["pretrain", "--resume", s(&b), "--steps", "0"]);
    let step: u64 = state
        .split("at step ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume step in: {state}"));
    assert!((10..3000).contains(&step), "interrupted at step {step}");
    let target = (step + 5).to_string();
    ok(&["pretrain", "--resume", s(&b), "--steps", &target]);
    ok(&with(
        pretrain_args(s(&data), s(&a), "100"),
        &["--steps", &target],
    ));
    assert_same_tensors(&a.join("state.safetensors"), &b.join("state.safetensors"));
}

#[test]
fn diverging_pretraining_stops_without_saving_the_diverged_weights() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let run = tmp.path().join("run");
    // One step per epoch (batch 300 of 300 images); the first update (lr 1e38) ruins the
    // parameters, which the validation after that step sees.
    let mut args = pretrain_args(s(&data), s(&run), "3");
    let at = args.iter().position(|a| *a == "10").expect("batch size");
    args[at] = "300";
    args.extend(["--lr", "1e38", "--warmup-epochs", "0", "--min-lr", "0"]);
    let t = fails(&args, &["step 1", "No checkpoint has been saved"]);
    assert!(
        !run.exists(),
        "the run directory of a failed start is removed:\n{t}"
    );
}
