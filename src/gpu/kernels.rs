//! Typed launchers, one per kernel of kernels/*.cu: each checks its shapes, picks the launch
//! shape documented at the top of the kernel file, and launches by name.

use super::error::{GpuError, GpuResult};
use super::runtime::{DeviceBuffer, KernelArg, LaunchConfig, Runtime};

const BLOCK: u32 = 256;

fn shape_err(kernel: &str, message: String) -> GpuError {
    GpuError::Shape {
        kernel: kernel.into(),
        message,
    }
}

fn expect_len(kernel: &str, what: &str, buf: &DeviceBuffer<f32>, want: usize) -> GpuResult<()> {
    if buf.len() == want {
        Ok(())
    } else {
        Err(shape_err(
            kernel,
            format!("{what} has {} elements, expected {want}", buf.len()),
        ))
    }
}

/// Kernel sizes are 32-bit ints on the device.
fn to_i32(kernel: &str, what: &str, v: usize) -> GpuResult<i32> {
    i32::try_from(v).map_err(|_| shape_err(kernel, format!("{what} = {v} exceeds i32::MAX")))
}

/// Threads per block for row-wise kernels: one warp multiple covering the row, at most 256.
fn row_block(dim: usize) -> u32 {
    (dim.div_ceil(32) * 32).clamp(32, BLOCK as usize) as u32
}

/// im2col: images [B, C, S, S] -> patches [B*N, C*P*P], N = (S/P)^2, column order (c, ky, kx).
pub fn patch_embed_im2col(
    rt: &dyn Runtime,
    patches: &mut DeviceBuffer<f32>,
    images: &DeviceBuffer<f32>,
    batch: usize,
    channels: usize,
    side: usize,
    patch: usize,
) -> GpuResult<()> {
    const K: &str = "vitk_patch_embed_im2col";
    if patch == 0 || !side.is_multiple_of(patch) {
        return Err(shape_err(
            K,
            format!("image side {side} is not a multiple of patch {patch}"),
        ));
    }
    let n = (side / patch) * (side / patch);
    expect_len(K, "images", images, batch * channels * side * side)?;
    let total = batch * n * channels * patch * patch;
    expect_len(K, "patches", patches, total)?;
    if total == 0 {
        return Ok(());
    }
    let args = [
        patches.arg(),
        images.arg(),
        KernelArg::I32(to_i32(K, "batch", batch)?),
        KernelArg::I32(to_i32(K, "channels", channels)?),
        KernelArg::I32(to_i32(K, "side", side)?),
        KernelArg::I32(to_i32(K, "patch", patch)?),
    ];
    to_i32(K, "image elements", images.len())?;
    rt.launch(K, LaunchConfig::for_items(total, BLOCK), &args)
}

/// LayerNorm forward over rows of width `dim`: out [R, D], mean [R], rstd [R].
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    rt: &dyn Runtime,
    out: &mut DeviceBuffer<f32>,
    mean: &mut DeviceBuffer<f32>,
    rstd: &mut DeviceBuffer<f32>,
    x: &DeviceBuffer<f32>,
    weight: &DeviceBuffer<f32>,
    bias: &DeviceBuffer<f32>,
    dim: usize,
) -> GpuResult<()> {
    const K: &str = "vitk_layernorm_forward";
    if dim == 0 || !x.len().is_multiple_of(dim) {
        return Err(shape_err(
            K,
            format!("x has {} elements, not rows of {dim}", x.len()),
        ));
    }
    let rows = x.len() / dim;
    expect_len(K, "out", out, x.len())?;
    expect_len(K, "mean", mean, rows)?;
    expect_len(K, "rstd", rstd, rows)?;
    expect_len(K, "weight", weight, dim)?;
    expect_len(K, "bias", bias, dim)?;
    if rows == 0 {
        return Ok(());
    }
    let args = [
        out.arg(),
        mean.arg(),
        rstd.arg(),
        x.arg(),
        weight.arg(),
        bias.arg(),
        KernelArg::I32(to_i32(K, "rows", rows)?),
        KernelArg::I32(to_i32(K, "dim", dim)?),
    ];
    to_i32(K, "x elements", x.len())?;
    let cfg = LaunchConfig {
        grid: (rows as u32, 1, 1),
        block: (row_block(dim), 1, 1),
        shared_bytes: 0,
    };
    rt.launch(K, cfg, &args)
}

/// Blocks used by `layernorm_backward` for `rows` rows: at most 128, each owning a contiguous
/// row range.
fn layernorm_backward_blocks(rows: usize) -> (usize, usize) {
    let blocks = rows.clamp(1, 128);
    let per_block = rows.div_ceil(blocks).max(1);
    (rows.div_ceil(per_block).max(1), per_block)
}

/// Length of the scratch buffer `layernorm_backward` needs for (rows, dim).
pub fn layernorm_backward_scratch_len(rows: usize, dim: usize) -> usize {
    layernorm_backward_blocks(rows).0 * 2 * dim
}

