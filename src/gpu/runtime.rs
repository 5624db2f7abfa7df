//! The device abstraction the GPU engine is written against: memory, copies and launches by
//! kernel name. Two implementations: CUDA (`cuda.rs`) and the CPU emulator (`emu.rs`).
//! Engine code handles typed `DeviceBuffer`s and `KernelArg`s only, never raw pointers.

use std::marker::PhantomData;
use std::sync::Arc;

use bytemuck::Pod;

use super::error::{GpuError, GpuResult};
use super::stream::{FenceId, GraphId, HostPtr, RuntimeCounts};

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

/// What one launch does, for the profiler and the benches: floating-point operations and the
/// fewest bytes it must move through device memory (each input read once, each output written
/// once). Written by each launcher next to its launch shape.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    pub flops: f64,
    pub bytes: f64,
}

/// Most parameters a kernel takes.
pub const MAX_KERNEL_ARGS: usize = 24;

/// One kernel launch, declared by a typed launcher: the kernel's name, its launch shape, its
/// parameters in order and its cost. Argument errors (a size that does not fit the kernel's
/// 32-bit ints, too many parameters) are kept and returned by [`Launch::run`], so a launcher
/// reads as one declaration.
#[derive(Clone, Debug)]
pub struct Launch {
    pub kernel: &'static str,
    pub cfg: LaunchConfig,
    pub cost: Cost,
    args: [KernelArg; MAX_KERNEL_ARGS],
    n_args: usize,
    error: Option<String>,
}

impl Launch {
    pub fn new(kernel: &'static str, cfg: LaunchConfig) -> Self {
        Launch {
            kernel,
            cfg,
            cost: Cost::default(),
            args: [KernelArg::I32(0); MAX_KERNEL_ARGS],
            n_args: 0,
            error: None,
        }
    }

    fn push(mut self, a: KernelArg) -> Self {
        if self.n_args == MAX_KERNEL_ARGS {
            self.error
                .get_or_insert_with(|| format!("more than {MAX_KERNEL_ARGS} parameters"));
        } else {
            self.args[self.n_args] = a;
            self.n_args += 1;
        }
        self
    }

    /// A device view (or buffer) parameter.
    pub fn ptr<T: Elem>(self, v: View<T>) -> Self {
        self.push(KernelArg::Ptr(v.ptr))
    }

    /// A raw device pointer (tests of the runtime itself).
    pub fn raw_ptr(self, p: DevicePtr) -> Self {
        self.push(KernelArg::Ptr(p))
    }

    /// An optional view: null when absent.
    pub fn opt<T: Elem>(self, v: Option<View<T>>) -> Self {
        self.push(KernelArg::Ptr(v.map_or(DevicePtr(0), |v| v.ptr)))
    }

    /// A size or index, passed as the kernel's `int`; a value above i32::MAX is an error
    /// naming `what`.
    pub fn int(mut self, what: &str, v: usize) -> Self {
        match i32::try_from(v) {
            Ok(i) => self.push(KernelArg::I32(i)),
            Err(_) => {
                self.error
                    .get_or_insert_with(|| format!("{what} = {v} exceeds i32::MAX"));
                self.push(KernelArg::I32(0))
            }
        }
    }

    /// A `long long` count.
    pub fn i64(self, v: usize) -> Self {
        self.push(KernelArg::I64(v as i64))
    }

    pub fn flag(self, v: bool) -> Self {
        self.push(KernelArg::I32(i32::from(v)))
    }

    pub fn bits(self, v: i32) -> Self {
        self.push(KernelArg::I32(v))
    }

    pub fn f32(self, v: f32) -> Self {
        self.push(KernelArg::F32(v))
    }

    pub fn f64(self, v: f64) -> Self {
        self.push(KernelArg::F64(v))
    }

    /// FLOPs and bytes of this launch (see [`Cost`]).
    pub fn cost(mut self, flops: f64, bytes: f64) -> Self {
        self.cost = Cost { flops, bytes };
        self
    }

    pub fn args(&self) -> &[KernelArg] {
        &self.args[..self.n_args]
    }

    /// Launches on `rt`, or returns the first argument error without launching.
    pub fn run(self, rt: &dyn Runtime) -> GpuResult<()> {
        if let Some(message) = self.error {
            return Err(GpuError::Shape {
                kernel: self.kernel.into(),
                message,
            });
        }
        rt.launch(&self)
    }
}

