//! kernels/drop_path.cu: stochastic depth on a residual branch, forward (residual add with
//! per-sample scales) and backward (the branch's gradient).

use super::ELEMENTWISE_MAX_BLOCKS;
use super::{expect_count, expect_len, instance, shape_err, Operand, OperandArg, BLOCK};
use crate::gpu::error::GpuResult;
use crate::gpu::runtime::{DView, Launch, LaunchConfig, Runtime};

/// Most samples one launch takes: the sample is the grid's y index.
pub const DROP_PATH_MAX_BATCH: usize = 65_535;

/// Grid (blocks over T·D, B): the per-sample values of `len` elements in `batch` samples.
fn shape(kernel: &str, len: usize, scale: DView, batch: usize) -> GpuResult<(usize, LaunchConfig)> {
    if batch == 0 || batch > DROP_PATH_MAX_BATCH || len == 0 || !len.is_multiple_of(batch) {
        return Err(shape_err(
            kernel,
            format!("{len} values for a batch of {batch} (1..={DROP_PATH_MAX_BATCH} samples of equal size)"),
        ));
    }
    expect_len(kernel, "scale", scale, batch)?;
    let per_sample = len / batch;
    let blocks = per_sample
        .div_ceil(BLOCK as usize)
        .min(ELEMENTWISE_MAX_BLOCKS as usize);
    let cfg = LaunchConfig {
        grid: (blocks as u32, batch as u32, 1),
        block: (BLOCK, 1, 1),
        shared_bytes: 0,
    };
    Ok((per_sample, cfg))
}

/// y [B, T, D] = x + s_b · branch with scales [B] (`y` may be `x`: in place on the residual
/// stream); all fp32.
pub fn drop_path_add(
    rt: &dyn Runtime,
    y: DView,
    x: DView,
    branch: DView,
    scale: DView,
    batch: usize,
) -> GpuResult<()> {
    const K: &str = "vitk_drop_path_add";
    let n = y.len();
    expect_len(K, "x", x, n)?;
    expect_len(K, "branch", branch, n)?;
    let (per_sample, cfg) = shape(K, n, scale, batch)?;
    Launch::new(K, cfg)
        .ptr(y)
        .ptr(x)
        .ptr(branch)
        .ptr(scale)
        .i64(per_sample)
        .cost(2.0 * n as f64, 12.0 * n as f64)
        .run(rt)
}

/// dbranch [B, T, D] = s_b · dy (overwritten; fp32, or bf16 as the dY of the branch's last
/// matmul on the bf16 path); dy fp32.
pub fn drop_path_backward(
    rt: &dyn Runtime,
    dbranch: Operand,
    dy: DView,
    scale: DView,
    batch: usize,
) -> GpuResult<()> {
    const K: &str = "drop_path_backward";
    let n = dy.len();
    expect_count(K, "dbranch", dbranch.len(), n)?;
    let (per_sample, cfg) = shape(K, n, scale, batch)?;
    let name = instance(
        dbranch.precision(),
        [
            "vitk_drop_path_backward_f32",
            "vitk_drop_path_backward_bf16",
        ],
    );
    Launch::new(name, cfg)
        .operand(dbranch)
        .ptr(dy)
        .ptr(scale)
        .i64(per_sample)
        .cost(n as f64, (4 + dbranch.elem_bytes()) as f64 * n as f64)
        .run(rt)
}
