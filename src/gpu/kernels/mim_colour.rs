//! kernels/mim_colour.cu: the ViT paper's masked patch prediction, 3-bit mean-colour targets
//! and the cross-entropy over the masked rows (CPU ops: `cpu::mim_colour`).

use super::{elementwise, expect_count, expect_len, instance, shape_err, Operand, OperandArg};
use crate::gpu::error::GpuResult;
use crate::gpu::runtime::{DView, Launch, LaunchConfig, Runtime, View};
use crate::model::ImageSize;

/// classes [B, N] (u32, overwritten) from images [B, 3, S_h, S_w] normalised with the
/// per-channel `mean`/`std`, N = (S_h/P)·(S_w/P) patches in row-major order; the same rule
/// and rounding as `cpu::mim_colour::mean_colour_targets`.
#[allow(clippy::too_many_arguments)]
pub fn mean_colour_targets(
    rt: &dyn Runtime,
    classes: View<u32>,
    images: DView,
    batch: usize,
    size: impl Into<ImageSize>,
    patch: usize,
    mean: [f32; 3],
    std: [f32; 3],
) -> GpuResult<()> {
    const K: &str = "mean_colour_targets";
    let size = size.into();
    let (h, w) = (size.height, size.width);
    if patch == 0 || !h.is_multiple_of(patch) || !w.is_multiple_of(patch) {
        return Err(shape_err(
            K,
            format!("image {h}x{w} is not a multiple of patch {patch}"),
        ));
    }
    let (gh, gw) = size.grid(patch);
    let total = batch * gh * gw;
    expect_len(K, "images", images, batch * 3 * h * w)?;
    expect_len(K, "classes", classes, total)?;
    if total == 0 {
        return Ok(());
    }
    let pixels = images.len() as f64;
    Launch::new("vitk_mean_colour_targets", elementwise(total))
        .ptr(classes)
        .ptr(images)
        .int("batch", batch)
        .int("height", h)
        .int("width", w)
        .int("patch", patch)
        .f32(mean[0])
        .f32(mean[1])
        .f32(mean[2])
        .f32(std[0])
        .f32(std[1])
        .f32(std[2])
        .cost(3.0 * pixels, 4.0 * pixels + 4.0 * total as f64)
        .run(rt)
}

/// Masked softmax cross-entropy with label smoothing over logits [R, K] (R = B·N rows),
/// targets [R] (u32, < K on masked rows) and mask [R] (u8, non-zero = masked): stats[0] = mean
/// loss over the M masked rows (0 when M = 0), stats[1] = correct count among them, stats[2]
/// = M; dlogits [R, K] overwritten (fp32, or bf16 for the bf16 head matmuls), 0 on unmasked
/// rows.
#[allow(clippy::too_many_arguments)]
pub fn masked_cross_entropy(
    rt: &dyn Runtime,
    stats: DView,
    dlogits: Operand,
    logits: DView,
    targets: View<u32>,
    mask: View<u8>,
    rows: usize,
    classes: usize,
    smoothing: f32,
) -> GpuResult<()> {
    const K: &str = "masked_cross_entropy";
    if stats.len() < 3 {
        return Err(shape_err(K, "stats needs 3 elements".into()));
    }
    if rows == 0 || classes == 0 {
        return Err(shape_err(K, format!("{rows} rows of {classes} classes")));
    }
    expect_len(K, "logits", logits, rows * classes)?;
    expect_count(K, "dlogits", dlogits.len(), rows * classes)?;
    expect_len(K, "targets", targets, rows)?;
    expect_len(K, "mask", mask, rows)?;
    let cfg = LaunchConfig {
        grid: (1, 1, 1),
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    let name = instance(
        dlogits.precision(),
        [
            "vitk_masked_cross_entropy_f32",
            "vitk_masked_cross_entropy_bf16",
        ],
    );
    let n = (rows * classes) as f64;
    Launch::new(name, cfg)
        .ptr(stats)
        .operand(dlogits)
        .ptr(logits)
        .ptr(targets)
        .ptr(mask)
        .int("rows", rows)
        .int("classes", classes)
        .f32(smoothing)
        .cost(
            6.0 * n,
            n * (4.0 + dlogits.elem_bytes() as f64) + 5.0 * rows as f64,
        )
        .run(rt)
}