pub trait Runtime: Send + Sync {
    /// Human-readable device description, e.g. "emulator" or "cuda: NVIDIA H200 (sm_90)".
    fn describe(&self) -> String;
    /// Streaming multiprocessors of the device (the emulator reports an H200's 132), which
    /// launchers use to size split-K reductions so that every SM has work.
    fn sm_count(&self) -> usize;
    fn alloc_bytes(&self, bytes: usize) -> GpuResult<DevicePtr>;
    /// Frees an allocation of `alloc_bytes`; called by `DeviceBuffer`'s drop.
    fn free_bytes(&self, ptr: DevicePtr) -> GpuResult<()>;
    fn upload_bytes(&self, dst: DevicePtr, src: &[u8]) -> GpuResult<()>;
    fn download_bytes(&self, dst: &mut [u8], src: DevicePtr) -> GpuResult<()>;
    fn memset_bytes(&self, dst: DevicePtr, byte: u8, bytes: usize) -> GpuResult<()>;
    /// Launches a kernel. May return before it finishes (CUDA); errors of the kernel itself
    /// then surface at the next `synchronize` (or at once with VITK_SYNC_LAUNCHES=1).
    fn launch(&self, launch: &Launch) -> GpuResult<()>;
    /// Waits until the stream has drained (a host wait; refused while capturing).
    fn synchronize(&self) -> GpuResult<()>;

    // The asynchronous side (src/gpu/stream.rs wraps these in owning types).

    /// Page-locked host memory of at least `bytes`, 64-byte aligned.
    fn alloc_host(&self, bytes: usize) -> GpuResult<HostPtr>;
    fn free_host(&self, ptr: HostPtr) -> GpuResult<()>;
    /// Enqueues a copy of `bytes` from pinned `src` (read when the stream gets there).
    fn upload_async(&self, dst: DevicePtr, src: HostPtr, bytes: usize) -> GpuResult<()>;
    /// Enqueues a copy of `bytes` into pinned `dst` (written when the stream gets there).
    fn download_async(&self, dst: HostPtr, src: DevicePtr, bytes: usize) -> GpuResult<()>;
    fn fence_create(&self) -> GpuResult<FenceId>;
    /// Marks the current end of the stream on the fence.
    fn fence_record(&self, fence: FenceId) -> GpuResult<()>;
    /// Waits until the device has passed the fence's last mark.
    fn fence_wait(&self, fence: FenceId) -> GpuResult<()>;
    fn fence_destroy(&self, fence: FenceId);
    /// From here to `end_capture`, launches, memsets and pinned copies are recorded into a
    /// graph instead of running; host waits and pageable copies are errors.
    fn begin_capture(&self) -> GpuResult<()>;
    /// The graph recorded since `begin_capture`, instantiated.
    fn end_capture(&self) -> GpuResult<GraphId>;
    /// Enqueues one replay of the graph.
    fn graph_launch(&self, graph: GraphId) -> GpuResult<()>;
    fn graph_destroy(&self, graph: GraphId);
    /// What this runtime has been asked to do so far.
    fn counts(&self) -> RuntimeCounts;
}

/// Element types of device memory: the size and the name used in messages.
pub trait Elem: Pod {
    const NAME: &'static str;
}
impl Elem for f32 {
    const NAME: &'static str = "f32";
}
impl Elem for f64 {
    const NAME: &'static str = "f64";
}
impl Elem for u32 {
    const NAME: &'static str = "u32";
}
impl Elem for i32 {
    const NAME: &'static str = "i32";
}
impl Elem for u8 {
    const NAME: &'static str = "u8";
}
impl Elem for u16 {
    const NAME: &'static str = "u16";
}
impl Elem for half::bf16 {
    const NAME: &'static str = "bf16";
}

/// A window of `T` elements inside one device allocation: what the typed launchers take, so
/// that the engine can pass named views of its few big allocations. Copyable and unchecked
/// against the allocation's lifetime: the owner of the allocation (a [`DeviceBuffer`]) must
/// outlive the views it hands out (the engine keeps both together).
#[derive(Debug)]
pub struct View<T: Elem> {
    ptr: DevicePtr,
    len: usize,
    _elem: PhantomData<T>,
}

