//! Data layer: CIFAR-10 binary and ImageFolder loading (good and bad input), writing,
//! augmentation, the synthetic set and the batch loader's determinism.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use approx::assert_relative_eq;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tempfile::TempDir;
use vitk::data::augment::{crop_flip_into, CropFlip};
use vitk::data::cifar::{load_cifar_dir, write_cifar_dir, CIFAR10_CLASSES};
use vitk::data::image_file::read_image;
use vitk::data::image_folder::load_image_folder;
use vitk::data::loader::epoch_order;
use vitk::data::{
    augment_into, eval_batches, load, load_unlabelled, synthetic, to_tensor, Batch, BatchLoader,
    DataError, Dataset, LoaderConfig, Normalize,
};
use vitk::model::ImageSize;

const RECORD: u64 = 3073;

fn tmp() -> TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// A CIFAR directory with `n` synthetic training records and no test batch.
fn cifar_dir(n: usize) -> (TempDir, Dataset) {
    let dir = tmp();
    let ds = synthetic::generate(n, 11);
    write_cifar_dir(&ds, None, dir.path(), false).expect("write");
    (dir, ds)
}

fn err_text<T: std::fmt::Debug>(r: Result<T, DataError>) -> (DataError, String) {
    let e = r.expect_err("expected an error");
    let s = e.to_string();
    (e, s)
}

// ---------------------------------------------------------------- CIFAR-10 binary

#[test]
fn cifar_round_trip_with_test_batch() {
    let dir = tmp();
    let s = synthetic::generate_splits(253, 40, 5);
    let written = write_cifar_dir(&s.train, Some(&s.val), dir.path(), false).unwrap();
    assert_eq!(written.len(), 7); // 5 data batches + test batch + meta
                                  // 253 records split evenly over 5 files: 50 or 51 each, all records kept.
    let sizes: Vec<u64> = (1..=5)
        .map(|k| {
            fs::metadata(dir.path().join(format!("data_batch_{k}.bin")))
                .unwrap()
                .len()
        })
        .collect();
    assert!(
        sizes.iter().all(|&s| s == 50 * RECORD || s == 51 * RECORD),
        "{sizes:?}"
    );
    assert_eq!(sizes.iter().sum::<u64>(), 253 * RECORD);

    let back = load_cifar_dir(dir.path(), Some(10), false).unwrap();
    assert_eq!(back.train, s.train); // pixels, labels, classes, shape
    assert_eq!(back.val, s.val);
    assert_eq!(back.train.classes, synthetic::CLASSES.to_vec());
    assert!(
        back.val_source.contains("test_batch.bin"),
        "{}",
        back.val_source
    );
}

#[test]
fn cifar_holds_out_last_records_without_test_batch() {
    let (dir, ds) = cifar_dir(120);
    let s = load_cifar_dir(dir.path(), Some(30), false).unwrap();
    assert_eq!(s.train, ds.select(&(0..90).collect::<Vec<_>>()));
    assert_eq!(s.val, ds.select(&(90..120).collect::<Vec<_>>()));
    assert!(s.val_source.contains("last 30 of 120"), "{}", s.val_source);

    let none = load_cifar_dir(dir.path(), Some(0), false).unwrap();
    assert_eq!(none.train.len(), 120);
    assert!(none.val.is_empty());
    assert!(none.val_source.starts_with("none"), "{}", none.val_source);
}

#[test]
fn cifar_default_class_names() {
    let (dir, _) = cifar_dir(50);
    fs::remove_file(dir.path().join("batches.meta.txt")).unwrap();
    let s = load_cifar_dir(dir.path(), Some(5), false).unwrap();
    assert_eq!(s.train.classes, CIFAR10_CLASSES.to_vec());
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
}

#[test]
fn cifar_missing_batches_are_an_error_unless_partial_is_allowed() {
    let (dir, ds) = cifar_dir(50);
    fs::remove_file(dir.path().join("data_batch_2.bin")).unwrap(); // records 10..20
    fs::remove_file(dir.path().join("data_batch_5.bin")).unwrap(); // records 40..50
    let (e, msg) = err_text(load(dir.path(), 32, Some(5), false));
    assert!(
        matches!(e, DataError::CifarPartial { present: 3, .. }),
        "{e:?}"
    );
    assert!(
        msg.contains("data_batch_2.bin, data_batch_5.bin missing")
            && msg.contains("3 of the 5")
            && msg.contains("--allow-partial"),
        "{msg}"
    );
    let s = load_cifar_dir(dir.path(), Some(5), true).unwrap();
    assert_eq!(s.train.len() + s.val.len(), 30);
    assert_eq!(s.train.image(10), ds.image(20)); // batch 3 follows batch 1
    assert_eq!(s.warnings.len(), 1);
    let w = &s.warnings[0];
    assert!(
        w.contains("3 of 5") && w.contains("30 records") && w.contains("data_batch_2.bin"),
        "{w}"
    );
}

