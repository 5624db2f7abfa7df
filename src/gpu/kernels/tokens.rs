//! kernels/tokens.cu: token assembly (class token, patch embeddings, position embeddings) and
//! pooling, forward and backward.

use super::{expect_count, expect_len, instance, shape_err, Operand, OperandArg, BLOCK};
use crate::gpu::error::GpuResult;
use crate::gpu::runtime::{BView, DView, Launch, LaunchConfig, Runtime};

/// Tokens T of a position table of `len` values of width `dim`, with `prefix` class tokens.
fn tokens_of(kernel: &str, what: &str, len: usize, dim: usize, prefix: usize) -> GpuResult<usize> {
    if dim == 0 || !len.is_multiple_of(dim) || len / dim < prefix {
        return Err(shape_err(
            kernel,
            format!("{what} has {len} elements, not rows of {dim}"),
        ));
    }
    Ok(len / dim)
}

fn fits_i32(kernel: &str, what: &str, n: usize) -> GpuResult<()> {
    i32::try_from(n)
        .map(|_| ())
        .map_err(|_| shape_err(kernel, format!("{what} = {n} exceeds i32::MAX")))
}

/// x [B, T, D] = [cls] + patch [B, N, D] + pos [T, D].
pub fn tokens_forward(
    rt: &dyn Runtime,
    x: DView,
    patch: DView,
    pos: DView,
    cls: Option<DView>,
    batch: usize,
    dim: usize,
) -> GpuResult<()> {
    const K: &str = "vitk_tokens_forward";
    let prefix = usize::from(cls.is_some());
    let t = tokens_of(K, "pos", pos.len(), dim, prefix)?;
    expect_len(K, "x", x, batch * t * dim)?;
    expect_len(K, "patch", patch, batch * (t - prefix) * dim)?;
    if let Some(c) = cls {
        expect_len(K, "cls", c, dim)?;
    }
    if x.is_empty() {
        return Ok(());
    }
    fits_i32(K, "x elements", x.len())?;
    let n = x.len() as f64;
    Launch::new(K, LaunchConfig::for_items(x.len(), BLOCK))
        .ptr(x)
        .ptr(patch)
        .ptr(pos)
        .opt(cls)
        .int("batch", batch)
        .int("tokens", t)
        .int("dim", dim)
        .cost(n, 8.0 * n + (pos.len() * 4) as f64)
        .run(rt)
}

/// dpatch [B, N, D] = dx without the cls row (overwritten; fp32 or bf16); dpos [T, D] +=
/// Σ_b dx[b]; dcls [D] += Σ_b dx[b, 0].
pub fn tokens_backward(
    rt: &dyn Runtime,
    dpatch: Operand,
    dpos: DView,
    dcls: Option<DView>,
    dx: DView,
    batch: usize,
    dim: usize,
) -> GpuResult<()> {
    const K: &str = "tokens_backward";
    let prefix = usize::from(dcls.is_some());
    let t = tokens_of(K, "dpos", dpos.len(), dim, prefix)?;
    expect_len(K, "dx", dx, batch * t * dim)?;
    expect_count(K, "dpatch", dpatch.len(), batch * (t - prefix) * dim)?;
    if let Some(c) = dcls {
        expect_len(K, "dcls", c, dim)?;
    }
    if dx.is_empty() {
        return Ok(());
    }
    fits_i32(K, "dx elements", dx.len())?;
    if !dpatch.is_empty() {
        let name = instance(
            dpatch.precision(),
            [
                "vitk_tokens_backward_patch_f32",
                "vitk_tokens_backward_patch_bf16",
            ],
        );
        let n = dpatch.len() as f64;
        Launch::new(name, LaunchConfig::for_items(dpatch.len(), BLOCK))
            .operand(dpatch)
            .ptr(dx)
            .int("batch", batch)
            .int("tokens", t)
            .int("dim", dim)
            .int("prefix", prefix)
            .cost(0.0, n * (4.0 + dpatch.elem_bytes() as f64))
            .run(rt)?;
    }
    let n = dx.len() as f64;
    Launch::new(
        "vitk_tokens_backward_pos",
        LaunchConfig::for_items(t * dim, BLOCK),
    )
    .ptr(dpos)
    .opt(dcls)
    .ptr(dx)
    .int("batch", batch)
    .int("tokens", t)
    .int("dim", dim)
    .cost(n, 4.0 * n + (8 * t * dim) as f64)
    .run(rt)
}

/// pooled [B, D] from x [B, T, D]: token 0 (cls) or the mean over tokens.
pub fn pool_forward(
    rt: &dyn Runtime,
    pooled: DView,
    x: DView,
    batch: usize,
    tokens: usize,
    dim: usize,
    mean: bool,
) -> GpuResult<()> {
    const K: &str = "vitk_pool_forward";
    expect_len(K, "pooled", pooled, batch * dim)?;
    expect_len(K, "x", x, batch * tokens * dim)?;
    if pooled.is_empty() || tokens == 0 {
        return Ok(());
    }
    fits_i32(K, "x elements", x.len())?;
    let read = if mean { x.len() } else { pooled.len() };
    Launch::new(K, LaunchConfig::for_items(pooled.len(), BLOCK))
        .ptr(pooled)
        .ptr(x)
        .int("batch", batch)
        .int("tokens", tokens)
        .int("dim", dim)
        .flag(mean)
        .cost(read as f64, ((read + pooled.len()) * 4) as f64)
        .run(rt)
}

/// dx [B, T, D] (overwritten) from dpooled [B, D]; `dx_low` (optional) gets a bf16 copy.
#[allow(clippy::too_many_arguments)]
pub fn pool_backward(
    rt: &dyn Runtime,
    dx: DView,
    dx_low: Option<BView>,
    dpooled: DView,
    batch: usize,
    tokens: usize,
    dim: usize,
    mean: bool,
) -> GpuResult<()> {
    const K: &str = "vitk_pool_backward";
    expect_len(K, "dpooled", dpooled, batch * dim)?;
    expect_len(K, "dx", dx, batch * tokens * dim)?;
    if let Some(low) = dx_low {
        expect_len(K, "dx_low", low, dx.len())?;
    }
    if dx.is_empty() {
        return Ok(());
    }
    fits_i32(K, "dx elements", dx.len())?;
    let n = dx.len() as f64;
    let low = if dx_low.is_some() { 2.0 * n } else { 0.0 };
    Launch::new(K, LaunchConfig::for_items(dx.len(), BLOCK))
        .ptr(dx)
        .opt(dx_low)
        .ptr(dpooled)
        .int("batch", batch)
        .int("tokens", tokens)
        .int("dim", dim)
        .flag(mean)
        .cost(n, 4.0 * n + low + (dpooled.len() * 4) as f64)
        .run(rt)
}
