//! kernels/layernorm.cu: LayerNorm forward (fp32 or bf16 output) and backward (deterministic
//! weight/bias gradients, optional bf16 copy of the updated dx).

use super::{expect_count, expect_len, instance, per_row, shape_err, Operand, OperandArg, BLOCK};
use crate::gpu::error::GpuResult;
use crate::gpu::runtime::{BView, DView, Launch, LaunchConfig, Runtime};

fn rows_of(kernel: &str, x: DView, dim: usize) -> GpuResult<usize> {
    if dim == 0 || !x.len().is_multiple_of(dim) {
        return Err(shape_err(
            kernel,
            format!("x has {} elements, not rows of {dim}", x.len()),
        ));
    }
    i32::try_from(x.len())
        .map_err(|_| shape_err(kernel, format!("x has {} elements > i32::MAX", x.len())))?;
    Ok(x.len() / dim)
}

/// LayerNorm forward over rows of width `dim`: out [R, D] (fp32 or bf16), mean [R], rstd [R].
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    rt: &dyn Runtime,
    out: Operand,
    mean: DView,
    rstd: DView,
    x: DView,
    weight: DView,
    bias: DView,
    dim: usize,
) -> GpuResult<()> {
    const K: &str = "layernorm_forward";
    let rows = rows_of(K, x, dim)?;
    expect_count(K, "out", out.len(), x.len())?;
    expect_len(K, "mean", mean, rows)?;
    expect_len(K, "rstd", rstd, rows)?;
    expect_len(K, "weight", weight, dim)?;
    expect_len(K, "bias", bias, dim)?;
    if rows == 0 {
        return Ok(());
    }
    let name = instance(
        out.precision(),
        ["vitk_layernorm_forward_f32", "vitk_layernorm_forward_bf16"],
    );
    let n = x.len() as f64;
    Launch::new(name, per_row(rows.div_ceil(WARPS), 32 * WARPS as u32))
        .operand(out)
        .ptr(mean)
        .ptr(rstd)
        .ptr(x)
        .ptr(weight)
        .ptr(bias)
        .int("rows", rows)
        .int("dim", dim)
        .cost(
            8.0 * n,
            n * (4.0 + out.elem_bytes() as f64) + 8.0 * rows as f64,
        )
        .run(rt)
}

/// Warps per block of both kernels, and rows per block of the backward (kernels/layernorm.cu).
const WARPS: usize = 8;
const BACKWARD_ROWS: usize = 32;

/// Blocks of `layernorm_backward` for `rows` rows.
fn layernorm_backward_blocks(rows: usize) -> usize {
    rows.div_ceil(BACKWARD_ROWS).max(1)
}

/// Length of the scratch buffer `layernorm_backward` needs for (rows, dim).
pub fn layernorm_backward_scratch_len(rows: usize, dim: usize) -> usize {
    layernorm_backward_blocks(rows) * 2 * dim
}

/// LayerNorm backward: dx, dweight and dbias are ACCUMULATED into (see kernels/layernorm.cu);
/// `dx_low` (optional) receives a bf16 copy of the updated dx. Deterministic (per-block
/// partials in `scratch`, reduced in a fixed order).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    rt: &dyn Runtime,
    dx: DView,
    dx_low: Option<BView>,
    dweight: DView,
    dbias: DView,
    scratch: DView,
    dout: DView,
    x: DView,
    mean: DView,
    rstd: DView,
    weight: DView,
    dim: usize,
) -> GpuResult<()> {
    const K: &str = "vitk_layernorm_backward";
    let rows = rows_of(K, x, dim)?;
    expect_len(K, "dx", dx, x.len())?;
    if let Some(low) = dx_low {
        expect_len(K, "dx_low", low, x.len())?;
    }
    expect_len(K, "dout", dout, x.len())?;
    expect_len(K, "mean", mean, rows)?;
    expect_len(K, "rstd", rstd, rows)?;
    expect_len(K, "weight", weight, dim)?;
    expect_len(K, "dweight", dweight, dim)?;
    expect_len(K, "dbias", dbias, dim)?;
    if rows == 0 {
        return Ok(());
    }
    let blocks = layernorm_backward_blocks(rows);
    if scratch.len() < blocks * 2 * dim {
        return Err(shape_err(
            K,
            format!(
                "scratch has {} elements, needs {}",
                scratch.len(),
                blocks * 2 * dim
            ),
        ));
    }
    let n = x.len() as f64;
    let low_bytes = if dx_low.is_some() { 2.0 * n } else { 0.0 };
    Launch::new(K, per_row(blocks, 32 * WARPS as u32))
        .ptr(dx)
        .opt(dx_low)
        .ptr(scratch)
        .ptr(dout)
        .ptr(x)
        .ptr(mean)
        .ptr(rstd)
        .ptr(weight)
        .int("rows", rows)
        .int("dim", dim)
        .cost(
            14.0 * n,
            16.0 * n + low_bytes + (blocks * 2 * dim * 4) as f64,
        )
        .run(rt)?;
    Launch::new(
        "vitk_layernorm_backward_reduce",
        LaunchConfig::for_items(dim, BLOCK),
    )
    .ptr(dweight)
    .ptr(dbias)
    .ptr(scratch)
    .int("blocks", blocks)
    .int("dim", dim)
    .cost(
        (2 * blocks * dim) as f64,
        ((2 * blocks + 4) * dim * 4) as f64,
    )
    .run(rt)
}