#[test]
fn load_detects_cifar_and_resizes() {
    let (dir, _) = cifar_dir(30);
    let s = load(dir.path(), 16, Some(6), false).unwrap();
    assert_eq!((s.train.len(), s.val.len()), (24, 6));
    assert_eq!((s.train.channels, s.train.size), (3, 16.into()));
    assert_eq!(s.train.images.len(), 24 * 3 * 16 * 16);
    let same = load(dir.path(), 32, Some(6), false).unwrap();
    assert_eq!(
        same.train,
        load_cifar_dir(dir.path(), Some(6), false).unwrap().train
    );
}

#[test]
fn cifar_truncated_file_names_file_and_size() {
    let (dir, _) = cifar_dir(50);
    let f = dir.path().join("data_batch_3.bin");
    let bytes = fs::read(&f).unwrap();
    fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    let (e, msg) = err_text(load_cifar_dir(dir.path(), Some(5), false));
    assert!(matches!(e, DataError::CifarSize { .. }), "{e:?}");
    let size = 10 * RECORD - 100;
    assert!(msg.contains("data_batch_3.bin"), "{msg}");
    assert!(msg.contains(&format!("size {size} bytes")), "{msg}");
    assert!(msg.contains("3073-byte CIFAR-10 record"), "{msg}");
}

#[test]
fn cifar_oversized_and_empty_files() {
    let (dir, _) = cifar_dir(50);
    let f = dir.path().join("data_batch_1.bin");
    let mut bytes = fs::read(&f).unwrap();
    bytes.extend_from_slice(&[0; 7]);
    fs::write(&f, &bytes).unwrap();
    let (e, msg) = err_text(load_cifar_dir(dir.path(), Some(5), false));
    assert!(matches!(e, DataError::CifarSize { size, .. } if size == 10 * RECORD + 7));
    assert!(
        msg.contains("data_batch_1.bin") && msg.contains("7 bytes left over"),
        "{msg}"
    );

    fs::write(&f, b"").unwrap();
    let (e, msg) = err_text(load(dir.path(), 32, Some(5), false));
    assert!(matches!(e, DataError::CifarEmpty { .. }), "{e:?}");
    assert!(msg.contains("data_batch_1.bin"), "{msg}");
}

#[test]
fn missing_dir_and_dir_without_data() {
    let dir = tmp();
    let missing = dir.path().join("nope");
    let (e, msg) = err_text(load(&missing, 32, Some(0), false));
    assert!(matches!(e, DataError::MissingDir { .. }), "{e:?}");
    assert!(
        msg.contains("nope") && msg.contains("data_batch_1.bin"),
        "{msg}"
    );
    assert!(matches!(
        load_cifar_dir(&missing, Some(0), false),
        Err(DataError::MissingDir { .. })
    ));

    let (e, _) = err_text(load(dir.path(), 32, Some(0), false));
    assert!(matches!(e, DataError::EmptyDir { .. }), "{e:?}");

    fs::write(dir.path().join("notes.txt"), "hello").unwrap();
    let (e, msg) = err_text(load(dir.path(), 32, Some(0), false));
    assert!(matches!(e, DataError::UnknownLayout { .. }), "{e:?}");
    assert!(
        msg.contains("notes.txt") && msg.contains("class subfolders"),
        "{msg}"
    );
    let (e, msg) = err_text(load_cifar_dir(dir.path(), Some(0), false));
    assert!(matches!(e, DataError::NoCifarFiles { .. }), "{e:?}");
    assert!(msg.contains("data_batch_1.bin"), "{msg}");
}

