//! kernels/loss.cu: softmax cross-entropy with label smoothing, loss and gradient in one pass.

use super::{expect_count, expect_len, instance, shape_err, Operand, OperandArg};
use crate::gpu::error::GpuResult;
use crate::gpu::runtime::{DView, DeviceBuffer, Launch, LaunchConfig, Runtime};

/// stats[0] = mean loss, stats[1] = correct count, dlogits [B, K] overwritten (fp32, or bf16
/// for the bf16 head matmuls). Labels must be < K (the engine checks them).
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy(
    rt: &dyn Runtime,
    stats: DView,
    dlogits: Operand,
    logits: DView,
    labels: &DeviceBuffer<u32>,
    batch: usize,
    classes: usize,
    smoothing: f32,
) -> GpuResult<()> {
    const K: &str = "cross_entropy";
    if stats.len() < 2 {
        return Err(shape_err(K, "stats needs 2 elements".into()));
    }
    expect_len(K, "logits", logits, batch * classes)?;
    expect_count(K, "dlogits", dlogits.len(), batch * classes)?;
    if labels.len() < batch || batch == 0 || classes == 0 {
        return Err(shape_err(
            K,
            format!(
                "{} labels for a batch of {batch}, {classes} classes",
                labels.len()
            ),
        ));
    }
    let cfg = LaunchConfig {
        grid: (1, 1, 1),
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    let name = instance(
        dlogits.precision(),
        ["vitk_cross_entropy_f32", "vitk_cross_entropy_bf16"],
    );
    let n = (batch * classes) as f64;
    Launch::new(name, cfg)
        .ptr(stats)
        .operand(dlogits)
        .ptr(logits)
        .ptr(labels.view())
        .int("batch", batch)
        .int("classes", classes)
        .f32(smoothing)
        .cost(
            6.0 * n,
            n * (4.0 + dlogits.elem_bytes() as f64) + 4.0 * batch as f64,
        )
        .run(rt)
}

/// Soft-target cross-entropy (timm's `SoftTargetCrossEntropy`, as
/// [`crate::cpu::soft_loss::soft_target_cross_entropy`]): stats[0] = mean loss, stats[1] =
/// rows whose arg-max logit is the arg-max target, dlogits [B, K] overwritten (fp32, or bf16
/// for the bf16 head matmuls) from logits [B, K] and targets [B, K] (fp32).
pub fn soft_cross_entropy(
    rt: &dyn Runtime,
    stats: DView,
    dlogits: Operand,
    logits: DView,
    targets: DView,
    batch: usize,
    classes: usize,
) -> GpuResult<()> {
    const K: &str = "soft_cross_entropy";
    if stats.len() < 2 {
        return Err(shape_err(K, "stats needs 2 elements".into()));
    }
    if batch == 0 || classes == 0 {
        return Err(shape_err(
            K,
            format!("a batch of {batch}, {classes} classes"),
        ));
    }
    expect_len(K, "logits", logits, batch * classes)?;
    expect_len(K, "targets", targets, batch * classes)?;
    expect_count(K, "dlogits", dlogits.len(), batch * classes)?;
    let cfg = LaunchConfig {
        grid: (1, 1, 1),
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    let name = instance(
        dlogits.precision(),
        [
            "vitk_soft_cross_entropy_f32",
            "vitk_soft_cross_entropy_bf16",
        ],
    );
    let n = (batch * classes) as f64;
    Launch::new(name, cfg)
        .ptr(stats)
        .operand(dlogits)
        .ptr(logits)
        .ptr(targets)
        .int("batch", batch)
        .int("classes", classes)
        .cost(9.0 * n, n * (8.0 + dlogits.elem_bytes() as f64))
        .run(rt)
}
