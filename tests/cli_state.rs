//! End-to-end tests of what a run keeps and reads back: checksums of model.safetensors and
//! state.safetensors, finite values, the divergence message, absolute data paths and the
//! data fingerprint (`--resume RUN --data DIR`), partial CIFAR-10 directories, images
//! decoded by content, and I/O errors that name their cause once.

mod cli_common;
use cli_common::*;

use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

fn write(p: &Path, bytes: &[u8]) {
    std::fs::write(p, bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Byte range of tensor `name`'s data in a safetensors file.
fn tensor_range(bytes: &[u8], name: &str) -> Range<usize> {
    let (n, meta) = SafeTensors::read_metadata(bytes).expect("safetensors header");
    let (a, b) = meta.info(name).expect("tensor").data_offsets;
    8 + n + a..8 + n + b
}

/// Flips the lowest mantissa bit of the middle f32 of tensor `name`: the value stays
/// finite and close, so only a checksum can tell.
fn flip_bit(path: &Path, name: &str) {
    let mut bytes = read(path);
    let r = tensor_range(&bytes, name);
    let at = r.start + (r.len() / 8) * 4;
    bytes[at] ^= 1;
    write(path, &bytes);
}

/// Rewrites a safetensors file with `edit` applied to every tensor's f32 values and its
/// metadata (as an older vitk, or a tool that does not know the checksums, would write it).
fn rewrite(
    path: &Path,
    edit: impl Fn(&str, &mut Vec<f32>),
    edit_meta: impl Fn(&mut HashMap<String, String>),
) {
    let bytes = read(path);
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut meta = SafeTensors::read_metadata(&bytes)
        .expect("header")
        .1
        .metadata()
        .clone()
        .unwrap_or_default();
    edit_meta(&mut meta);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in st.tensors() {
        let mut v: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        edit(&name, &mut v);
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        tensors.push((name, t.shape().to_vec(), raw));
    }
    let views = tensors.iter().map(|(n, shape, raw)| {
        let v = TensorView::new(safetensors::Dtype::F32, shape.clone(), raw).expect("view");
        (n.clone(), v)
    });
    let out = safetensors::serialize(views, Some(meta)).expect("serialize");
    write(path, &out);
}

fn metadata(path: &Path) -> HashMap<String, String> {
    let bytes = read(path);
    SafeTensors::read_metadata(&bytes)
        .expect("header")
        .1
        .metadata()
        .clone()
        .unwrap_or_default()
}

// ---------------------------------------------------------------- verified state

#[test]
fn checkpoints_carry_a_checksum_and_the_writer() {
    let (_tmp, _, run) = short_run("1");
    for f in ["model.safetensors", "state.safetensors"] {
        let m = metadata(&run.join(f));
        assert_eq!(
            m.get("vitk.writer").map(String::as_str),
            Some(concat!("vitk ", env!("CARGO_PKG_VERSION"))),
            "{f}: {m:?}"
        );
        let sums: HashMap<String, String> =
            serde_json::from_str(m.get("vitk.crc32").expect("vitk.crc32")).expect("json");
        let bytes = read(&run.join(f));
        let st = SafeTensors::deserialize(&bytes).expect("safetensors");
        assert_eq!(sums.len(), st.len(), "{f}: one checksum per tensor");
        for (name, t) in st.tensors() {
            // CRC-32 (IEEE) of the raw little-endian bytes, as zlib.crc32 computes it.
            let want = format!("{:08x}", crc32(t.data()));
            assert_eq!(sums.get(&name), Some(&want), "{f}: {name}");
        }
    }
}

/// Bitwise CRC-32 (IEEE 802.3, reflected, as zlib): an independent check of the writer.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn a_flipped_bit_in_the_state_is_refused_on_resume() {
    let (_tmp, _, run) = short_run("2");
    let state = run.join("state.safetensors");
    let before = read(&state);
    flip_bit(&state, "adam_m");
    fails(
        &["train", "--resume", s(&run), "--threads", "2"],
        &["state.safetensors", "adam_m", "CRC-32", "corrupted"],
    );
    // Nothing was trained or overwritten.
    assert_ne!(read(&state), before);
    write(&state, &before);
    ok(&[
        "train",
        "--resume",
        s(&run),
        "--threads",
        "2",
        "--steps",
        "3",
    ]);
}

#[test]
fn a_flipped_bit_in_the_model_is_refused_by_eval_predict_and_init_from() {
    let (tmp, data, run) = short_run("1");
    let model = tmp.path().join("model.safetensors");
    std::fs::copy(run.join("model.safetensors"), &model).expect("copy");
    flip_bit(&model, "blocks.0.attn.qkv.weight");
    let needles = ["model.safetensors", "blocks.0.attn.qkv.weight", "corrupted"];
    fails(
        &["eval", "--data", s(&data), "--checkpoint", s(&model)],
        &needles,
    );
    let img = tmp.path().join("x.png");
    image::RgbImage::from_pixel(8, 8, image::Rgb([9, 99, 199]))
        .save(&img)
        .expect("png");
    fails(&["predict", "--checkpoint", s(&model), s(&img)], &needles);
    let other = tmp.path().join("other");
    let mut args = train_args(s(&data), s(&other), "1");
    args.extend(["--steps", "1", "--init-from", s(&model)]);
    fails(&args, &needles);
    assert!(!other.exists());
}

#[test]
fn files_without_checksums_still_load() {
    let (tmp, data, run) = short_run("2");
    // A timm-style state dict: weights only, metadata {"format": "pt"}.
    let timm = tmp.path().join("timm.safetensors");
    std::fs::copy(run.join("model.safetensors"), &timm).expect("copy");
    rewrite(
        &timm,
        |_, _| {},
        |m| {
            m.clear();
            m.insert("format".into(), "pt".into());
        },
    );
    let out = tmp.path().join("from-timm");
    let mut args = train_args(s(&data), s(&out), "1");
    args.extend(["--steps", "1", "--init-from", s(&timm)]);
    ok(&args);
    // A model and a state written before checksums existed.
    let no_sum = |m: &mut HashMap<String, String>| {
        m.remove("vitk.crc32");
        m.remove("vitk.writer");
    };
    rewrite(&run.join("model.safetensors"), |_, _| {}, no_sum);
    rewrite(&run.join("state.safetensors"), |_, _| {}, no_sum);
    ok(&[
        "eval",
        "--data",
        s(&data),
        "--checkpoint",
        s(&run.join("model.safetensors")),
    ]);
    let t = ok(&[
        "train",
        "--resume",
        s(&run),
        "--threads",
        "2",
        "--steps",
        "3",
    ]);
    assert!(t.contains("no checksum"), "{t}");
}

#[test]
fn non_finite_values_in_the_state_are_refused_naming_the_tensor() {
    let (_tmp, data, run) = short_run("2");
    let state = run.join("state.safetensors");
    let good = read(&state);
    // Written without a checksum (as by an older vitk), so only the value check can tell.
    let no_sum = |m: &mut HashMap<String, String>| {
        m.remove("vitk.crc32");
    };
    rewrite(
        &state,
        |n, v| {
            if n == "params" {
                v[0] = f32::NAN; // cls_token comes first in timm's order
            }
        },
        no_sum,
    );
    fails(
        &["train", "--resume", s(&run), "--threads", "2"],
        &["state.safetensors", "'params'", "NaN", "cls_token"],
    );
    write(&state, &good);
    rewrite(
        &state,
        |n, v| {
            if n == "adam_v" {
                v[3] = -1.0;
            }
        },
        no_sum,
    );
    fails(
        &["train", "--resume", s(&run), "--threads", "2"],
        &["state.safetensors", "'adam_v'", "-1", ">= 0"],
    );
    // The same in model.safetensors, for evaluation.
    let model = run.join("model.safetensors");
    rewrite(
        &model,
        |n, v| {
            if n == "head.bias" {
                v[2] = f32::INFINITY;
            }
        },
        no_sum,
    );
    fails(
        &["eval", "--data", s(&data), "--checkpoint", s(&model)],
        &["model.safetensors", "'head.bias'", "inf at element 2"],
    );
}

// ---------------------------------------------------------------- divergence message

#[test]
fn divergence_before_any_checkpoint_says_none_was_saved() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth_named(tmp.path(), "data", "3");
    // Training-loss path: step 1 ruins the parameters (lr 1e38), step 2's loss is NaN,
    // long before the first checkpoint at the end of epoch 0 (6 steps).
    let run = tmp.path().join("a");
    let mut args = train_args(s(&data), s(&run), "3");
    args.extend(["--lr", "1e38", "--warmup-epochs", "0", "--min-lr", "0"]);
    let t = fails(
        &args,
        &["training loss is NaN", "No checkpoint has been saved"],
    );
    assert!(!t.contains("(step 0)"), "{t}");
    assert!(!run.join("model.safetensors").exists());
    // Validation path: one step per epoch (batch 300), the evaluation after it sees NaN.
    let run = tmp.path().join("b");
    let mut args = train_args(s(&data), s(&run), "3");
    let at = args.iter().position(|a| *a == "50").expect("batch size");
    args[at] = "300";
    args.extend(["--lr", "1e38", "--warmup-epochs", "0", "--min-lr", "0"]);
    let t = fails(
        &args,
        &["validation loss is NaN", "No checkpoint has been saved"],
    );
    assert!(!t.contains("(step 0)"), "{t}");
}

