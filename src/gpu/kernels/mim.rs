//! kernels/mim.cu: masked image modelling, mask-token substitution (forward and backward),
//! patch-pixel targets and the masked L1/L2 pixel loss. Masks are bytes [B·N], nonzero =
//! masked.

use super::{elementwise, expect_count, expect_len, instance, per_row, shape_err, Operand};
use super::{OperandArg, BLOCK};
use crate::cpu::mim::PixelLoss;
use crate::gpu::error::GpuResult;
use crate::gpu::runtime::{DView, Launch, LaunchConfig, Runtime, View};
use crate::model::ImageSize;

/// Rows summed by one block of the mask-token gradient before the fixed-order reduction.
pub const MASK_TOKEN_ROWS_PER_CHUNK: usize = 64;

/// Warps (rows in flight) per block of the loss-rows kernel, and its grid cap.
const LOSS_WARPS: usize = 8;
const LOSS_MAX_BLOCKS: usize = 1024;

/// Masked rows are counted in fp32 by the loss kernels: exact below 2^24.
const MAX_ROWS: usize = 1 << 24;

fn fits_i32(kernel: &str, what: &str, n: usize) -> GpuResult<()> {
    i32::try_from(n)
        .map(|_| ())
        .map_err(|_| shape_err(kernel, format!("{what} = {n} exceeds i32::MAX")))
}

/// Scratch (fp32 elements) of [`mask_tokens_backward`] for `rows` = B·N rows of width `dim`.
pub fn mask_tokens_backward_scratch_len(rows: usize, dim: usize) -> usize {
    rows.div_ceil(MASK_TOKEN_ROWS_PER_CHUNK) * dim
}

/// x [B·N, D] (overwritten) = mask ? token [D] : pe [B·N, D].
pub fn mask_tokens_forward(
    rt: &dyn Runtime,
    x: DView,
    pe: DView,
    mask: View<u8>,
    token: DView,
) -> GpuResult<()> {
    const K: &str = "vitk_mask_tokens_forward";
    let (rows, dim) = (mask.len(), token.len());
    expect_len(K, "x", x, rows * dim)?;
    expect_len(K, "pe", pe, rows * dim)?;
    if x.is_empty() {
        return Ok(());
    }
    fits_i32(K, "rows", rows)?;
    fits_i32(K, "dim", dim)?;
    let n = x.len() as f64;
    Launch::new(K, elementwise(x.len()))
        .ptr(x)
        .ptr(pe)
        .ptr(mask)
        .ptr(token)
        .int("rows", rows)
        .int("dim", dim)
        .cost(0.0, 8.0 * n + rows as f64)
        .run(rt)
}

/// Gradients of [`mask_tokens_forward`] from dx [B·N, D]: dpe (overwritten; fp32, or bf16
/// for the patch matmul's dY) = mask ? 0 : dx; dtoken [D] += Σ over masked rows of dx, in a
/// fixed order (chunks of [`MASK_TOKEN_ROWS_PER_CHUNK`] rows into `scratch`
/// ([`mask_tokens_backward_scratch_len`] elements), then the chunks in order).
pub fn mask_tokens_backward(
    rt: &dyn Runtime,
    dpe: Operand,
    dtoken: DView,
    scratch: DView,
    dx: DView,
    mask: View<u8>,
) -> GpuResult<()> {
    const K: &str = "mask_tokens_backward";
    let (rows, dim) = (mask.len(), dtoken.len());
    expect_len(K, "dx", dx, rows * dim)?;
    expect_count(K, "dpe", dpe.len(), rows * dim)?;
    token_scratch(K, scratch, rows, dim)?;
    if dx.is_empty() {
        return Ok(());
    }
    fits_i32(K, "rows", rows)?;
    fits_i32(K, "dim", dim)?;
    let n = dx.len() as f64;
    let name = instance(
        dpe.precision(),
        [
            "vitk_mask_tokens_backward_pe_f32",
            "vitk_mask_tokens_backward_pe_bf16",
        ],
    );
    Launch::new(name, elementwise(dx.len()))
        .operand(dpe)
        .ptr(dx)
        .ptr(mask)
        .int("rows", rows)
        .int("dim", dim)
        .cost(0.0, n * (4.0 + dpe.elem_bytes() as f64) + rows as f64)
        .run(rt)?;
    token_gradient(rt, dtoken, scratch, dx, Some(mask), None)
}

fn token_scratch(kernel: &str, scratch: DView, rows: usize, dim: usize) -> GpuResult<()> {
    let need = mask_tokens_backward_scratch_len(rows, dim);
    if scratch.len() < need {
        return Err(shape_err(
            kernel,
            format!("scratch has {} elements, needs {need}", scratch.len()),
        ));
    }
    Ok(())
}

