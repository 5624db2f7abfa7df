//! `vitk attention`: one PNG sheet per image (the input, the last block's heads, the rollout),
//! a line per image on stdout, and one-line errors naming the file.

mod cli_common;
use cli_common::*;

use image::imageops::FilterType;
use std::path::{Path, PathBuf};

/// A tiny model (D 16, L 2, H 2, 32x32 input) trained for 3 steps, class or mean pooling:
/// (temporary directory, checkpoint).
fn trained(pool: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = synth(tmp.path());
    let run = tmp.path().join("run");
    ok(&with(
        train_args(s(&data), s(&run), "1"),
        &["--steps", "3", "--pool", pool],
    ));
    (tmp, run.join("model.safetensors"))
}

/// An RGB PNG of `w` x `h` with a pattern, at `dir/name`.
fn png(dir: &Path, name: &str, w: u32, h: u32) -> PathBuf {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 7 % 256) as u8,
            (y * 5 % 256) as u8,
            ((x + y) % 2 * 200) as u8,
        ])
    });
    let p = dir.join(name);
    img.save(&p).expect("write png");
    p
}

/// The sheet of the test model: 4 panels (input, 2 heads, rollout) in one row, each 160
/// pixels (32 x 5) with 8-pixel gaps, a 22-pixel title strip and a 30-pixel header:
/// 8 + 4 x 168 = 680 wide, 30 + 22 + 160 + 8 = 220 high.
const SHEET: (u32, u32) = (680, 220);
/// Where the input panel's image starts, and its zoom.
const INPUT_AT: (u32, u32) = (8, 52);
const ZOOM: u32 = 5;

#[test]
fn writes_one_sheet_per_image_and_a_line_each() {
    for pool in ["cls", "mean"] {
        let (tmp, ckpt) = trained(pool);
        let a = png(tmp.path(), "a.png", 32, 32);
        let b = png(tmp.path(), "wide.png", 57, 40);
        let out = tmp.path().join("maps/nested");
        let o = vitk(&[
            "attention",
            "--checkpoint",
            s(&ckpt),
            s(&a),
            s(&b),
            "--out",
            s(&out),
        ]);
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{pool}: {}", text(&o));
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{pool}: one line per image:\n{stdout}");
        for (line, (img, stem)) in lines.iter().zip([(&a, "a"), (&b, "wide")]) {
            let png_out = out.join(format!("{stem}.png"));
            assert!(line.starts_with(&format!("{}: ", img.display())), "{line}");
            assert!(
                line.ends_with(&format!(" -> {}", png_out.display())),
                "{line}"
            );
            // "PATH: CLASS P -> PNG" with a probability in (0, 1]
            let p: f64 = line
                .rsplit(" -> ")
                .nth(1)
                .and_then(|l| l.split_whitespace().last())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no probability in {line}"));
            assert!(p > 0.0 && p <= 1.0, "{line}");
            let sheet = image::open(&png_out)
                .unwrap_or_else(|e| panic!("{}: {e}", png_out.display()))
                .to_rgb8();
            // Whatever the input's size, the sheet shows the model's 32x32 view of it.
            assert_eq!(sheet.dimensions(), SHEET, "{pool}: {}", png_out.display());
        }
        // The input panel is the image as the model sees it: resized to 32x32 with the
        // loader's filter (a.png is 32x32 already), not normalised; pixel (x, y) of it fills
        // a ZOOM x ZOOM square.
        for stem in ["a", "wide"] {
            let sheet = image::open(out.join(format!("{stem}.png")))
                .expect("sheet")
                .to_rgb8();
            let input = image::open(tmp.path().join(format!("{stem}.png")))
                .expect("input")
                .to_rgb8();
            let seen = image::imageops::resize(&input, 32, 32, FilterType::Triangle);
            for (x, y) in [(0, 0), (5, 9), (20, 3), (31, 31)] {
                let at = (INPUT_AT.0 + x * ZOOM + 2, INPUT_AT.1 + y * ZOOM + 2);
                assert_eq!(
                    sheet.get_pixel(at.0, at.1),
                    seen.get_pixel(x, y),
                    "{pool} {stem}: input pixel ({x}, {y})"
                );
            }
        }
        let sheet = image::open(out.join("a.png")).expect("sheet").to_rgb8();
        // The map panels are not blank: each holds more than a handful of colours.
        for panel in 1..4 {
            let x0 = 8 + panel * 168;
            let mut colours: Vec<[u8; 3]> = (0..160)
                .flat_map(|y| (0..160).map(move |x| (x, y)))
                .map(|(x, y)| sheet.get_pixel(x0 + x, INPUT_AT.1 + y).0)
                .collect();
            colours.sort();
            colours.dedup();
            assert!(colours.len() > 20, "{pool}: panel {panel} nearly blank");
        }
        // A second run replaces the files, atomically (no temporary left behind).
        ok(&[
            "attention",
            "--checkpoint",
            s(&ckpt),
            s(&a),
            "--out",
            s(&out),
        ]);
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a.png", "wide.png"], "{pool}");
    }
}

