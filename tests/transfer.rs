//! `--init-from` across configurations: a checkpoint loaded into a model of another image
//! size, number of classes, patch size or pooling, as timm loads pretrained weights.

use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use vitk::model::resample::{resample_patch_kernel, resample_pos_embed};
use vitk::model::{
    init_params, load_transfer, save_checkpoint, CheckpointMeta, ImageSize, ModelConfig,
    ParamLayout, Pool, TransferOptions, Transferred,
};

/// D8 L2 H2 M12 at 8x8 / 2 (a 4x4 grid), 10 classes.
fn source_cfg(pool: Pool) -> ModelConfig {
    ModelConfig {
        image_size: ImageSize::square(8),
        patch_size: 2,
        in_chans: 3,
        num_classes: 10,
        embed_dim: 8,
        depth: 2,
        num_heads: 2,
        mlp_dim: 12,
        pool,
    }
}

/// A checkpoint of `cfg` with random weights (seed 1) and vitk's metadata; its parameters.
fn write_source(dir: &Path, cfg: &ModelConfig) -> (PathBuf, Vec<f32>) {
    let layout = ParamLayout::new(cfg);
    let mut params = init_params(cfg, &layout, 1);
    // Distinct non-trivial values everywhere (norms and biases are 1 and 0 at init).
    for (i, v) in params.iter_mut().enumerate() {
        *v += ((i * 37 % 101) as f32 - 50.0) * 1e-3;
    }
    let path = dir.join("src.safetensors");
    let meta = CheckpointMeta {
        config: cfg.clone(),
        classes: (0..cfg.num_classes).map(|k| k.to_string()).collect(),
        mean: vec![0.5; 3],
        std: vec![0.25; 3],
    };
    save_checkpoint(&path, &layout, &params, &meta).expect("save");
    (path, params)
}

/// The same tensors in a file without metadata (as timm writes them), keeping only those
/// `keep` accepts.
fn write_plain(
    dir: &Path,
    cfg: &ModelConfig,
    params: &[f32],
    keep: impl Fn(&str) -> bool,
) -> PathBuf {
    let layout = ParamLayout::new(cfg);
    let views: Vec<(String, TensorView)> = layout
        .entries
        .iter()
        .filter(|e| keep(&e.name))
        .map(|e| {
            let bytes: &[u8] = bytemuck::cast_slice(&params[e.range.clone()]);
            let view = TensorView::new(Dtype::F32, e.shape.clone(), bytes).expect("view");
            (e.name.clone(), view)
        })
        .collect();
    let path = dir.join("plain.safetensors");
    let bytes = safetensors::serialize(views, None::<HashMap<String, String>>).expect("serialize");
    std::fs::write(&path, bytes).expect("write");
    path
}

fn tensor<'a>(cfg: &ModelConfig, params: &'a [f32], name: &str) -> &'a [f32] {
    let layout = ParamLayout::new(cfg);
    let e = layout.get(name).unwrap_or_else(|| panic!("{name}"));
    &params[e.range.clone()]
}

fn load(
    path: &Path,
    cfg: &ModelConfig,
    source: Option<&ModelConfig>,
    resample: bool,
) -> Transferred {
    let opts = TransferOptions {
        resample_patch: resample,
        seed: 7,
    };
    load_transfer(path, cfg, source, opts).unwrap_or_else(|e| panic!("{e}"))
}

fn load_err(path: &Path, cfg: &ModelConfig, source: Option<&ModelConfig>) -> String {
    let opts = TransferOptions {
        resample_patch: false,
        seed: 7,
    };
    match load_transfer(path, cfg, source, opts) {
        Ok(_) => panic!("loaded into {}", cfg.summary()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn larger_image_and_new_classes_resample_pos_embed_and_reinitialise_the_head() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = source_cfg(Pool::Cls);
    let (path, sp) = write_source(tmp.path(), &src);
    let dst = ModelConfig {
        image_size: ImageSize::square(12),
        num_classes: 3,
        ..src.clone()
    };
    let t = load(&path, &dst, Some(&src), false);
    assert_eq!(
        t.notes,
        [
            "loaded 30 of 32 tensors",
            "resampled pos_embed 4x4 -> 6x6 (bicubic, antialiased, as timm)",
            "new head 10 -> 3 classes (re-initialised)",
        ]
    );
    let want = resample_pos_embed(tensor(&src, &sp, "pos_embed"), 1, (4, 4), (6, 6), 8);
    assert_eq!(tensor(&dst, &t.params, "pos_embed"), want.as_slice());
    // The head is a fresh model's (same seed), everything else the checkpoint's.
    let fresh = init_params(&dst, &ParamLayout::new(&dst), 7);
    for name in ["head.weight", "head.bias"] {
        assert_eq!(
            tensor(&dst, &t.params, name),
            tensor(&dst, &fresh, name),
            "{name}"
        );
    }
    for e in &ParamLayout::new(&dst).entries {
        if !e.name.starts_with("head.") && e.name != "pos_embed" {
            assert_eq!(
                tensor(&dst, &t.params, &e.name),
                tensor(&src, &sp, &e.name),
                "{}",
                e.name
            );
        }
    }
}

#[test]
fn a_timm_file_without_metadata_is_taken_as_a_square_grid() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = source_cfg(Pool::Cls);
    let (_, sp) = write_source(tmp.path(), &src);
    let plain = write_plain(tmp.path(), &src, &sp, |_| true);
    let dst = ModelConfig {
        image_size: ImageSize::square(6),
        ..src.clone()
    };
    let t = load(&plain, &dst, None, false);
    assert!(
        t.notes.contains(
            &"resampled pos_embed 4x4 -> 3x3 (bicubic, antialiased, as timm)".to_string()
        ),
        "{:?}",
        t.notes
    );
    let want = resample_pos_embed(tensor(&src, &sp, "pos_embed"), 1, (4, 4), (3, 3), 8);
    assert_eq!(tensor(&dst, &t.params, "pos_embed"), want.as_slice());
    assert_eq!(t.notes[0], "loaded 32 of 32 tensors");
}

#[test]
fn an_encoder_without_head_or_norm_gets_fresh_ones() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = source_cfg(Pool::Cls);
    let (_, sp) = write_source(tmp.path(), &src);
    let plain = write_plain(tmp.path(), &src, &sp, |n| {
        !n.starts_with("head.") && !n.starts_with("norm.")
    });
    let t = load(&plain, &src, None, false);
    assert_eq!(
        t.notes,
        [
            "loaded 28 of 32 tensors",
            "new head: the checkpoint has none, 10 classes initialised",
            "initialised (not in the checkpoint): norm.weight, norm.bias",
        ]
    );
}

