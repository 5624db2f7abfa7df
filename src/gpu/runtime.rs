//! The device abstraction the GPU engine is written against: memory, copies and launches by
//! kernel name. Two implementations: CUDA (`cuda.rs`) and the CPU emulator (`emu.rs`).
//! Engine code handles typed `DeviceBuffer`s and `KernelArg`s only, never raw pointers.

use std::marker::PhantomData;
use std::sync::Arc;

use bytemuck::Pod;

use super::error::{GpuError, GpuResult};

/// A device address. Opaque to callers: it is only passed back to the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevicePtr(pub(crate) u64);

/// One kernel parameter, passed by value as cuLaunchKernel expects.
#[derive(Clone, Copy, Debug)]
pub enum KernelArg {
    Ptr(DevicePtr),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
}

/// Grid and block shape plus dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// A 1-D launch covering `n` items with `block` threads per block.
    pub fn for_items(n: usize, block: u32) -> Self {
        let blocks = n.div_ceil(block as usize).max(1);
        LaunchConfig {
            grid: (blocks.min(i32::MAX as usize) as u32, 1, 1),
            block: (block, 1, 1),
            shared_bytes: 0,
        }
    }
}

pub trait Runtime: Send + Sync {
    /// Human-readable device description, e.g. "emulator" or "cuda: NVIDIA H200 (sm_90)".
    fn describe(&self) -> String;
    fn alloc_bytes(&self, bytes: usize) -> GpuResult<DevicePtr>;
    /// Frees an allocation of `alloc_bytes`; called by `DeviceBuffer`'s drop.
    fn free_bytes(&self, ptr: DevicePtr) -> GpuResult<()>;
    fn upload_bytes(&self, dst: DevicePtr, src: &[u8]) -> GpuResult<()>;
    fn download_bytes(&self, dst: &mut [u8], src: DevicePtr) -> GpuResult<()>;
    fn memset_bytes(&self, dst: DevicePtr, byte: u8, bytes: usize) -> GpuResult<()>;
    /// Launches `kernel`. May return before it finishes (CUDA); errors of the kernel itself
    /// then surface at the next `synchronize` (debug builds synchronize after every launch).
    fn launch(&self, kernel: &str, cfg: LaunchConfig, args: &[KernelArg]) -> GpuResult<()>;
    fn synchronize(&self) -> GpuResult<()>;
}

/// A window of f32 elements inside one device allocation: what the typed launchers take, so
/// that the engine can pass named views of its few big allocations. Copyable and unchecked
/// against the allocation's lifetime: the owner of the allocation (a [`DeviceBuffer`]) must
/// outlive the views it hands out (the engine keeps both together).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DView {
    ptr: DevicePtr,
    len: usize,
}

impl DView {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Elements [offset, offset + len) of this view. Panics when out of range: views are
    /// carved by the engine from sizes it computed, so a bad range is a bug, not an input.
    pub fn slice(&self, offset: usize, len: usize) -> DView {
        assert!(
            offset + len <= self.len,
            "view [{offset}, {}) outside a view of {}",
            offset + len,
            self.len
        );
        DView {
            ptr: DevicePtr(self.ptr.0 + (offset * 4) as u64),
            len,
        }
    }

    /// This view as a kernel parameter.
    pub fn arg(&self) -> KernelArg {
        KernelArg::Ptr(self.ptr)
    }

    /// Copies the view to the host.
    pub fn download(&self, rt: &dyn Runtime, out: &mut [f32]) -> GpuResult<()> {
        if out.len() != self.len {
            return Err(GpuError::Memory {
                op: "download".into(),
                message: format!("host slice has {} elements, view {}", out.len(), self.len),
            });
        }
        rt.download_bytes(bytemuck::cast_slice_mut(out), self.ptr)
    }

    pub fn to_vec(&self, rt: &dyn Runtime) -> GpuResult<Vec<f32>> {
        let mut v = vec![0.0; self.len];
        self.download(rt, &mut v)?;
        Ok(v)
    }

