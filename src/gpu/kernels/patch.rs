//! kernels/patch_embed.cu: im2col, the first half of the patch embedding.

use super::{expect_count, expect_len, instance, shape_err, Operand, OperandArg, BLOCK};
use crate::gpu::error::GpuResult;
use crate::gpu::runtime::{DView, Launch, LaunchConfig, Runtime};

/// images [B, C, S, S] -> patches [B·N, C·P·P] (fp32 or bf16), N = (S/P)², column order
/// (c, ky, kx).
pub fn patch_embed_im2col(
    rt: &dyn Runtime,
    patches: Operand,
    images: DView,
    batch: usize,
    channels: usize,
    side: usize,
    patch: usize,
) -> GpuResult<()> {
    const K: &str = "patch_embed_im2col";
    if patch == 0 || !side.is_multiple_of(patch) {
        return Err(shape_err(
            K,
            format!("image side {side} is not a multiple of patch {patch}"),
        ));
    }
    let n = (side / patch) * (side / patch);
    expect_len(K, "images", images, batch * channels * side * side)?;
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
        .int("side", side)
        .int("patch", patch)
        .cost(0.0, (total * (4 + patches.elem_bytes())) as f64)
        .run(rt)
}