#[test]
fn divergence_after_a_checkpoint_names_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth_named(tmp.path(), "data", "3");
    let run = tmp.path().join("run");
    let mut args = train_args(s(&data), s(&run), "3");
    let at = args.iter().position(|a| *a == "50").expect("batch size");
    args[at] = "300";
    args.extend(["--steps", "1"]);
    ok(&args);
    let model = read(&run.join("model.safetensors"));
    // The config's rate raised behind vitk's back: the resumed run diverges at step 2.
    let cfg = run.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&read(&cfg)).expect("json");
    v["lr"] = serde_json::json!(1e38);
    v["min_lr"] = serde_json::json!(0.0);
    write(&cfg, v.to_string().as_bytes());
    fails(
        &["train", "--resume", s(&run), "--threads", "2"],
        &["NaN", "step 2", "(step 1) is kept"],
    );
    assert_eq!(read(&run.join("model.safetensors")), model);
}

// ---------------------------------------------------------------- data paths

#[test]
fn a_relative_data_path_resumes_from_another_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    synth_named(tmp.path(), "data", "3");
    let mut args = train_args("data", "run", "1");
    args.extend(["--steps", "2"]);
    ok_in(Some(tmp.path()), &args);
    let run = tmp.path().join("run");
    let cfg: serde_json::Value =
        serde_json::from_slice(&read(&run.join("config.json"))).expect("json");
    let stored = cfg["data"]["dir"]["path"].as_str().expect("data path");
    assert!(Path::new(stored).is_absolute(), "{stored}");
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    let t = ok_in(
        Some(&elsewhere),
        &[
            "train",
            "--resume",
            s(&run),
            "--threads",
            "2",
            "--steps",
            "3",
        ],
    );
    assert!(t.contains("at step 2"), "{t}");
}

