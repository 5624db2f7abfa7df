//! GPU engine: the device runtime (CUDA or the CPU emulator), typed kernel launchers.
//! All `unsafe` of the crate lives in this module (FFI to the driver and the emulator).

pub mod cublaslt;
pub mod cuda;
pub mod embedded;
pub mod emu;
pub mod engine;
pub mod error;
pub mod kernels;
pub mod profile;
pub mod runtime;
pub mod stream;

use std::sync::Arc;

pub use engine::{GpuPretrainer, GpuTrainer};
pub use error::{GpuError, GpuResult};
pub use kernels::Operand;
pub use runtime::{
    BView, Carver, Cost, DView, DeviceBuffer, DevicePtr, Elem, KernelArg, Launch, LaunchConfig,
    Runtime, View,
};
pub use stream::{Fence, Graph, PinnedBuffer, RuntimeCounts};

/// Which runtime to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Emulator,
    Cuda,
}

impl DeviceKind {
    /// Parses "emu"/"emulator" or "cuda"; anything else is an error naming the value.
    pub fn parse(s: &str) -> GpuResult<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "emu" | "emulator" | "" => Ok(DeviceKind::Emulator),
            "cuda" | "gpu" => Ok(DeviceKind::Cuda),
            other => Err(GpuError::Unavailable(format!(
                "unknown device '{other}': expected 'emulator' or 'cuda'"
            ))),
        }
    }
}

/// Opens a runtime of the given kind (CUDA: device 0).
pub fn open(kind: DeviceKind) -> GpuResult<Arc<dyn Runtime>> {
    Ok(match kind {
        DeviceKind::Emulator => Arc::new(emu::EmuRuntime::new()),
        DeviceKind::Cuda => Arc::new(cuda::CudaRuntime::new(0)?),
    })
}
