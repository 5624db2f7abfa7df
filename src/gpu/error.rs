//! Errors of the GPU layer: every failure names the kernel or operation and what went wrong.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum GpuError {
    /// No usable device: no libcuda, no GPU, or a requested device kind that does not exist.
    #[error("no GPU available: {0}")]
    Unavailable(String),
    /// A driver or NVRTC call failed.
    #[error("CUDA {op} failed: {message}")]
    Driver { op: String, message: String },
    /// A kernel launch failed or the kernel faulted (emulator: barrier misuse, out-of-bounds
    /// writes, launch limits).
    #[error("kernel {kernel}: {message}")]
    Kernel { kernel: String, message: String },
    /// A typed launcher rejected its arguments before launching.
    #[error("{kernel}: bad shapes: {message}")]
    Shape { kernel: String, message: String },
    /// Memory operations (alloc, copy, memset) rejected by the device or the emulator.
    #[error("{op}: {message}")]
    Memory { op: String, message: String },
}

pub type GpuResult<T> = Result<T, GpuError>;

/// A device error as the engine traits (`TrainEngine`, `PretrainEngine`) report it, which
/// have no device error type: "device engine: WHAT: the device's message".
pub(crate) trait InEngine<T> {
    fn in_engine(self, what: &str) -> anyhow::Result<T>;
}

impl<T> InEngine<T> for GpuResult<T> {
    fn in_engine(self, what: &str) -> anyhow::Result<T> {
        self.map_err(|e| anyhow::anyhow!("device engine: {what}: {e}"))
    }
}