#[test]
fn an_old_config_with_a_relative_path_resumes_where_the_path_exists() {
    let tmp = tempfile::tempdir().expect("tempdir");
    synth_named(tmp.path(), "data", "3");
    let mut args = train_args("data", "run", "1");
    args.extend(["--steps", "2"]);
    ok_in(Some(tmp.path()), &args);
    // As an older vitk wrote it: the path as typed, no fingerprint.
    let run = tmp.path().join("run");
    let cfg = run.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&read(&cfg)).expect("json");
    v["data"]["dir"] = serde_json::json!({"path": "data", "val_split": null});
    write(&cfg, v.to_string().as_bytes());
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    fails_in(
        Some(&elsewhere),
        &["train", "--resume", s(&run), "--threads", "2"],
        &["config.json", "\"data\"", "relative", "does not exist"],
    );
    ok_in(
        Some(tmp.path()),
        &["train", "--resume", "run", "--threads", "2", "--steps", "3"],
    );
}

#[test]
fn resume_with_moved_data_checks_the_fingerprint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth_named(tmp.path(), "data", "3");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    ok(&train_args(s(&data), s(&a), "1"));
    let mut first = train_args(s(&data), s(&b), "1");
    first.extend(["--steps", "3"]);
    ok(&first);
    let moved = tmp.path().join("moved");
    std::fs::rename(&data, &moved).expect("move");
    fails(
        &["train", "--resume", s(&b), "--threads", "2"],
        &[s(&data), "--data"],
    );
    // Other data: the message says what differs.
    let other = synth_named(tmp.path(), "other", "4");
    fails(
        &["train", "--resume", s(&b), "--data", s(&other)],
        &[s(&other), "fingerprint", "first"],
    );
    let fewer = tmp.path().join("fewer");
    ok(&[
        "synth",
        "--out",
        s(&fewer),
        "--train",
        "250",
        "--val",
        "60",
        "--seed",
        "3",
    ]);
    fails(
        &["train", "--resume", s(&b), "--data", s(&fewer)],
        &[s(&fewer), "training records", "250", "300"],
    );
    // The same data elsewhere: the run continues to the uninterrupted result.
    let t = ok(&[
        "train",
        "--resume",
        s(&b),
        "--data",
        s(&moved),
        "--threads",
        "2",
    ]);
    assert!(t.contains("at step 3"), "{t}");
    assert_same_tensors(&a.join("model.safetensors"), &b.join("model.safetensors"));
    // config.json now names the new place.
    let cfg: serde_json::Value =
        serde_json::from_slice(&read(&b.join("config.json"))).expect("json");
    let stored = PathBuf::from(cfg["data"]["dir"]["path"].as_str().expect("path"));
    assert_eq!(
        stored.canonicalize().expect("stored"),
        moved.canonicalize().expect("moved")
    );
    // Data changed in place is refused too.
    let batch = moved.join("data_batch_1.bin");
    let mut bytes = read(&batch);
    bytes[1] ^= 0x40; // a pixel of the first record
    write(&batch, &bytes);
    fails(
        &["train", "--resume", s(&b), "--threads", "2"],
        &[s(&moved), "changed since the run started", "first"],
    );
    // Other run-defining flags are still refused.
    fails(
        &[
            "train",
            "--resume",
            s(&b),
            "--data",
            s(&moved),
            "--val-split",
            "9",
        ],
        &["--val-split", "cannot be combined with --resume"],
    );
}

