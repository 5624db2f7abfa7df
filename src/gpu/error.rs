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