#[test]
fn errors_name_the_file_in_one_line() {
    let (tmp, ckpt) = trained("cls");
    let a = png(tmp.path(), "a.png", 32, 32);
    let out = tmp.path().join("maps");
    let missing = tmp.path().join("missing.png");
    let o = vitk(&[
        "attention",
        "--checkpoint",
        s(&ckpt),
        s(&a),
        s(&missing),
        "--out",
        s(&out),
    ]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(err.trim_end().lines().count(), 1, "one line:\n{err}");
    assert!(
        err.contains(s(&missing)) && !err.contains("panicked"),
        "{err}"
    );
    // Every image is read before anything is written.
    assert!(!out.exists(), "nothing written when an image is missing");

    let bad = tmp.path().join("bad.safetensors");
    std::fs::write(&bad, b"not a checkpoint").expect("write");
    let t = fails(
        &[
            "attention",
            "--checkpoint",
            s(&bad),
            s(&a),
            "--out",
            s(&out),
        ],
        &[s(&bad)],
    );
    assert_eq!(t.trim_end().lines().count(), 1, "one line:\n{t}");

    let not_image = tmp.path().join("notes.png");
    std::fs::write(&not_image, b"hello").expect("write");
    fails(
        &[
            "attention",
            "--checkpoint",
            s(&ckpt),
            s(&not_image),
            "--out",
            s(&out),
        ],
        &[s(&not_image), "not an image"],
    );

    // Two images that would write the same PNG.
    std::fs::create_dir(tmp.path().join("b")).expect("mkdir");
    let a2 = png(&tmp.path().join("b"), "a.png", 20, 20);
    fails(
        &[
            "attention",
            "--checkpoint",
            s(&ckpt),
            s(&a),
            s(&a2),
            "--out",
            s(&out),
        ],
        &["would both be written to"],
    );
}

/// `--device emu` runs the device engine, which recomputes the probabilities from q, k and the
/// log-sum-exp: the same class and probability, and the same sheet up to rounding.
#[test]
fn the_device_engine_draws_the_same_maps() {
    let (tmp, ckpt) = trained("cls");
    let a = png(tmp.path(), "a.png", 40, 40);
    let mut sheets = Vec::new();
    let mut lines = Vec::new();
    for device in ["cpu", "emu"] {
        let out = tmp.path().join(device);
        let o = vitk(&[
            "attention",
            "--checkpoint",
            s(&ckpt),
            s(&a),
            "--out",
            s(&out),
            "--device",
            device,
        ]);
        assert!(o.status.success(), "{device}: {}", text(&o));
        let line = String::from_utf8_lossy(&o.stdout).into_owned();
        lines.push(line.split(" -> ").next().expect("line").to_owned());
        sheets.push(image::open(out.join("a.png")).expect("sheet").to_rgb8());
    }
    assert_eq!(lines[0], lines[1], "class and probability");
    assert_eq!(sheets[0].dimensions(), sheets[1].dimensions());
    let off = sheets[0]
        .as_raw()
        .iter()
        .zip(sheets[1].as_raw())
        .filter(|(x, y)| x.abs_diff(**y) > 2)
        .count();
    assert!(
        off * 1000 < sheets[0].as_raw().len(),
        "{off} channel values differ by more than 2"
    );
}