// ---------------------------------------------------------------- partial CIFAR-10

#[test]
fn a_cifar_directory_with_missing_batches_needs_allow_partial() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth_named(tmp.path(), "data", "3");
    for k in [2, 4, 5] {
        std::fs::remove_file(data.join(format!("data_batch_{k}.bin"))).expect("rm");
    }
    let run = tmp.path().join("run");
    let mut args = train_args(s(&data), s(&run), "1");
    args.extend(["--steps", "1"]);
    fails(
        &args,
        &[
            "data_batch_2.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
            "--allow-partial",
        ],
    );
    assert!(!run.exists());
    args.push("--allow-partial");
    let t = ok(&args);
    // 300 records in 5 files of 60: batches 1 and 3 hold 120.
    assert!(
        t.contains("warning") && t.contains("2 of 5") && t.contains("120 records"),
        "{t}"
    );
    // Evaluation asks for the same permission.
    let ckpt = run.join("model.safetensors");
    fails(
        &["eval", "--data", s(&data), "--checkpoint", s(&ckpt)],
        &["data_batch_2.bin", "--allow-partial"],
    );
    let t = ok(&[
        "eval",
        "--data",
        s(&data),
        "--checkpoint",
        s(&ckpt),
        "--allow-partial",
    ]);
    assert!(t.contains("warning") && t.contains("2 of 5"), "{t}");
    // The resumed run keeps the permission (it is part of the run's config).
    ok(&[
        "train",
        "--resume",
        s(&run),
        "--threads",
        "2",
        "--steps",
        "2",
    ]);
    fails(
        &["train", "--resume", s(&run), "--allow-partial"],
        &["--allow-partial", "cannot be combined with --resume"],
    );
    fails(
        &[
            "train",
            "--allow-partial",
            "--steps",
            "1",
            "--out",
            s(&tmp.path().join("synthetic")),
        ],
        &["--allow-partial", "--data"],
    );
}