    /// Copies `data` into the view.
    pub fn upload(&self, rt: &dyn Runtime, data: &[f32]) -> GpuResult<()> {
        if data.len() != self.len {
            return Err(GpuError::Memory {
                op: "upload".into(),
                message: format!("host slice has {} elements, view {}", data.len(), self.len),
            });
        }
        rt.upload_bytes(self.ptr, bytemuck::cast_slice(data))
    }

    /// Sets every byte of the view (0: zeros, 0xFF: NaN).
    pub fn fill_bytes(&self, rt: &dyn Runtime, byte: u8) -> GpuResult<()> {
        rt.memset_bytes(self.ptr, byte, self.len * 4)
    }
}

/// Carves consecutive named views out of one allocation.
pub struct Carver {
    whole: DView,
    next: usize,
}

impl Carver {
    pub fn new(whole: DView) -> Self {
        Carver { whole, next: 0 }
    }

    /// The next `len` elements.
    pub fn take(&mut self, len: usize) -> DView {
        let v = self.whole.slice(self.next, len);
        self.next += len;
        v
    }

    /// Elements carved so far.
    pub fn used(&self) -> usize {
        self.next
    }
}

/// A typed device allocation of `len` elements, freed on drop.
pub struct DeviceBuffer<T: Pod> {
    rt: Arc<dyn Runtime>,
    ptr: DevicePtr,
    len: usize,
    _elem: PhantomData<T>,
}

impl<T: Pod> DeviceBuffer<T> {
    /// Uninitialized (the emulator fills it with 0xFF bytes: NaN for floats).
    pub fn new(rt: &Arc<dyn Runtime>, len: usize) -> GpuResult<Self> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| GpuError::Memory {
                op: "alloc".into(),
                message: format!("{len} elements overflow usize"),
            })?;
        let ptr = rt.alloc_bytes(bytes)?;
        Ok(DeviceBuffer {
            rt: rt.clone(),
            ptr,
            len,
            _elem: PhantomData,
        })
    }

    pub fn from_slice(rt: &Arc<dyn Runtime>, data: &[T]) -> GpuResult<Self> {
        let mut b = Self::new(rt, data.len())?;
        b.upload(data)?;
        Ok(b)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn upload(&mut self, data: &[T]) -> GpuResult<()> {
        self.check_len("upload", data.len())?;
        self.rt.upload_bytes(self.ptr, bytemuck::cast_slice(data))
    }

    pub fn download(&self, out: &mut [T]) -> GpuResult<()> {
        self.check_len("download", out.len())?;
        self.rt
            .download_bytes(bytemuck::cast_slice_mut(out), self.ptr)
    }

    pub fn to_vec(&self) -> GpuResult<Vec<T>> {
        let mut v = vec![T::zeroed(); self.len];
        self.download(&mut v)?;
        Ok(v)
    }

    /// Sets every byte to `byte` (0 gives zeros; 0xFF gives NaN floats).
    pub fn fill_bytes(&mut self, byte: u8) -> GpuResult<()> {
        self.rt
            .memset_bytes(self.ptr, byte, self.len * std::mem::size_of::<T>())
    }

    /// This buffer as a kernel parameter.
    pub fn arg(&self) -> KernelArg {
        KernelArg::Ptr(self.ptr)
    }

    /// The whole buffer as an f32 view (f32 buffers only: views count f32 elements).
    pub fn view(&self) -> DView
    where
        T: IsF32,
    {
        DView {
            ptr: self.ptr,
            len: self.len,
        }
    }

    fn check_len(&self, op: &str, n: usize) -> GpuResult<()> {
        if n == self.len {
            Ok(())
        } else {
            Err(GpuError::Memory {
                op: op.into(),
                message: format!("host slice has {n} elements, device buffer {}", self.len),
            })
        }
    }
}

/// Marker for the element type views are made of.
pub trait IsF32 {}
impl IsF32 for f32 {}

impl<T: Pod> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        // Freeing can only fail for a foreign pointer, which DeviceBuffer never holds.
        let _ = self.rt.free_bytes(self.ptr);
    }
}