/// dtoken [D] += Σ of dx [R, D] over the rows that take the token (mask[r] != 0, or src[r] <
/// 0 without a mask): chunks of [`MASK_TOKEN_ROWS_PER_CHUNK`] rows into `scratch`, then the
/// chunks in order. Shapes are checked by the callers.
fn token_gradient(
    rt: &dyn Runtime,
    dtoken: DView,
    scratch: DView,
    dx: DView,
    mask: Option<View<u8>>,
    src: Option<View<i32>>,
) -> GpuResult<()> {
    const K: &str = "vitk_mask_tokens_token_partial";
    let dim = dtoken.len();
    let rows = dx.len() / dim;
    let chunks = rows.div_ceil(MASK_TOKEN_ROWS_PER_CHUNK);
    let n = dx.len() as f64;
    let cols = dim.div_ceil(BLOCK as usize) as u32;
    let chunks_u32 = u32::try_from(chunks)
        .ok()
        .filter(|&c| c <= 65535)
        .ok_or_else(|| shape_err(K, format!("{chunks} row chunks exceed the grid's y limit")))?;
    let partial = LaunchConfig {
        grid: (cols, chunks_u32, 1),
        block: (BLOCK, 1, 1),
        shared_bytes: 0,
    };
    Launch::new(K, partial)
        .ptr(scratch)
        .ptr(dx)
        .opt(mask)
        .opt(src)
        .int("rows", rows)
        .int("dim", dim)
        .int("rows per chunk", MASK_TOKEN_ROWS_PER_CHUNK)
        .cost(n, 4.0 * n + (rows + 4 * chunks * dim) as f64)
        .run(rt)?;
    let partials = (chunks * dim) as f64;
    Launch::new(
        "vitk_mask_tokens_token_reduce",
        LaunchConfig::for_items(dim, BLOCK),
    )
    .ptr(dtoken)
    .ptr(scratch)
    .int("chunks", chunks)
    .int("dim", dim)
    .cost(partials, 4.0 * partials + 8.0 * dim as f64)
    .run(rt)
}

/// Pixel targets [B, N, P·P·C] (overwritten) from images [B, C, S_h, S_w] in MAE's patchify
/// order (see `cpu::mim::patch_targets`), per-patch normalised when `norm_pix`.
#[allow(clippy::too_many_arguments)]
pub fn patch_targets(
    rt: &dyn Runtime,
    targets: DView,
    images: DView,
    batch: usize,
    channels: usize,
    size: ImageSize,
    patch: usize,
    norm_pix: bool,
) -> GpuResult<()> {
    const K: &str = "vitk_patch_targets";
    let (sh, sw) = (size.height, size.width);
    if patch == 0 || !sh.is_multiple_of(patch) || !sw.is_multiple_of(patch) {
        return Err(shape_err(
            K,
            format!("{sh}x{sw} images are not a grid of {patch}-pixel patches"),
        ));
    }
    let rows = batch * (sh / patch) * (sw / patch);
    let k = patch * patch * channels;
    expect_len(K, "images", images, batch * channels * sh * sw)?;
    expect_len(K, "targets", targets, rows * k)?;
    if targets.is_empty() {
        return Ok(());
    }
    fits_i32(K, "image elements", channels * sh * sw)?;
    fits_i32(K, "rows", rows)?;
    let n = targets.len() as f64;
    let flops = if norm_pix { 5.0 * n } else { 0.0 };
    Launch::new(K, per_row(rows, 128))
        .ptr(targets)
        .ptr(images)
        .int("channels", channels)
        .int("height", sh)
        .int("width", sw)
        .int("patch", patch)
        .flag(norm_pix)
        .cost(flops, 8.0 * n)
        .run(rt)
}

