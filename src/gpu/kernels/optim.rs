//! kernels/optim.cu: the global gradient norm with its clip coefficient, and AdamW (writing
//! the bf16 weight copies of the bf16 path in the same pass).

use super::{elementwise, expect_len, shape_err};
use crate::gpu::error::GpuResult;
use crate::gpu::runtime::{BView, DView, DeviceBuffer, Launch, LaunchConfig, Runtime, View};
use crate::optim::ADAMW_COMMON;

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

/// One AdamW update of params, m, v with grads (times stats[3] when `clip_stats` is given),
/// every scalar at its optimizer group's rate and decay: `group` [n] holds each scalar's
/// group, below `groups`; `hyper` [5 + 2·groups] the step's [`crate::optim::device_hyper`],
/// on the device so that a captured step reads each step's own. `params_low` (optional)
/// receives the bf16 copy of the updated parameters. The views may be any span of the
/// layout (the trainable tensors of a frozen backbone).
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    rt: &dyn Runtime,
    params: DView,
    params_low: Option<BView>,
    m: DView,
    v: DView,
    grads: DView,
    group: View<u16>,
    groups: usize,
    clip_stats: Option<DView>,
    hyper: DView,
) -> GpuResult<()> {
    const K: &str = "vitk_adamw";
    let n = params.len();
    expect_len(K, "hyper", hyper, crate::optim::hyper_len(groups))?;
    for (name, b) in [("m", m), ("v", v), ("grads", grads)] {
        expect_len(K, name, b, n)?;
    }
    expect_len(K, "group", group, n)?;
    if let Some(low) = params_low {
        expect_len(K, "params_low", low, n)?;
    }
    if groups == 0 {
        return Err(shape_err(K, "no optimizer group".into()));
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
        .ptr(group)
        .opt(clip_stats)
        .ptr(hyper)
        .i64(n)
        .cost(12.0 * n as f64, ((30 + low) * n) as f64)
        .run(rt)
}

/// The per-group scalars start after these in `hyper` (the kernel's `hyper + 5`).
const _: () = assert!(ADAMW_COMMON == 5);