#[test]
fn cifar_label_out_of_range() {
    let (dir, _) = cifar_dir(50);
    let f = dir.path().join("data_batch_2.bin");
    let mut bytes = fs::read(&f).unwrap();
    bytes[3 * RECORD as usize] = 10; // label of record 3
    fs::write(&f, &bytes).unwrap();
    let (e, msg) = err_text(load_cifar_dir(dir.path(), Some(5), false));
    assert!(
        matches!(
            e,
            DataError::LabelOutOfRange {
                record: 3,
                label: 10,
                classes: 10,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        msg.contains("data_batch_2.bin") && msg.contains("label 10"),
        "{msg}"
    );

    // Fewer class names make otherwise valid labels out of range.
    bytes[3 * RECORD as usize] = 0;
    fs::write(&f, &bytes).unwrap();
    fs::write(dir.path().join("batches.meta.txt"), "a\nb\n\n").unwrap();
    assert!(matches!(
        load_cifar_dir(dir.path(), Some(5), false),
        Err(DataError::LabelOutOfRange { classes: 2, .. })
    ));
}

#[test]
fn cifar_val_split_too_large() {
    let (dir, _) = cifar_dir(40);
    for v in [40, 41, 1000] {
        let (e, msg) = err_text(load_cifar_dir(dir.path(), Some(v), false));
        assert!(
            matches!(e, DataError::ValSplitTooLarge { len: 40, .. }),
            "{e:?}"
        );
        assert!(msg.contains(&format!("val_split {v}")), "{msg}");
    }
    assert_eq!(
        load_cifar_dir(dir.path(), Some(39), false)
            .unwrap()
            .train
            .len(),
        1
    );
}

#[test]
fn write_refuses_to_overwrite_unless_asked() {
    let (dir, _) = cifar_dir(50);
    let before = fs::read(dir.path().join("data_batch_1.bin")).unwrap();
    let other = synthetic::generate(7, 99);
    let (e, msg) = err_text(write_cifar_dir(&other, None, dir.path(), false));
    assert!(matches!(e, DataError::WouldOverwrite { .. }), "{e:?}");
    assert!(msg.contains("data_batch_1.bin"), "{msg}");
    assert_eq!(
        fs::read(dir.path().join("data_batch_1.bin")).unwrap(),
        before
    );

    // Overwrite with 7 records: 5 files, no temporary files left.
    write_cifar_dir(&other, None, dir.path(), true).unwrap();
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "batches.meta.txt",
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin"
        ]
    );
    let back = load_cifar_dir(dir.path(), Some(0), false).unwrap();
    assert_eq!(back.train, other);
}