// ---------------------------------------------------------------- images by content

#[test]
fn images_are_decoded_by_content_everywhere() {
    let (tmp, _, run) = short_run("2");
    let ckpt = run.join("model.safetensors");
    let img = image::RgbImage::from_fn(40, 24, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 10) as u8, 128])
    });
    let png = tmp.path().join("x.png");
    img.save(&png).expect("png");
    let disguised = tmp.path().join("x.jpg");
    std::fs::copy(&png, &disguised).expect("copy");
    let top = |p: &Path| -> Vec<String> {
        ok(&["predict", "--checkpoint", s(&ckpt), s(p)])
            .lines()
            .skip(1)
            .map(String::from)
            .collect()
    };
    assert_eq!(top(&disguised), top(&png));
    let notes = tmp.path().join("notes.jpg");
    write(&notes, b"shopping list");
    let t = fails(
        &["predict", "--checkpoint", s(&ckpt), s(&png), s(&notes)],
        &["notes.jpg", "not an image"],
    );
    assert!(!t.contains("x.png"), "{t}");
    // Training and evaluation on an ImageFolder with the same disguised PNG.
    let folder = tmp.path().join("folder");
    for (class, n) in [("a", 4), ("b", 4)] {
        std::fs::create_dir_all(folder.join(class)).expect("mkdir");
        for i in 0..n {
            std::fs::copy(&png, folder.join(class).join(format!("{i}.jpg"))).expect("copy");
        }
    }
    let out = tmp.path().join("folder-run");
    let mut args = train_args(s(&folder), s(&out), "1");
    let at = args.iter().position(|a| *a == "50").expect("batch size");
    args[at] = "4";
    args.extend(["--val-split", "2"]);
    ok(&args);
    ok(&[
        "eval",
        "--data",
        s(&folder),
        "--val-split",
        "2",
        "--checkpoint",
        s(&out.join("model.safetensors")),
    ]);
}

// ---------------------------------------------------------------- I/O errors

/// The error line says each cause once: no ": "-separated part of it repeats.
fn assert_each_cause_once(t: &str) {
    let line = t
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{t}"));
    let parts: Vec<&str> = line.split(": ").collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(!parts[i + 1..].contains(p), "{p:?} repeated in: {line}");
    }
}

#[test]
fn io_errors_name_their_cause_once() {
    let (tmp, data, run) = short_run("1");
    let meta = data.join("batches.meta.txt");
    std::fs::remove_file(&meta).expect("rm");
    std::fs::create_dir(&meta).expect("mkdir");
    let t = fails(
        &train_args(s(&data), s(&tmp.path().join("run2")), "1"),
        &["batches.meta.txt", "os error"],
    );
    assert_each_cause_once(&t);
    let missing = tmp.path().join("missing.safetensors");
    let t = fails(
        &["eval", "--data", s(&data), "--checkpoint", s(&missing)],
        &["missing.safetensors", "os error"],
    );
    assert_each_cause_once(&t);
    let broken = tmp.path().join("broken.png");
    write(&broken, b"\x89PNG\r\n\x1a\n garbage");
    let t = fails(
        &[
            "predict",
            "--checkpoint",
            s(&run.join("model.safetensors")),
            s(&broken),
        ],
        &["broken.png"],
    );
    assert_each_cause_once(&t);
}