/// LayerNorm backward: dx, dweight and dbias are ACCUMULATED into (see kernels/layernorm.cu);
/// deterministic (per-block partials in `scratch`, reduced in a fixed order).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    rt: &dyn Runtime,
    dx: &mut DeviceBuffer<f32>,
    dweight: &mut DeviceBuffer<f32>,
    dbias: &mut DeviceBuffer<f32>,
    scratch: &mut DeviceBuffer<f32>,
    dout: &DeviceBuffer<f32>,
    x: &DeviceBuffer<f32>,
    mean: &DeviceBuffer<f32>,
    rstd: &DeviceBuffer<f32>,
    weight: &DeviceBuffer<f32>,
    dim: usize,
) -> GpuResult<()> {
    const K: &str = "vitk_layernorm_backward";
    if dim == 0 || !x.len().is_multiple_of(dim) {
        return Err(shape_err(
            K,
            format!("x has {} elements, not rows of {dim}", x.len()),
        ));
    }
    let rows = x.len() / dim;
    expect_len(K, "dx", dx, x.len())?;
    expect_len(K, "dout", dout, x.len())?;
    expect_len(K, "mean", mean, rows)?;
    expect_len(K, "rstd", rstd, rows)?;
    expect_len(K, "weight", weight, dim)?;
    expect_len(K, "dweight", dweight, dim)?;
    expect_len(K, "dbias", dbias, dim)?;
    if rows == 0 {
        return Ok(());
    }
    let (blocks, per_block) = layernorm_backward_blocks(rows);
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
    to_i32(K, "x elements", x.len())?;
    let rows_i = to_i32(K, "rows", rows)?;
    let dim_i = to_i32(K, "dim", dim)?;
    let args = [
        dx.arg(),
        scratch.arg(),
        dout.arg(),
        x.arg(),
        mean.arg(),
        rstd.arg(),
        weight.arg(),
        KernelArg::I32(rows_i),
        KernelArg::I32(dim_i),
        KernelArg::I32(per_block as i32),
    ];
    let cfg = LaunchConfig {
        grid: (blocks as u32, 1, 1),
        block: (row_block(dim), 1, 1),
        shared_bytes: 0,
    };
    rt.launch(K, cfg, &args)?;
    let args = [
        dweight.arg(),
        dbias.arg(),
        scratch.arg(),
        KernelArg::I32(blocks as i32),
        KernelArg::I32(dim_i),
    ];
    rt.launch(
        "vitk_layernorm_backward_reduce",
        LaunchConfig::for_items(dim, BLOCK),
        &args,
    )
}

/// Blocks for elementwise kernels: grid-stride loops, so the grid is capped.
fn elementwise(n: usize) -> LaunchConfig {
    let mut cfg = LaunchConfig::for_items(n, BLOCK);
    cfg.grid.0 = cfg.grid.0.min(65_535);
    cfg
}

/// Exact GELU forward: out = 0.5 x (1 + erf(x / sqrt 2)).
pub fn gelu_forward(
    rt: &dyn Runtime,
    out: &mut DeviceBuffer<f32>,
    x: &DeviceBuffer<f32>,
) -> GpuResult<()> {
    const K: &str = "vitk_gelu_forward";
    expect_len(K, "out", out, x.len())?;
    if x.is_empty() {
        return Ok(());
    }
    let args = [out.arg(), x.arg(), KernelArg::I32(to_i32(K, "n", x.len())?)];
    rt.launch(K, elementwise(x.len()), &args)
}

/// Exact GELU backward; dx is OVERWRITTEN.
pub fn gelu_backward(
    rt: &dyn Runtime,
    dx: &mut DeviceBuffer<f32>,
    dout: &DeviceBuffer<f32>,
    x: &DeviceBuffer<f32>,
) -> GpuResult<()> {
    const K: &str = "vitk_gelu_backward";
    expect_len(K, "dx", dx, x.len())?;
    expect_len(K, "dout", dout, x.len())?;
    if x.is_empty() {
        return Ok(());
    }
    let args = [
        dx.arg(),
        dout.arg(),
        x.arg(),
        KernelArg::I32(to_i32(K, "n", x.len())?),
    ];
    rt.launch(K, elementwise(x.len()), &args)
}

/// Test kernel: one warp; every element of `out` [32] receives the sum of `input` [32].
pub fn test_warp_sum(
    rt: &dyn Runtime,
    out: &mut DeviceBuffer<f32>,
    input: &DeviceBuffer<f32>,
) -> GpuResult<()> {
    const K: &str = "vitk_test_warp_sum";
    expect_len(K, "out", out, 32)?;
    expect_len(K, "input", input, 32)?;
    let cfg = LaunchConfig {
        grid: (1, 1, 1),
        block: (32, 1, 1),
        shared_bytes: 0,
    };
    rt.launch(K, cfg, &[out.arg(), input.arg()])
}

/// Test kernel: out[r] = sum of row r of `input` [R, n], one block of `threads` per row.
pub fn test_block_sum(
    rt: &dyn Runtime,
    out: &mut DeviceBuffer<f32>,
    input: &DeviceBuffer<f32>,
    n: usize,
    threads: u32,
) -> GpuResult<()> {
    const K: &str = "vitk_test_block_sum";
    if n == 0 || !input.len().is_multiple_of(n) {
        return Err(shape_err(
            K,
            format!("input has {} elements, not rows of {n}", input.len()),
        ));
    }
    let rows = input.len() / n;
    expect_len(K, "out", out, rows)?;
    let cfg = LaunchConfig {
        grid: (rows as u32, 1, 1),
        block: (threads, 1, 1),
        shared_bytes: 0,
    };
    rt.launch(
        K,
        cfg,
        &[out.arg(), input.arg(), KernelArg::I32(to_i32(K, "n", n)?)],
    )
}