#[test]
fn write_rejects_non_cifar_shapes() {
    let dir = tmp();
    let ds = Dataset::new(
        vec![0; 2 * 16 * 16],
        vec![0, 1],
        vec!["a".into(), "b".into()],
        1,
        16,
    )
    .unwrap();
    let (e, msg) = err_text(write_cifar_dir(&ds, None, dir.path(), false));
    assert!(
        matches!(
            e,
            DataError::NotCifarShape {
                channels: 1,
                height: 16,
                width: 16,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(msg.contains("1x16x16") && msg.contains("3x32x32"), "{msg}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn write_needs_a_record_for_each_of_the_five_batches() {
    let dir = tmp();
    let (e, msg) = err_text(write_cifar_dir(
        &synthetic::generate(4, 1),
        None,
        dir.path(),
        false,
    ));
    assert!(matches!(e, DataError::Invalid { .. }), "{e:?}");
    assert!(
        msg.contains("4 images") && msg.contains("at least 5"),
        "{msg}"
    );
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

// ---------------------------------------------------------------- ImageFolder

fn solid_png(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(w, h, image::Rgb(rgb))
        .save(path)
        .unwrap();
}

#[test]
fn image_folder_happy_path() {
    let dir = tmp();
    let d = dir.path();
    // Classes deliberately created out of order: labels follow sorted names.
    solid_png(&d.join("dog/b.png"), 40, 30, [200, 10, 10]);
    solid_png(&d.join("dog/a.png"), 8, 8, [10, 200, 10]);
    solid_png(&d.join("cat/x.PNG"), 16, 16, [1, 2, 3]);
    fs::create_dir_all(d.join("bird")).unwrap();
    image::GrayImage::from_pixel(5, 7, image::Luma([77]))
        .save(d.join("bird/g.png"))
        .unwrap();
    image::RgbImage::from_pixel(20, 20, image::Rgb([90, 90, 90]))
        .save(d.join("bird/j.jpg"))
        .unwrap();
    fs::write(d.join("bird/README.txt"), "not an image").unwrap();
    fs::write(d.join("bird/.hidden.png"), "ignored").unwrap();
    fs::write(
        d.join("stray.txt"),
        "files beside class folders are ignored",
    )
    .unwrap();

    let s = load_image_folder(d, 12, Some(0)).unwrap();
    let t = &s.train;
    assert_eq!(t.classes, ["bird", "cat", "dog"]);
    assert_eq!(t.labels, [0, 0, 1, 2, 2]); // bird/g.png, bird/j.jpg, cat/x.PNG, dog/a, dog/b
    assert_eq!((t.channels, t.size, t.image_len()), (3, 12.into(), 3 * 144));
    // Solid images stay solid after resizing; grey is replicated into R, G and B.
    assert!(t.image(0).iter().all(|&v| v == 77));
    assert!(t.image(1).iter().all(|&v| v.abs_diff(90) <= 2)); // JPEG rounding
    let plane = |i: usize, c: usize| &t.image(i)[c * 144..(c + 1) * 144];
    assert!(plane(3, 0).iter().all(|&v| v == 10) && plane(3, 1).iter().all(|&v| v == 200));
    assert!(plane(4, 0).iter().all(|&v| v == 200) && plane(4, 2).iter().all(|&v| v == 10));
    assert!(s.val.is_empty());

    // load() detects the layout the same way.
    assert_eq!(load(d, 12, Some(0), false).unwrap().train, s.train);
}

#[test]
fn image_folder_holds_out_evenly_and_uses_val_folder() {
    let dir = tmp();
    for c in ["a", "b"] {
        for i in 0..10 {
            let v = if c == "a" { 0 } else { 255 };
            solid_png(&dir.path().join(format!("{c}/{i:02}.png")), 4, 4, [v, i, 0]);
        }
    }
    let s = load_image_folder(dir.path(), 4, Some(4)).unwrap();
    assert_eq!((s.train.len(), s.val.len()), (16, 4));
    assert_eq!(s.val.class_counts(), [2, 2]);
    assert!(
        s.val_source.contains("held out: 4 of 20"),
        "{}",
        s.val_source
    );
    // The held-out images are not in the training set (G channel = file index).
    let key = |ds: &Dataset, i: usize| (ds.labels[i], ds.image(i)[16]);
    for v in 0..4 {
        assert!((0..16).all(|t| key(&s.train, t) != key(&s.val, v)));
    }
    let (e, _) = err_text(load_image_folder(dir.path(), 4, Some(20)));
    assert!(
        matches!(e, DataError::ValSplitTooLarge { len: 20, .. }),
        "{e:?}"
    );

    let split = tmp();
    solid_png(&split.path().join("train/a/1.png"), 4, 4, [1, 1, 1]);
    solid_png(&split.path().join("train/b/1.png"), 4, 4, [2, 2, 2]);
    solid_png(&split.path().join("train/b/2.png"), 4, 4, [3, 3, 3]);
    solid_png(&split.path().join("val/b/1.png"), 4, 4, [4, 4, 4]);
    let s = load(split.path(), 4, Some(1), false).unwrap();
    assert_eq!((s.train.len(), s.val.len()), (3, 1));
    assert_eq!(s.val.labels, [1]); // val/b maps to train's label of b
    assert!(s.val_source.starts_with("val/"), "{}", s.val_source);

    solid_png(&split.path().join("val/zebra/1.png"), 4, 4, [4, 4, 4]);
    let (e, msg) = err_text(load(split.path(), 4, Some(1), false));
    assert!(matches!(e, DataError::UnknownValClass { .. }), "{e:?}");
    assert!(msg.contains("zebra"), "{msg}");
}

#[test]
fn image_folder_bad_input() {
    let dir = tmp();
    let (e, _) = err_text(load_image_folder(dir.path(), 8, Some(0)));
    assert!(matches!(e, DataError::EmptyDir { .. }), "{e:?}");

    solid_png(&dir.path().join("good/1.png"), 4, 4, [1, 2, 3]);
    fs::create_dir_all(dir.path().join("empty")).unwrap();
    fs::write(dir.path().join("empty/notes.txt"), "no images here").unwrap();
    let (e, msg) = err_text(load_image_folder(dir.path(), 8, Some(0)));
    assert!(matches!(e, DataError::NoImages { .. }), "{e:?}");
    assert!(msg.contains("empty") && msg.contains(".png"), "{msg}");

    fs::remove_dir_all(dir.path().join("empty")).unwrap();
    fs::write(
        dir.path().join("good/broken.png"),
        b"\x89PNG\r\n\x1a\n garbage",
    )
    .unwrap();
    let (e, msg) = err_text(load_image_folder(dir.path(), 8, Some(0)));
    assert!(matches!(e, DataError::BadImage { .. }), "{e:?}");
    assert!(msg.contains("broken.png"), "{msg}");

    fs::write(dir.path().join("good/broken.png"), b"").unwrap();
    let (_, msg) = err_text(load(dir.path(), 8, Some(0), false));
    assert!(msg.contains("broken.png"), "{msg}");
}

#[test]
fn images_are_decoded_by_content_not_extension() {
    let dir = tmp();
    let png = dir.path().join("a.png");
    solid_png(&png, 6, 4, [10, 20, 30]);
    let disguised = dir.path().join("a.jpg");
    fs::copy(&png, &disguised).unwrap();
    let planes = read_image(&disguised, 4).unwrap();
    assert_eq!(planes, read_image(&png, 4).unwrap());
    assert!(planes[..16].iter().all(|&v| v == 10) && planes[32..].iter().all(|&v| v == 30));

    let notes = dir.path().join("notes.png");
    fs::write(&notes, "shopping list").unwrap();
    let (e, msg) = err_text(read_image(&notes, 4));
    assert!(matches!(e, DataError::BadImage { .. }), "{e:?}");
    assert!(
        msg.contains("notes.png") && msg.contains("not an image"),
        "{msg}"
    );
}

// ---------------------------------------------------------------- errors

#[test]
fn io_errors_carry_their_cause_in_the_message_only() {
    let (dir, _) = cifar_dir(50);
    let meta = dir.path().join("batches.meta.txt");
    fs::remove_file(&meta).unwrap();
    fs::create_dir(&meta).unwrap();
    let (e, msg) = err_text(load(dir.path(), 32, Some(5), false));
    assert!(matches!(e, DataError::Io { .. }), "{e:?}");
    assert!(msg.contains("batches.meta.txt"), "{msg}");
    // anyhow's "{:#}" adds the source chain to the message: the cause must not be in both.
    assert!(std::error::Error::source(&e).is_none(), "{msg}");
    let chained = format!("{:#}", anyhow::Error::new(e));
    assert_eq!(chained, msg);
}

/// A non-square model input: every image resized to 6 x 10 (height x width), whatever its
/// own size and orientation; a left/right gradient keeps its direction.
#[test]
fn image_folder_at_a_non_square_size() {
    let dir = tmp();
    let d = dir.path();
    let ramp = |w: u32, h: u32| {
        image::RgbImage::from_fn(w, h, |x, _| image::Rgb([(x * 255 / (w - 1)) as u8, 7, 7]))
    };
    fs::create_dir_all(d.join("a")).unwrap();
    ramp(30, 50).save(d.join("a/tall.png")).unwrap();
    ramp(50, 20).save(d.join("a/wide.png")).unwrap();
    let size = ImageSize {
        height: 6,
        width: 10,
    };
    let s = load_image_folder(d, size, Some(0)).unwrap();
    assert_eq!((s.train.size, s.train.image_len()), (size, 3 * 60));
    for i in 0..2 {
        let red = &s.train.image(i)[..60];
        for row in red.chunks_exact(10) {
            assert!(row[0] < 40 && row[9] > 215, "image {i}: row {row:?}");
            assert!(
                row.windows(2).all(|p| p[0] <= p[1]),
                "image {i}: row {row:?}"
            );
        }
    }
}

// ---------------------------------------------------------------- augmentation

/// A 3-channel image whose R and G planes encode x+1 and y+1 (never 0) and B is 9.
fn coded_image(side: usize) -> Vec<u8> {
    let p = side * side;
    let mut img = vec![9u8; 3 * p];
    for y in 0..side {
        for x in 0..side {
            img[y * side + x] = x as u8 + 1;
            img[p + y * side + x] = y as u8 + 1;
        }
    }
    img
}

#[test]
fn normalisation_values() {
    let img = [0u8, 255, 128, 0, 255, 128, 0, 255, 128];
    let mut out = [0f32; 9];
    to_tensor(&img, &mut out, 3, &Normalize::CIFAR10).unwrap();
    let n = Normalize::CIFAR10;
    for c in 0..3 {
        assert_relative_eq!(out[3 * c], -n.mean[c] / n.std[c], epsilon = 1e-5);
        assert_relative_eq!(out[3 * c + 1], (1.0 - n.mean[c]) / n.std[c], epsilon = 1e-5);
        assert_relative_eq!(
            out[3 * c + 2],
            (128.0 / 255.0 - n.mean[c]) / n.std[c],
            epsilon = 1e-5
        );
    }
    assert_relative_eq!(out[0], -1.98947, epsilon = 1e-4); // (0 - 0.4914) / 0.2470
                                                           // One channel uses the first mean/std; four channels are rejected.
    let mut one = [0f32; 2];
    to_tensor(&[0, 255], &mut one, 1, &Normalize::CIFAR10).unwrap();
    assert_relative_eq!(one[1], (1.0 - 0.4914) / 0.2470, epsilon = 1e-5);
    assert!(to_tensor(&[0; 4], &mut [0.0; 4], 4, &Normalize::CIFAR10).is_err());
    assert!(to_tensor(&[0; 4], &mut [0.0; 3], 1, &Normalize::NONE).is_err());
}

/// Crop and flip of a non-square image (5 x 7): every output pixel is the input pixel the
/// definition names, or the padding.
#[test]
fn crop_flip_of_a_non_square_image() {
    let (h, w, pad) = (5usize, 7usize, 2usize);
    let p = h * w;
    let img: Vec<u8> = (0..3 * p).map(|i| (i % 251) as u8 + 1).collect();
    let byte = |v: f32| (v * 255.0).round() as u8;
    let size = ImageSize {
        height: h,
        width: w,
    };
    for (top, left, flip) in [(0, 4, false), (3, 1, true), (4, 0, true)] {
        let t = CropFlip { top, left, flip };
        let mut out = vec![0f32; 3 * p];
        crop_flip_into(&img, &mut out, 3, size, pad, t, &Normalize::NONE).unwrap();
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let cx = if flip { w - 1 - x } else { x };
                    let (sy, sx) = (
                        y as isize + top as isize - 2,
                        cx as isize + left as isize - 2,
                    );
                    let want = if (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx) {
                        img[c * p + sy as usize * w + sx as usize]
                    } else {
                        0
                    };
                    assert_eq!(byte(out[c * p + y * w + x]), want, "{t:?} c{c} ({y}, {x})");
                }
            }
        }
    }
}

#[test]
fn flip_mirrors_and_crop_shifts_with_zero_padding() {
    let s = 8;
    let img = coded_image(s);
    let p = s * s;
    let mut out = vec![0f32; 3 * p];
    let byte = |v: f32| (v * 255.0).round() as u8; // Normalize::NONE: v = byte / 255

    // Identity window + flip: out(y, x) = in(y, S-1-x).
    let t = CropFlip {
        top: 4,
        left: 4,
        flip: true,
    };
    crop_flip_into(&img, &mut out, 3, s, 4, t, &Normalize::NONE).unwrap();
    for y in 0..s {
        for x in 0..s {
            assert_eq!(byte(out[y * s + x]), img[y * s + (s - 1 - x)]);
            assert_eq!(byte(out[p + y * s + x]), img[p + y * s + (s - 1 - x)]);
        }
    }

    // Window at top 0, left 6 (pad 4): out(y, x) = in(y - 4, x + 2), zeros entering
    // from the top (4 rows) and the right (2 columns), in every channel.
    let t = CropFlip {
        top: 0,
        left: 6,
        flip: false,
    };
    crop_flip_into(&img, &mut out, 3, s, 4, t, &Normalize::NONE).unwrap();
    for c in 0..3 {
        for y in 0..s {
            for x in 0..s {
                let v = byte(out[c * p + y * s + x]);
                if y < 4 || x + 2 >= s {
                    assert_eq!(v, 0, "c={c} y={y} x={x}");
                } else {
                    assert_eq!(v, img[c * p + (y - 4) * s + x + 2]);
                }
            }
        }
    }
    // Padding is byte 0 before normalisation: it becomes -mean/std.
    crop_flip_into(&img, &mut out, 3, s, 4, t, &Normalize::CIFAR10).unwrap();
    assert_relative_eq!(out[0], -0.4914 / 0.2470, epsilon = 1e-5);
    assert!(crop_flip_into(
        &img,
        &mut out,
        3,
        s,
        4,
        CropFlip {
            top: 9,
            left: 0,
            flip: false
        },
        &Normalize::NONE
    )
    .is_err());
}

#[test]
fn random_augmentation_is_a_crop_within_pad_and_a_fair_flip() {
    let s = 8;
    let img = coded_image(s);
    let mut rng = StdRng::seed_from_u64(3);
    let mut out = vec![0f32; 3 * s * s];
    let mut expect = vec![0f32; 3 * s * s];
    let (mut flips, mut corners) = (0, std::collections::HashSet::new());
    let draws = 600;
    for _ in 0..draws {
        augment_into(&img, &mut out, 3, s, &mut rng, 4, true, &Normalize::NONE).unwrap();
        // Exactly one window/flip within the padding explains the output.
        let mut matches = Vec::new();
        for top in 0..=8 {
            for left in 0..=8 {
                for flip in [false, true] {
                    let t = CropFlip { top, left, flip };
                    crop_flip_into(&img, &mut expect, 3, s, 4, t, &Normalize::NONE).unwrap();
                    if expect == out {
                        matches.push(t);
                    }
                }
            }
        }
        assert_eq!(matches.len(), 1, "{matches:?}");
        flips += matches[0].flip as usize;
        corners.insert((matches[0].top, matches[0].left));
    }
    assert!((240..=360).contains(&flips), "{flips} flips in {draws}");
    assert_eq!(corners.len(), 81, "every shift in -4..=4 x -4..=4 occurs");

    // No flip when disabled.
    for _ in 0..50 {
        assert!(!CropFlip::random(&mut rng, 4, false).flip);
    }
}

// ---------------------------------------------------------------- synthetic set

#[test]
fn synthetic_is_deterministic_and_balanced() {
    let a = synthetic::generate(503, 7);
    assert_eq!(a, synthetic::generate(503, 7));
    assert_ne!(a.images, synthetic::generate(503, 8).images);
    assert_eq!((a.channels, a.size, a.len()), (3, 32.into(), 503));
    assert_eq!(a.classes.len(), 10);
    let counts = a.class_counts();
    assert!(counts.iter().all(|&c| c == 50 || c == 51), "{counts:?}");
    // Shuffled order, not label = i % 10.
    assert!((0..a.len()).any(|i| a.labels[i] as usize != i % 10));
    // Images vary: no two identical, and none is flat.
    for i in 0..20 {
        let img = a.image(i);
        assert!(img.iter().max().unwrap() - img.iter().min().unwrap() > 50);
        assert_ne!(img, a.image(i + 1));
    }

    let s = synthetic::generate_splits(100, 30, 7);
    assert_eq!(s.train, synthetic::generate(100, 7));
    assert_eq!(s.val.len(), 30);
    assert_ne!(s.val.image(0), s.train.image(0));
    assert!(s.val_source.contains("synthetic"));
}

// ---------------------------------------------------------------- batch loader

fn take(loader: &mut BatchLoader, n: usize) -> Vec<Batch> {
    (0..n).map(|_| loader.next_batch()).collect()
}

fn small_set() -> Arc<Dataset> {
    Arc::new(synthetic::generate(53, 1))
}

#[test]
fn loader_same_seed_same_batches_and_resume_reproduces_tail() {
    let ds = small_set();
    let cfg = LoaderConfig::train(8, 42); // shuffle + augment, 7 batches per epoch
    let mut a = BatchLoader::new(ds.clone(), cfg, 0, 0).unwrap();
    assert_eq!(a.batches_per_epoch(), 7);
    let full = take(&mut a, 21);
    let mut b = BatchLoader::new(ds.clone(), cfg, 0, 0).unwrap();
    assert_eq!(take(&mut b, 21), full);

    // Epochs and indices run in order; last batch of an epoch is partial (53 = 6*8 + 5).
    for (k, batch) in full.iter().enumerate() {
        assert_eq!((batch.epoch, batch.index), (k / 7, k % 7));
        assert_eq!(batch.len(), if k % 7 == 6 { 5 } else { 8 });
        assert_eq!(batch.images.len(), batch.len() * 3 * 32 * 32);
    }
    // Each epoch visits every sample once, in a different order.
    let epoch_labels = |e: usize| -> Vec<u32> {
        full[e * 7..(e + 1) * 7]
            .iter()
            .flat_map(|b| b.labels.clone())
            .collect()
    };
    let mut sorted0 = epoch_labels(0);
    sorted0.sort();
    let mut expected: Vec<u32> = ds.labels.iter().map(|&l| l as u32).collect();
    expected.sort();
    assert_eq!(sorted0, expected);
    assert_ne!(epoch_labels(0), epoch_labels(1));
    let order = epoch_order(53, 42, 1, true);
    let labels1: Vec<u32> = order.iter().map(|&i| ds.labels[i] as u32).collect();
    assert_eq!(epoch_labels(1), labels1);

    // Resume at (epoch 1, batch 3): the tail of the uninterrupted run, bit for bit.
    let mut r = BatchLoader::new(ds.clone(), cfg, 1, 3).unwrap();
    assert_eq!(take(&mut r, 11), full[10..21].to_vec());
    // A batch index past the epoch's end carries into the next epoch.
    let mut r = BatchLoader::new(ds.clone(), cfg, 0, 7 + 3).unwrap();
    assert_eq!(r.next_batch(), full[10]);

    // Another seed gives other batches.
    let mut c = BatchLoader::new(ds, LoaderConfig { seed: 43, ..cfg }, 0, 0).unwrap();
    assert_ne!(c.next_batch(), full[0]);
}

#[test]
fn loader_without_shuffle_keeps_file_order() {
    let ds = small_set();
    let cfg = LoaderConfig {
        shuffle: false,
        augment: false,
        ..LoaderConfig::train(10, 5)
    };
    let mut l = BatchLoader::new(ds.clone(), cfg, 0, 0).unwrap();
    let batches = take(&mut l, 12); // two epochs of 6
    let mut expect = vec![0f32; ds.image_len()];
    for epoch in 0..2 {
        let labels: Vec<u32> = batches[epoch * 6..(epoch + 1) * 6]
            .iter()
            .flat_map(|b| b.labels.clone())
            .collect();
        assert_eq!(
            labels,
            ds.labels.iter().map(|&l| l as u32).collect::<Vec<_>>()
        );
    }
    // Sample 13 is the 4th image of batch 1, normalised without augmentation.
    to_tensor(ds.image(13), &mut expect, 3, &Normalize::CIFAR10).unwrap();
    assert_eq!(&batches[1].images[3 * 3072..4 * 3072], &expect[..]);
    // Without augmentation, epochs repeat exactly.
    assert_eq!(batches[0].images, batches[6].images);
}

#[test]
fn loader_drop_last_and_bad_configs() {
    let ds = small_set();
    let cfg = LoaderConfig {
        drop_last: true,
        ..LoaderConfig::train(10, 0)
    };
    let mut l = BatchLoader::new(ds.clone(), cfg, 0, 0).unwrap();
    assert_eq!(l.batches_per_epoch(), 5);
    assert!(take(&mut l, 11).iter().all(|b| b.len() == 10));

    let bad = |cfg: LoaderConfig, ds: Arc<Dataset>| BatchLoader::new(ds, cfg, 0, 0).err();
    assert!(bad(LoaderConfig::train(0, 0), ds.clone()).is_some());
    assert!(bad(
        LoaderConfig {
            drop_last: true,
            ..LoaderConfig::train(54, 0)
        },
        ds.clone()
    )
    .is_some());
    let empty = Arc::new(Dataset::empty(vec!["a".into()], 3, 32));
    assert!(bad(LoaderConfig::train(4, 0), empty).is_some());
    let four = Arc::new(Dataset::new(vec![0; 4 * 4], vec![0], vec!["a".into()], 4, 2).unwrap());
    assert!(bad(LoaderConfig::train(4, 0), four).is_some());
}

#[test]
fn eval_batches_in_order_keep_last_partial_batch() {
    let ds = small_set();
    let batches: Vec<Batch> = eval_batches(&ds, 20, Normalize::CIFAR10).unwrap().collect();
    assert_eq!(
        batches.iter().map(Batch::len).collect::<Vec<_>>(),
        [20, 20, 13]
    );
    assert_eq!(
        batches.iter().map(|b| b.index).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    let labels: Vec<u32> = batches.iter().flat_map(|b| b.labels.clone()).collect();
    assert_eq!(
        labels,
        ds.labels.iter().map(|&l| l as u32).collect::<Vec<_>>()
    );
    let mut expect = vec![0f32; ds.image_len()];
    to_tensor(ds.image(52), &mut expect, 3, &Normalize::CIFAR10).unwrap();
    assert_eq!(&batches[2].images[12 * 3072..], &expect[..]);
    assert_eq!(eval_batches(&ds, 20, Normalize::CIFAR10).unwrap().len(), 3);
    assert!(eval_batches(&ds, 0, Normalize::CIFAR10).is_err());
    let empty = Dataset::empty(vec!["a".into()], 3, 32);
    assert_eq!(
        eval_batches(&empty, 4, Normalize::CIFAR10).unwrap().count(),
        0
    );
}

// ---------------------------------------------------------------- unlabelled images

/// Pre-training reads a folder of images with no class subfolders (one class), and whatever
/// `load` reads; a folder with subfolders stays an ImageFolder.
#[test]
fn unlabelled_folders_load_as_one_class() {
    let dir = tmp();
    let d = dir.path();
    for (i, (w, h)) in [(20, 30), (40, 10), (8, 8), (33, 17), (12, 12)]
        .iter()
        .enumerate()
    {
        solid_png(&d.join(format!("img{i}.png")), *w, *h, [i as u8 * 40, 7, 9]);
    }
    fs::write(d.join("notes.txt"), "ignored").unwrap();
    let size = ImageSize {
        height: 8,
        width: 12,
    };
    let s = load_unlabelled(d, size, Some(2), false).unwrap();
    assert_eq!(s.train.classes, ["images"]);
    assert_eq!((s.train.len(), s.val.len(), s.train.size), (3, 2, size));
    assert!(s.train.labels.iter().chain(&s.val.labels).all(|&l| l == 0));
    // Evenly spaced hold-out in file-name order: positions 1 and 3 (img1, img3).
    assert_eq!(s.val.image(0)[0], 40);
    assert_eq!(s.val.image(1)[0], 120);
    // The labelled loader still refuses it; the unlabelled one takes an ImageFolder too.
    assert!(load(d, size, Some(2), false).is_err());
    let classes = tmp();
    solid_png(&classes.path().join("a/x.png"), 9, 9, [1, 2, 3]);
    solid_png(&classes.path().join("b/y.png"), 9, 9, [4, 5, 6]);
    let s = load_unlabelled(classes.path(), 4, Some(0), false).unwrap();
    assert_eq!(s.train.classes, ["a", "b"]);
    // An empty folder and a folder without images are clear errors.
    let empty = tmp();
    let (e, _) = err_text(load_unlabelled(empty.path(), 4, None, false));
    assert!(matches!(e, DataError::EmptyDir { .. }), "{e:?}");
    let text = tmp();
    fs::write(text.path().join("a.txt"), "x").unwrap();
    assert!(load_unlabelled(text.path(), 4, None, false).is_err());
}
