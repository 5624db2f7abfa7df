//! kernels/ema.cu: the exponential moving average of the weights (timm's ModelEmaV3).

use super::{elementwise, expect_len};
use crate::gpu::error::GpuResult;
use crate::gpu::runtime::{DView, Launch, Runtime};

/// ema [n] ← lerp(ema, params [n], weight[0]) in torch's lerp form (src/cpu/ema.rs);
/// `weight` [1] holds 1 − d on the device ([`crate::optim::EmaConfig::weight_at`]), so that a
/// captured step reads each step's own.
pub fn ema_update(rt: &dyn Runtime, ema: DView, params: DView, weight: DView) -> GpuResult<()> {
    const K: &str = "vitk_ema_update";
    let n = ema.len();
    expect_len(K, "params", params, n)?;
    expect_len(K, "weight", weight, 1)?;
    if n == 0 {
        return Ok(());
    }
    Launch::new(K, elementwise(n))
        .ptr(ema)
        .ptr(params)
        .ptr(weight)
        .i64(n)
        .cost(3.0 * n as f64, 12.0 * n as f64)
        .run(rt)
}