/// Masked pixel loss (see `cpu::mim::masked_pixel_loss`) of pred [R, K] against target [R, K]
/// with mask [R], R = B·N: loss[0] = the mean over masked rows of the per-row mean error (0
/// with no masked row); dpred [R, K] overwritten (fp32, or bf16 for the decoder matmul's dY).
/// `scratch` holds R per-row losses, summed in a fixed order: deterministic.
#[allow(clippy::too_many_arguments)]
pub fn masked_pixel_loss(
    rt: &dyn Runtime,
    loss: DView,
    dpred: Operand,
    scratch: DView,
    pred: DView,
    target: DView,
    mask: View<u8>,
    kind: PixelLoss,
) -> GpuResult<()> {
    const K: &str = "masked_pixel_loss";
    let rows = mask.len();
    if loss.is_empty() {
        return Err(shape_err(K, "loss needs 1 element".into()));
    }
    if rows == 0 || !pred.len().is_multiple_of(rows) {
        return Err(shape_err(
            K,
            format!("pred has {} elements, not {rows} rows", pred.len()),
        ));
    }
    if rows >= MAX_ROWS {
        return Err(shape_err(K, format!("{rows} rows: at most {MAX_ROWS}")));
    }
    let k = pred.len() / rows;
    expect_len(K, "target", target, rows * k)?;
    expect_count(K, "dpred", dpred.len(), rows * k)?;
    if scratch.len() < rows {
        return Err(shape_err(
            K,
            format!("scratch has {} elements, needs {rows}", scratch.len()),
        ));
    }
    fits_i32(K, "k", k)?;
    let name = instance(
        dpred.precision(),
        [
            "vitk_masked_pixel_loss_rows_f32",
            "vitk_masked_pixel_loss_rows_bf16",
        ],
    );
    let blocks = rows.div_ceil(LOSS_WARPS).min(LOSS_MAX_BLOCKS);
    let cfg = LaunchConfig {
        grid: (blocks as u32, 1, 1),
        block: ((32 * LOSS_WARPS) as u32, 1, 1),
        shared_bytes: 0,
    };
    let n = pred.len() as f64;
    Launch::new(name, cfg)
        .ptr(scratch)
        .operand(dpred)
        .ptr(pred)
        .ptr(target)
        .ptr(mask)
        .int("rows", rows)
        .int("k", k)
        .flag(kind == PixelLoss::L1)
        .cost(
            4.0 * n,
            n * (8.0 + dpred.elem_bytes() as f64) + (blocks * rows) as f64,
        )
        .run(rt)?;
    let one = LaunchConfig {
        grid: (1, 1, 1),
        block: (BLOCK, 1, 1),
        shared_bytes: 0,
    };
    Launch::new("vitk_masked_pixel_loss_reduce", one)
        .ptr(loss)
        .ptr(scratch)
        .ptr(mask)
        .int("rows", rows)
        .cost(rows as f64, 5.0 * rows as f64)
        .run(rt)
}

/// x [B·N, D] (overwritten) = src < 0 ? token : pe[row of the same image at src] (see
/// `cpu::mim::substitute_forward`); src [B·N] must lie in −1..N (the sampler's output).
pub fn substitute_forward(
    rt: &dyn Runtime,
    x: DView,
    pe: DView,
    src: View<i32>,
    token: DView,
    n_patches: usize,
) -> GpuResult<()> {
    const K: &str = "vitk_substitute_forward";
    let (rows, dim) = (src.len(), token.len());
    expect_len(K, "x", x, rows * dim)?;
    expect_len(K, "pe", pe, rows * dim)?;
    if n_patches == 0 || !rows.is_multiple_of(n_patches) {
        return Err(shape_err(
            K,
            format!("{rows} rows are not images of {n_patches} patches"),
        ));
    }
    if x.is_empty() {
        return Ok(());
    }
    fits_i32(K, "rows", rows)?;
    fits_i32(K, "dim", dim)?;
    let n = x.len() as f64;
    Launch::new(K, elementwise(x.len()))
        .ptr(x)
        .ptr(pe)
        .ptr(src)
        .ptr(token)
        .int("rows", rows)
        .int("patches", n_patches)
        .int("dim", dim)
        .cost(0.0, 8.0 * n + 4.0 * rows as f64)
        .run(rt)
}

/// Gradients of [`substitute_forward`] from dx [B·N, D]: dpe (overwritten; fp32 or bf16) =
/// Σ over the rows that copied each patch, in order; dtoken [D] += Σ over src < 0 of dx, in
/// the fixed order of [`mask_tokens_backward`] (`scratch` as there).
#[allow(clippy::too_many_arguments)]
pub fn substitute_backward(
    rt: &dyn Runtime,
    dpe: Operand,
    dtoken: DView,
    scratch: DView,
    dx: DView,
    src: View<i32>,
    n_patches: usize,
) -> GpuResult<()> {
    const K: &str = "substitute_backward";
    let (rows, dim) = (src.len(), dtoken.len());
    expect_len(K, "dx", dx, rows * dim)?;
    expect_count(K, "dpe", dpe.len(), rows * dim)?;
    if n_patches == 0 || !rows.is_multiple_of(n_patches) {
        return Err(shape_err(
            K,
            format!("{rows} rows are not images of {n_patches} patches"),
        ));
    }
    token_scratch(K, scratch, rows, dim)?;
    if dx.is_empty() {
        return Ok(());
    }
    fits_i32(K, "rows", rows)?;
    fits_i32(K, "dim", dim)?;
    let n = dx.len() as f64;
    let name = instance(
        dpe.precision(),
        [
            "vitk_substitute_backward_pe_f32",
            "vitk_substitute_backward_pe_bf16",
        ],
    );
    Launch::new(name, elementwise(dx.len()))
        .operand(dpe)
        .ptr(dx)
        .ptr(src)
        .int("rows", rows)
        .int("patches", n_patches)
        .int("dim", dim)
        .cost(
            n,
            n * (4.0 + dpe.elem_bytes() as f64) + 4.0 * (rows * n_patches) as f64,
        )
        .run(rt)?;
    token_gradient(rt, dtoken, scratch, dx, None, Some(src))
}
