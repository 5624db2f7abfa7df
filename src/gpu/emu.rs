//! The CPU emulator (kernels/emu) as a `Runtime`, through its C ABI (kernels/emu/vitk_emu.h).
//! Launches are synchronous and every fault (barrier misuse, out-of-bounds write, launch
//! limits) comes back as an error of that launch. Graphs are recorded and replayed here.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::error::{GpuError, GpuResult};
use super::runtime::{DevicePtr, KernelArg, Launch, Runtime};
use super::stream::{
    not_while_capturing, Counters, FenceId, GraphId, HostHeap, HostPtr, RuntimeCounts,
};

extern "C" {
    fn vitk_emu_alloc(bytes: usize, out: *mut *mut c_void) -> c_int;
    fn vitk_emu_free(ptr: *mut c_void) -> c_int;
    fn vitk_emu_memcpy_htod(dst: *mut c_void, src: *const c_void, bytes: usize) -> c_int;
    fn vitk_emu_memcpy_dtoh(dst: *mut c_void, src: *const c_void, bytes: usize) -> c_int;
    fn vitk_emu_memset(dst: *mut c_void, byte: c_int, bytes: usize) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn vitk_emu_launch(
        kernel: *const c_char,
        grid_x: u32,
        grid_y: u32,
        grid_z: u32,
        block_x: u32,
        block_y: u32,
        block_z: u32,
        shared_bytes: usize,
        params: *mut *mut c_void,
        num_params: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn vitk_emu_last_error() -> *const c_char;
    fn vitk_emu_kernel_count() -> usize;
    fn vitk_emu_kernel_name(index: usize) -> *const c_char;
}

/// The multiprocessor count the emulator reports: an H200's, so that launch shapes that
/// depend on it (split-K) are the ones a GPU runs.
pub const EMULATED_SMS: usize = 132;

/// One operation of a captured graph.
enum Op {
    Launch(Box<Launch>),
    Memset {
        dst: DevicePtr,
        byte: u8,
        bytes: usize,
    },
    Upload {
        dst: DevicePtr,
        src: HostPtr,
        bytes: usize,
    },
    Download {
        dst: HostPtr,
        src: DevicePtr,
        bytes: usize,
    },
}

/// Device memory and kernels are process-wide (any number of `EmuRuntime`s share them, and
/// launches from different host threads run independently); each runtime is one stream that
/// runs every operation at once, and keeps its own graphs and counts. Capture records
/// operations without running them, as CUDA's does, so a graph replay reads pinned inputs
/// and kernel arguments as they were captured: a step whose per-step values were baked into
/// a kernel argument instead of a device buffer replays stale values here too.
#[derive(Default)]
pub struct EmuRuntime {
    counters: Counters,
    capture: Mutex<Option<Vec<Op>>>,
    graphs: Mutex<HashMap<u64, Vec<Op>>>,
    host: HostHeap,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EmuRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    fn capturing(&self) -> bool {
        lock(&self.capture).is_some()
    }

    /// Records `op` when capturing (true), else leaves it to the caller to run.
    fn record(&self, op: impl FnOnce() -> Op) -> bool {
        match lock(&self.capture).as_mut() {
            Some(ops) => {
                ops.push(op());
                true
            }
            None => false,
        }
    }

    fn run(&self, op: &Op) -> GpuResult<()> {
        match op {
            Op::Launch(l) => launch_now(l),
            Op::Memset { dst, byte, bytes } => {
                // SAFETY: the emulator checks [dst, dst + bytes) lies in one allocation.
                mem("memset", unsafe {
                    vitk_emu_memset(addr(*dst), c_int::from(*byte), *bytes)
                })
            }
            Op::Upload { dst, src, bytes } => {
                self.host.check("async upload", *src, *bytes)?;
                // SAFETY: [src, src + bytes) lies in one of this runtime's pinned buffers
                // (checked above); the emulator checks dst.
                mem("async upload", unsafe {
                    vitk_emu_memcpy_htod(addr(*dst), src.0 as *const c_void, *bytes)
                })
            }
            Op::Download { dst, src, bytes } => {
                self.host.check("async download", *dst, *bytes)?;
                // SAFETY: as Upload.
                mem("async download", unsafe {
                    vitk_emu_memcpy_dtoh(dst.0 as *mut c_void, addr(*src), *bytes)
                })
            }
        }
    }

    /// Names of every kernel the emulator can launch.
    pub fn kernel_names() -> Vec<String> {
        // SAFETY: index < count; the registry is immutable after static initialization and
        // its names are static NUL-terminated strings.
        unsafe {
            (0..vitk_emu_kernel_count())
                .filter_map(|i| {
                    let p = vitk_emu_kernel_name(i);
                    (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
                })
                .collect()
        }
    }
}

fn last_error() -> String {
    // SAFETY: returns a NUL-terminated thread-local string owned by the emulator.
    unsafe { CStr::from_ptr(vitk_emu_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn mem(op: &str, rc: c_int) -> GpuResult<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(GpuError::Memory {
            op: format!("emulator {op}"),
            message: last_error(),
        })
    }
}

fn addr(p: DevicePtr) -> *mut c_void {
    p.0 as usize as *mut c_void
}

fn launch_now(launch: &Launch) -> GpuResult<()> {
    let (kernel, cfg) = (launch.kernel, launch.cfg);
    let name = CString::new(kernel).map_err(|_| GpuError::Kernel {
        kernel: kernel.into(),
        message: "kernel name contains a NUL byte".into(),
    })?;
    let mut values: Vec<KernelArg> = launch.args().to_vec();
    let mut params: Vec<*mut c_void> = values.iter_mut().map(arg_ptr).collect();
    let mut err = vec![0 as c_char; 2048];
    // SAFETY: `params` points at `values`, alive for the (synchronous) launch; the emulator
    // checks the parameter count against the kernel's signature.
    let rc = unsafe {
        vitk_emu_launch(
            name.as_ptr(),
            cfg.grid.0,
            cfg.grid.1,
            cfg.grid.2,
            cfg.block.0,
            cfg.block.1,
            cfg.block.2,
            cfg.shared_bytes as usize,
            params.as_mut_ptr(),
            params.len(),
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: the emulator NUL-terminates the message inside `err`.
    let message = unsafe { CStr::from_ptr(err.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    Err(GpuError::Kernel {
        kernel: kernel.into(),
        message,
    })
}

impl Runtime for EmuRuntime {
    fn describe(&self) -> String {
        "emulator (CUDA semantics on the CPU)".into()
    }

    fn alloc_bytes(&self, bytes: usize) -> GpuResult<DevicePtr> {
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: `p` is a valid out-pointer.
        mem("alloc", unsafe { vitk_emu_alloc(bytes, &mut p) })?;
        Ok(DevicePtr(p as usize as u64))
    }

    fn free_bytes(&self, ptr: DevicePtr) -> GpuResult<()> {
        // SAFETY: the emulator validates the pointer against its allocation table.
        mem("free", unsafe { vitk_emu_free(addr(ptr)) })
    }

    fn upload_bytes(&self, dst: DevicePtr, src: &[u8]) -> GpuResult<()> {
        if self.capturing() {
            return Err(not_while_capturing("emulator upload (pageable)"));
        }
        self.counters.pageable_copy();
        // SAFETY: src is a valid host slice; the emulator checks dst lies in one allocation.
        mem("upload", unsafe {
            vitk_emu_memcpy_htod(addr(dst), src.as_ptr().cast(), src.len())
        })
    }

    fn download_bytes(&self, dst: &mut [u8], src: DevicePtr) -> GpuResult<()> {
        if self.capturing() {
            return Err(not_while_capturing("emulator download (pageable)"));
        }
        self.counters.pageable_copy();
        // SAFETY: dst is a valid host slice; the emulator checks src lies in one allocation.
        mem("download", unsafe {
            vitk_emu_memcpy_dtoh(dst.as_mut_ptr().cast(), addr(src), dst.len())
        })
    }

    fn memset_bytes(&self, dst: DevicePtr, byte: u8, bytes: usize) -> GpuResult<()> {
        let op = || Op::Memset { dst, byte, bytes };
        if self.record(op) {
            return Ok(());
        }
        self.run(&op())
    }

    fn sm_count(&self) -> usize {
        EMULATED_SMS
    }

    fn launch(&self, launch: &Launch) -> GpuResult<()> {
        if self.record(|| Op::Launch(Box::new(launch.clone()))) {
            self.counters.launch(true);
            return Ok(());
        }
        self.counters.launch(false);
        launch_now(launch)
    }

    fn synchronize(&self) -> GpuResult<()> {
        if self.capturing() {
            return Err(not_while_capturing("emulator synchronize"));
        }
        self.counters.host_sync();
        Ok(()) // every operation ran when it was issued
    }

    fn alloc_host(&self, bytes: usize) -> GpuResult<HostPtr> {
        self.host.alloc(bytes)
    }

    fn free_host(&self, ptr: HostPtr) -> GpuResult<()> {
        self.host.free(ptr)
    }

    fn upload_async(&self, dst: DevicePtr, src: HostPtr, bytes: usize) -> GpuResult<()> {
        self.counters.async_copy();
        let op = || Op::Upload { dst, src, bytes };
        if self.record(op) {
            return self.host.check("async upload", src, bytes);
        }
        self.run(&op())
    }

    fn download_async(&self, dst: HostPtr, src: DevicePtr, bytes: usize) -> GpuResult<()> {
        self.counters.async_copy();
        let op = || Op::Download { dst, src, bytes };
        if self.record(op) {
            return self.host.check("async download", dst, bytes);
        }
        self.run(&op())
    }

    fn fence_create(&self) -> GpuResult<FenceId> {
        Ok(FenceId(self.next_id.fetch_add(1, Ordering::Relaxed)))
    }

    fn fence_record(&self, _: FenceId) -> GpuResult<()> {
        if self.capturing() {
            return Err(not_while_capturing("emulator fence record"));
        }
        Ok(())
    }

    fn fence_wait(&self, _: FenceId) -> GpuResult<()> {
        if self.capturing() {
            return Err(not_while_capturing("emulator fence wait"));
        }
        self.counters.fence_wait();
        Ok(()) // the stream ran everything issued before the mark already
    }

    fn fence_destroy(&self, _: FenceId) {}

    fn begin_capture(&self) -> GpuResult<()> {
        let mut c = lock(&self.capture);
        if c.is_some() {
            return Err(GpuError::Driver {
                op: "emulator begin capture".into(),
                message: "a capture is already in progress".into(),
            });
        }
        *c = Some(Vec::new());
        Ok(())
    }

    fn end_capture(&self) -> GpuResult<GraphId> {
        let ops = lock(&self.capture).take().ok_or_else(|| GpuError::Driver {
            op: "emulator end capture".into(),
            message: "no capture in progress".into(),
        })?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.graphs).insert(id, ops);
        Ok(GraphId(id))
    }

    fn graph_launch(&self, graph: GraphId) -> GpuResult<()> {
        if self.capturing() {
            return Err(GpuError::Driver {
                op: "emulator graph launch".into(),
                message: "graphs are not replayed inside a capture".into(),
            });
        }
        self.counters.graph_launch();
        let graphs = lock(&self.graphs);
        let ops = graphs.get(&graph.0).ok_or_else(|| GpuError::Driver {
            op: "emulator graph launch".into(),
            message: format!("no graph {}", graph.0),
        })?;
        ops.iter().try_for_each(|op| self.run(op))
    }

    fn graph_destroy(&self, graph: GraphId) {
        lock(&self.graphs).remove(&graph.0);
    }

    fn counts(&self) -> RuntimeCounts {
        self.counters.snapshot()
    }
}

/// Address of the value inside a `KernelArg`, as cuLaunchKernel's `void**` wants it.
pub(crate) fn arg_ptr(a: &mut KernelArg) -> *mut c_void {
    match a {
        KernelArg::Ptr(p) => (&mut p.0 as *mut u64).cast(),
        KernelArg::I32(v) => (v as *mut i32).cast(),
        KernelArg::U32(v) => (v as *mut u32).cast(),
        KernelArg::I64(v) => (v as *mut i64).cast(),
        KernelArg::F32(v) => (v as *mut f32).cast(),
        KernelArg::F64(v) => (v as *mut f64).cast(),
    }
}