impl<T: Elem> Clone for View<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: Elem> Copy for View<T> {}
impl<T: Elem> PartialEq for View<T> {
    fn eq(&self, other: &Self) -> bool {
        self.ptr == other.ptr && self.len == other.len
    }
}
impl<T: Elem> Eq for View<T> {}

/// An f32 view (parameters, gradients, fp32 activations).
pub type DView = View<f32>;
/// A bf16 view (weight copies and activations of the bf16 path).
pub type BView = View<half::bf16>;

impl<T: Elem> View<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the view spans.
    pub fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }

    /// Whether the device address is a multiple of `align` bytes (vector-load paths).
    pub fn aligned_to(&self, align: usize) -> bool {
        self.ptr.0.is_multiple_of(align as u64)
    }

    /// Elements [offset, offset + len) of this view. Panics when out of range: views are
    /// carved by the engine from sizes it computed, so a bad range is a bug, not an input.
    pub fn slice(&self, offset: usize, len: usize) -> Self {
        assert!(
            offset + len <= self.len,
            "view [{offset}, {}) outside a view of {}",
            offset + len,
            self.len
        );
        View {
            ptr: DevicePtr(self.ptr.0 + (offset * std::mem::size_of::<T>()) as u64),
            len,
            _elem: PhantomData,
        }
    }

    pub(crate) fn device_ptr(&self) -> DevicePtr {
        self.ptr
    }

    /// The device address (for libraries called with raw pointers: cuBLASLt in the benches).
    pub fn device_address(&self) -> u64 {
        self.ptr.0
    }

    /// This view as a kernel parameter.
    pub fn arg(&self) -> KernelArg {
        KernelArg::Ptr(self.ptr)
    }

    fn host_len(&self, op: &str, n: usize) -> GpuResult<()> {
        if n == self.len {
            Ok(())
        } else {
            Err(GpuError::Memory {
                op: op.into(),
                message: format!("host slice has {n} elements, view {}", self.len),
            })
        }
    }

    /// Copies the view to the host.
    pub fn download(&self, rt: &dyn Runtime, out: &mut [T]) -> GpuResult<()> {
        self.host_len("download", out.len())?;
        rt.download_bytes(bytemuck::cast_slice_mut(out), self.ptr)
    }

    pub fn to_vec(&self, rt: &dyn Runtime) -> GpuResult<Vec<T>> {
        let mut v = vec![T::zeroed(); self.len];
        self.download(rt, &mut v)?;
        Ok(v)
    }

    /// Copies `data` into the view.
    pub fn upload(&self, rt: &dyn Runtime, data: &[T]) -> GpuResult<()> {
        self.host_len("upload", data.len())?;
        rt.upload_bytes(self.ptr, bytemuck::cast_slice(data))
    }

    /// Sets every byte of the view (0: zeros, 0xFF: NaN).
    pub fn fill_bytes(&self, rt: &dyn Runtime, byte: u8) -> GpuResult<()> {
        rt.memset_bytes(self.ptr, byte, self.bytes())
    }
}

/// Carves consecutive named views out of one allocation.
pub struct Carver<T: Elem> {
    whole: View<T>,
    next: usize,
}

impl<T: Elem> Carver<T> {
    pub fn new(whole: View<T>) -> Self {
        Carver { whole, next: 0 }
    }

    /// A carver over no memory that only counts what is taken, to size an allocation with the
    /// same code that carves it afterwards.
    pub fn counting() -> Self {
        Carver {
            whole: View {
                ptr: DevicePtr(0),
                len: usize::MAX / 16,
                _elem: PhantomData,
            },
            next: 0,
        }
    }

    /// The next `len` elements.
    pub fn take(&mut self, len: usize) -> View<T> {
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
pub struct DeviceBuffer<T: Elem> {
    rt: Arc<dyn Runtime>,
    ptr: DevicePtr,
    len: usize,
    _elem: PhantomData<T>,
}

impl<T: Elem> DeviceBuffer<T> {
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

    /// The whole buffer as a view.
    pub fn view(&self) -> View<T> {
        View {
            ptr: self.ptr,
            len: self.len,
            _elem: PhantomData,
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

impl<T: Elem> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        // Freeing can only fail for a foreign pointer, which DeviceBuffer never holds.
        let _ = self.rt.free_bytes(self.ptr);
    }
}
