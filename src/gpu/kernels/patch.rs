//! kernels/patch_embed.cu: im2col, the first half of the patch embedding.

use super::{expect_count, expect_len, instance, shape_err, Operand, OperandArg, BLOCK};
use crate::gpu::error::GpuResult;
use crate::gpu::runtime::{DView, Launch, LaunchConfig, Runtime};
use crate::model::ImageSize;

/// images [B, C, S_h, S_w] -> patches [B·N, C·P·P] (fp32 or bf16), N = (S_h/P)·(S_w/P),
/// column order (c, ky, kx).
pub fn patch_embed_im2col(
    rt: &dyn Runtime,
    patches: Operand,
    images: DView,
    batch: usize,
    channels: usize,
    size: impl Into<ImageSize>,
    patch: usize,
) -> GpuResult<()> {
    let size = size.into();
    const K: &str = "patch_embed_im2col";
    let (h, w) = (size.height, size.width);
    if patch == 0 || !h.is_multiple_of(patch) || !w.is_multiple_of(patch) {
        return Err(shape_err(
            K,
            format!("image {h}x{w} is not a multiple of patch {patch}"),
        ));
    }
    let (gh, gw) = size.grid(patch);
    let n = gh * gw;
    expect_len(K, "images", images, batch * channels * h * w)?;
    let total = batch * n * channels * patch * patch;
    expect_count(K, "patches", patches.len(), total)?;
    if total == 0 {
        return Ok(());
    }
    // The kernel indexes images with 32-bit ints per dimension and 64-bit offsets.
    i32::try_from(images.len())
        .map_err(|_| shape_err(K, format!("{} image values exceed i32::MAX", images.len())))?;
    let name = instance(
        patches.precision(),
        [
            "vitk_patch_embed_im2col_f32",
            "vitk_patch_embed_im2col_bf16",
        ],
    );
    Launch::new(name, LaunchConfig::for_items(total, BLOCK))
        .operand(patches)
        .ptr(images)
        .int("batch", batch)
        .int("channels", channels)
        .int("height", h)
        .int("width", w)
        .int("patch", patch)
        .cost(0.0, (total * (4 + patches.elem_bytes())) as f64)
        .run(rt)
}
