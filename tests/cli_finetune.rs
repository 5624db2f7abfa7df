//! Pre-train then fine-tune through the CLI: a model trained at 32x32 on 10 classes starts a
//! run at 48x48 on a 3-class ImageFolder, says what it adapted, records it and learns.

mod cli_common;

use cli_common::{fails, ok, s, short_run, synth, train_args, with};
use std::path::Path;

/// A 3-class ImageFolder (train/ and val/) of images of several sizes whose class is the
/// dominant colour channel: learnable in a few steps.
fn colour_folder(root: &Path) {
    for (split, n) in [("train", 30), ("val", 12)] {
        for (k, class) in ["red", "green", "blue"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).expect("mkdir");
            for i in 0..n {
                let (w, h) = (20 + (i % 5) * 7, 24 + (i % 3) * 9);
                let img = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
                    let noise = |c: usize| {
                        ((x as usize * 31 + y as usize * 17 + i * 13 + c * 7) % 90) as u8
                    };
                    let mut p = [noise(0), noise(1), noise(2)];
                    p[k] = p[k].saturating_add(150);
                    image::Rgb(p)
                });
                img.save(dir.join(format!("{i}.png"))).expect("png");
            }
        }
    }
}

#[test]
fn a_model_trained_at_32_fine_tunes_at_48_on_new_classes_with_layer_decay() {
    // `micro` (D64 L4 H4 M128) trained on 10 classes at 32x32.
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let pre = tmp.path().join("pre");
    ok(&[
        "train",
        "--model",
        "micro",
        "--data",
        s(&data),
        "--out",
        s(&pre),
        "--batch-size",
        "50",
        "--steps",
        "6",
        "--threads",
        "2",
    ]);
    let folder = tmp.path().join("colours");
    colour_folder(&folder);
    let ckpt = pre.join("model.safetensors");
    let ft = tmp.path().join("ft");
    // The architecture and normalisation come from the checkpoint; the size and the
    // classes from the flags and the data.
    let out = ok(&[
        "train",
        "--init-from",
        s(&ckpt),
        "--data",
        s(&folder),
        "--image-size",
        "48",
        "--out",
        s(&ft),
        "--epochs",
        "5",
        "--batch-size",
        "15",
        "--warmup-epochs",
        "0",
        "--layer-decay",
        "0.75",
        "--threads",
        "2",
    ]);
    for line in [
        "loaded 54 of 56 tensors",
        "resampled pos_embed 8x8 -> 12x12 (bicubic, antialiased, as timm)",
        "new head 10 -> 3 classes (re-initialised)",
        "model D64 L4 H4 M128 P4 S48 C3 K3",
    ] {
        assert!(out.contains(line), "missing {line:?}:\n{out}");
    }
    let final_line = out.lines().last().expect("output");
    let acc: f64 = final_line
        .split("val_acc=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no val_acc in {final_line}"));
    // Chance is 1/3.
    assert!(acc >= 0.8, "fine-tuned val_acc {acc}:\n{out}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ft.join("config.json")).expect("config"))
            .expect("json");
    let init = &config["init_from"];
    assert_eq!(
        init["path"].as_str(),
        Some(s(&std::path::absolute(&ckpt).expect("abs")))
    );
    assert_eq!(init["notes"].as_array().map(Vec::len), Some(3), "{init}");
    assert_eq!(config["layer_decay"].as_f64(), Some(0.75));
    let pre_config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pre.join("config.json")).expect("config"))
            .expect("json");
    assert_eq!(config["mean"], pre_config["mean"]);
}

#[test]
fn patch_size_changes_need_resample_patch_and_leave_nothing_behind() {
    let (tmp, data, pre) = short_run("1");
    let ckpt = pre.join("model.safetensors");
    let out = tmp.path().join("p8");
    let base = with(
        train_args(s(&data), s(&out), "1"),
        &["--steps", "1", "--init-from", s(&ckpt), "--patch-size", "8"],
    );
    fails(&base, &["patch size is 4x4", "--resample-patch"]);
    assert!(!out.exists());
    let o = ok(&with(base, &["--resample-patch"]));
    assert!(
        o.contains("resampled patch_embed.proj.weight 4x4 -> 8x8")
            && o.contains("resampled pos_embed 8x8 -> 4x4"),
        "{o}"
    );
    let alone = tmp.path().join("alone");
    fails(
        &with(train_args(s(&data), s(&alone), "1"), &["--resample-patch"]),
        &["--resample-patch applies to the weights given with --init-from"],
    );
    assert!(!alone.exists());
}

#[test]
fn a_non_square_model_trains_evaluates_and_predicts() {
    let (tmp, _data, pre) = short_run("2");
    let folder = tmp.path().join("colours");
    colour_folder(&folder);
    let run = tmp.path().join("wide");
    let pre_model = pre.join("model.safetensors");
    let base = [
        "train",
        "--init-from",
        s(&pre_model),
        "--data",
        s(&folder),
        "--out",
        s(&run),
        "--epochs",
        "1",
        "--batch-size",
        "15",
        "--threads",
        "2",
    ];
    // 40 x 54 does not divide into patches of 4.
    fails(
        &with(base.to_vec(), &["--image-size", "40x54"]),
        &["--image-size 40x54 is not a multiple of --patch-size 4"],
    );
    assert!(!run.exists());
    let out = ok(&with(base.to_vec(), &["--image-size", "24x40"]));
    assert!(
        out.contains("resampled pos_embed 8x8 -> 6x10") && out.contains("S24x40"),
        "{out}"
    );
    let ckpt = run.join("model.safetensors");
    let e = ok(&["eval", "--data", s(&folder), "--checkpoint", s(&ckpt)]);
    assert!(e.contains("accuracy"), "{e}");
    // Any image size: resized to 24 x 40 as training resized.
    let img = tmp.path().join("odd.png");
    image::RgbImage::from_pixel(17, 33, image::Rgb([20, 220, 30]))
        .save(&img)
        .expect("png");
    let p = ok(&["predict", "--checkpoint", s(&ckpt), "--top", "1", s(&img)]);
    assert!(p.contains("odd.png:"), "{p}");
}

#[test]
fn eval_at_another_image_size_resamples_pos_embed() {
    let (tmp, data, pre) = short_run("2");
    let ckpt = pre.join("model.safetensors");
    let before = std::fs::read(&ckpt).expect("checkpoint");
    let e = ok(&[
        "eval",
        "--data",
        s(&data),
        "--checkpoint",
        s(&ckpt),
        "--image-size",
        "40x48",
    ]);
    assert!(
        e.contains("resampled pos_embed 8x8 -> 10x12") && e.contains("samples: 60"),
        "{e}"
    );
    assert_eq!(std::fs::read(&ckpt).expect("checkpoint"), before);
    fails(
        &[
            "eval",
            "--data",
            s(&data),
            "--checkpoint",
            s(&ckpt),
            "--image-size",
            "30",
        ],
        &["--image-size 30 is not a multiple of the checkpoint's patch size 4"],
    );
    drop(tmp);
}
