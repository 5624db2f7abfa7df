//! kernels/optim.cu: the global gradient norm with its clip coefficient, and AdamW (writing
//! the bf16 weight copies of the bf16 path in the same pass).

use super::{elementwise, expect_len, shape_err};
use crate::gpu::error::GpuResult;
use crate::gpu::runtime::{BView, DView, DeviceBuffer, Launch, LaunchConfig, Runtime};
use crate::optim::ADAMW_SCALARS;

/// Blocks of the first pass of the gradient norm (the length of its f64 partials buffer).
pub const NORM_BLOCKS: usize = 256;

/// stats[2] = ‖grads‖₂, stats[3] = min(1, max_norm / (norm + 1e-6)), deterministic.
pub fn grad_norm_clip(
    rt: &dyn Runtime,
    stats: DView,
    partial: &DeviceBuffer<f64>,
    grads: DView,
    max_norm: f64,
) -> GpuResult<()> {
    const K: &str = "vitk_sumsq_partial";
    if stats.len() < 4 || partial.len() < NORM_BLOCKS {
        return Err(shape_err(
            K,
            "stats needs 4 elements, partial NORM_BLOCKS".into(),
        ));
    }
    let cfg = LaunchConfig {
        grid: (NORM_BLOCKS as u32, 1, 1),
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    let n = grads.len() as f64;
    Launch::new(K, cfg)
        .ptr(partial.view())
        .ptr(grads)
        .i64(grads.len())
        .cost(2.0 * n, 4.0 * n)
        .run(rt)?;
    let one = LaunchConfig {
        grid: (1, 1, 1),
        block: (32, 1, 1),
        shared_bytes: 0,
    };
    Launch::new("vitk_clip_coef", one)
        .ptr(stats)
        .ptr(partial.view())
        .int("blocks", NORM_BLOCKS)
        .f64(max_norm)
        .cost(NORM_BLOCKS as f64, (NORM_BLOCKS * 8) as f64)
        .run(rt)
}

/// One AdamW update of params, m, v with grads (times stats[3] when `clip_stats` is given);
/// `decay` [n] is 1 where weight decay applies; `params_low` (optional) receives the bf16
/// copy of the updated parameters; `hyper` [ADAMW_SCALARS] holds the step's
/// [`AdamWScalars::to_f32s`], on the device so that a captured step reads each step's own.
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    rt: &dyn Runtime,
    params: DView,
    params_low: Option<BView>,
    m: DView,
    v: DView,
    grads: DView,
    decay: &DeviceBuffer<u8>,
    clip_stats: Option<DView>,
    hyper: DView,
) -> GpuResult<()> {
    const K: &str = "vitk_adamw";
    let n = params.len();
    expect_len(K, "hyper", hyper, ADAMW_SCALARS)?;
    for (name, b) in [("m", m), ("v", v), ("grads", grads)] {
        expect_len(K, name, b, n)?;
    }
    if let Some(low) = params_low {
        expect_len(K, "params_low", low, n)?;
    }
    if decay.len() != n {
        return Err(shape_err(
            K,
            format!("decay mask has {} elements, expected {n}", decay.len()),
        ));
    }
    if n == 0 {
        return Ok(());
    }
    let low = if params_low.is_some() { 2 } else { 0 };
    Launch::new(K, elementwise(n))
        .ptr(params)
        .opt(params_low)
        .ptr(m)
        .ptr(v)
        .ptr(grads)
        .ptr(decay.view())
        .opt(clip_stats)
        .ptr(hyper)
        .i64(n)
        .cost(12.0 * n as f64, ((29 + low) * n) as f64)
        .run(rt)
}