#[test]
fn another_patch_size_needs_resample_patch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = source_cfg(Pool::Cls);
    let (path, sp) = write_source(tmp.path(), &src);
    // P 2 -> 4 at 16x16 keeps the 4x4 grid: only the kernel changes.
    let dst = ModelConfig {
        image_size: ImageSize::square(16),
        patch_size: 4,
        ..src.clone()
    };
    let e = load_err(&path, &dst, Some(&src));
    assert!(
        e.contains("patch size is 2x2") && e.contains("--resample-patch"),
        "{e}"
    );
    let t = load(&path, &dst, Some(&src), true);
    let want = resample_patch_kernel(tensor(&src, &sp, "patch_embed.proj.weight"), (2, 2), (4, 4))
        .expect("full rank");
    assert_eq!(
        tensor(&dst, &t.params, "patch_embed.proj.weight"),
        want.as_slice()
    );
    assert_eq!(
        tensor(&dst, &t.params, "pos_embed"),
        tensor(&src, &sp, "pos_embed")
    );
    assert!(
        t.notes
            .iter()
            .any(|n| n.contains("patch_embed.proj.weight 2x2 -> 4x4")),
        "{:?}",
        t.notes
    );
}

#[test]
fn a_mean_pooled_model_drops_the_class_token() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = source_cfg(Pool::Cls);
    let (path, sp) = write_source(tmp.path(), &src);
    let dst = ModelConfig {
        pool: Pool::Mean,
        ..src.clone()
    };
    let t = load(&path, &dst, Some(&src), false);
    assert_eq!(
        t.notes,
        [
            "loaded 29 of 31 tensors",
            "dropped the class token's pos_embed row (the model pools by mean)",
            "initialised (not in the checkpoint): fc_norm.weight, fc_norm.bias",
            "not used (the model has no such tensor): cls_token, norm.bias, norm.weight",
        ]
    );
    assert_eq!(
        tensor(&dst, &t.params, "pos_embed"),
        &tensor(&src, &sp, "pos_embed")[8..]
    );
}

#[test]
fn other_architectures_are_errors_naming_the_tensor_and_both_shapes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = source_cfg(Pool::Cls);
    let (path, _) = write_source(tmp.path(), &src);
    let wider = ModelConfig {
        mlp_dim: 16,
        ..src.clone()
    };
    let e = load_err(&path, &wider, Some(&src));
    assert!(
        e.contains("'blocks.0.mlp.fc1.weight' has shape [12, 8], expected [16, 8]"),
        "{e}"
    );
    let shallower = ModelConfig {
        depth: 1,
        ..src.clone()
    };
    let e = load_err(&path, &shallower, Some(&src));
    assert!(e.contains("does not have: blocks.1."), "{e}");
    let gray = ModelConfig {
        in_chans: 1,
        ..src.clone()
    };
    let e = load_err(&path, &gray, Some(&src));
    assert!(
        e.contains("'patch_embed.proj.weight' has shape [8, 3, 2, 2], expected [8, 1, 2, 2]"),
        "{e}"
    );
}

#[test]
fn a_non_square_source_grid_comes_from_its_config() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = ModelConfig {
        image_size: ImageSize {
            height: 8,
            width: 12,
        },
        ..source_cfg(Pool::Cls)
    };
    let (path, sp) = write_source(tmp.path(), &src);
    let dst = ModelConfig {
        image_size: ImageSize {
            height: 10,
            width: 6,
        },
        ..src.clone()
    };
    let t = load(&path, &dst, Some(&src), false);
    assert_eq!(
        t.notes[1],
        "resampled pos_embed 4x6 -> 5x3 (bicubic, antialiased, as timm)"
    );
    let want = resample_pos_embed(tensor(&src, &sp, "pos_embed"), 1, (4, 6), (5, 3), 8);
    assert_eq!(tensor(&dst, &t.params, "pos_embed"), want.as_slice());
    // The same number of positions on another grid (4x6 -> 6x4) is still resampled.
    let turned = ModelConfig {
        image_size: ImageSize {
            height: 12,
            width: 8,
        },
        ..src.clone()
    };
    let t = load(&path, &turned, Some(&src), false);
    assert!(t.notes[1].contains("4x6 -> 6x4"), "{:?}", t.notes);
}
