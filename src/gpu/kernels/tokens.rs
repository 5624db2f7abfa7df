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
    patch_rows_gather(rt, dpatch, dx, batch, t, dim, prefix)?;
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

/// Checks x [B, T, D] and its patch rows' length `patch_len`, T = N + `prefix`.
fn patch_rows_shape(
    kernel: &str,
    x_len: usize,
    patch_len: usize,
    batch: usize,
    tokens: usize,
    dim: usize,
    prefix: usize,
) -> GpuResult<()> {
    if prefix > tokens {
        return Err(shape_err(
            kernel,
            format!("{prefix} prefix rows of {tokens}"),
        ));
    }
    expect_count(kernel, "x", x_len, batch * tokens * dim)?;
    expect_count(
        kernel,
        "patch rows",
        patch_len,
        batch * (tokens - prefix) * dim,
    )?;
    fits_i32(kernel, "x elements", x_len)
}

/// patch [B, N, D] (overwritten; fp32 or bf16) = the patch rows of x [B, T, D], T = N +
/// `prefix` (the class token's row dropped).
pub fn patch_rows_gather(
    rt: &dyn Runtime,
    patch: Operand,
    x: DView,
    batch: usize,
    tokens: usize,
    dim: usize,
    prefix: usize,
) -> GpuResult<()> {
    const K: &str = "patch_rows_gather";
    patch_rows_shape(K, x.len(), patch.len(), batch, tokens, dim, prefix)?;
    if patch.is_empty() {
        return Ok(());
    }
    let name = instance(
        patch.precision(),
        [
            "vitk_tokens_backward_patch_f32",
            "vitk_tokens_backward_patch_bf16",
        ],
    );
    let n = patch.len() as f64;
    Launch::new(name, LaunchConfig::for_items(patch.len(), BLOCK))
        .operand(patch)
        .ptr(x)
        .int("batch", batch)
        .int("tokens", tokens)
        .int("dim", dim)
        .int("prefix", prefix)
        .cost(0.0, n * (4.0 + patch.elem_bytes() as f64))
        .run(rt)
}

/// x [B, T, D] (overwritten) = 0 on the `prefix` rows of each image, patch [B, N, D] on the
/// others (the gradient of [`patch_rows_gather`]); `x_low` (optional) gets a bf16 copy.
#[allow(clippy::too_many_arguments)]
pub fn patch_rows_scatter(
    rt: &dyn Runtime,
    x: DView,
    x_low: Option<BView>,
    patch: DView,
    batch: usize,
    tokens: usize,
    dim: usize,
    prefix: usize,
) -> GpuResult<()> {
    const K: &str = "vitk_patch_rows_scatter";
    patch_rows_shape(K, x.len(), patch.len(), batch, tokens, dim, prefix)?;
    if let Some(low) = x_low {
        expect_len(K, "x_low", low, x.len())?;
    }
    if x.is_empty() {
        return Ok(());
    }
    let n = x.len() as f64;
    let low = if x_low.is_some() { 2.0 * n } else { 0.0 };
    Launch::new(K, LaunchConfig::for_items(x.len(), BLOCK))
        .ptr(x)
        .opt(x_low)
        .ptr(patch)
        .int("batch", batch)
        .int("tokens", tokens)
        .int("dim", dim)
        .int("prefix", prefix)
        .cost(0.0, 4.0 * n + low + (patch.len() * 4) as f64)
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
