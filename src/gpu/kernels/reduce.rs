//! kernels/reduce.cu: test kernels for the warp and block sums of reduce.cuh.

use super::{expect_len, shape_err};
use crate::gpu::error::GpuResult;
use crate::gpu::runtime::{DView, Launch, LaunchConfig, Runtime};

/// One warp; every element of `out` [32] receives the sum of `input` [32].
pub fn test_warp_sum(rt: &dyn Runtime, out: DView, input: DView) -> GpuResult<()> {
    const K: &str = "vitk_test_warp_sum";
    expect_len(K, "out", out, 32)?;
    expect_len(K, "input", input, 32)?;
    let cfg = LaunchConfig {
        grid: (1, 1, 1),
        block: (32, 1, 1),
        shared_bytes: 0,
    };
    Launch::new(K, cfg).ptr(out).ptr(input).run(rt)
}

/// out[r] = sum of row r of `input` [R, n], one block of `threads` per row.
pub fn test_block_sum(
    rt: &dyn Runtime,
    out: DView,
    input: DView,
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
    Launch::new(K, super::per_row(rows, threads))
        .ptr(out)
        .ptr(input)
        .int("n", n)
        .run(rt)
}
