//! CUDA through cudarc's driver API, loaded at run time (`dynamic-loading`): the binary builds
//! and starts without CUDA, and a machine without libcuda or without a GPU gets an error value
//! from `CudaRuntime::new`, never a panic. Device code is the fatbin embedded by build.rs, or
//! the embedded sources compiled by NVRTC for the device's architecture.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use cudarc::driver::{result, sys};

use super::embedded;
use super::emu::arg_ptr;
use super::error::{GpuError, GpuResult};
use super::runtime::{DevicePtr, KernelArg, Launch, Runtime};
use super::stream::{not_while_capturing, Counters, FenceId, GraphId, HostPtr, RuntimeCounts};

/// Above this much dynamic shared memory a kernel needs the opt-in attribute (up to 227 KiB
/// on sm_90), as the emulator assumes.
const DEFAULT_SHARED_LIMIT: u32 = 48 * 1024;

pub struct CudaRuntime {
    device: sys::CUdevice,
    sms: usize,
    /// VITK_SYNC_LAUNCHES=1: synchronise after every launch, so a fault names its kernel.
    sync_launches: bool,
    ctx: sys::CUcontext,
    module: sys::CUmodule,
    /// The one stream everything goes on: non-blocking, so nothing else in the process (the
    /// legacy default stream) orders with it.
    stream: sys::CUstream,
    /// Between begin_capture and end_capture.
    capturing: AtomicBool,
    /// Each kernel's function handle and the dynamic shared memory it is opted in to.
    functions: Mutex<HashMap<&'static str, (sys::CUfunction, u32)>>,
    counters: Counters,
    description: String,
}

// SAFETY: the context, module and function handles are process-wide driver objects; every
// call first makes the context current on the calling thread.
unsafe impl Send for CudaRuntime {}
unsafe impl Sync for CudaRuntime {}

fn driver<T>(op: &str, r: Result<T, result::DriverError>) -> GpuResult<T> {
    r.map_err(|e| GpuError::Driver {
        op: op.into(),
        message: e.to_string(),
    })
}

/// A CUDA event of a runtime's context (timing), destroyed on drop.
pub struct CudaEvent(sys::CUevent);

// SAFETY: an event handle is a process-wide driver object; the driver API is thread-safe.
unsafe impl Send for CudaEvent {}
unsafe impl Sync for CudaEvent {}

impl Drop for CudaEvent {
    fn drop(&mut self) {
        // SAFETY: created by `CudaRuntime::event`, not used after this.
        let _ = unsafe { result::event::destroy(self.0) };
    }
}

impl CudaRuntime {
    /// A fresh event (for timing device work).
    pub fn event(&self) -> GpuResult<CudaEvent> {
        self.current()?;
        let e = driver(
            "cuEventCreate",
            result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT),
        )?;
        Ok(CudaEvent(e))
    }

    /// Records `e` on the runtime's stream, after the work enqueued so far.
    pub fn record(&self, e: &CudaEvent) -> GpuResult<()> {
        self.current()?;
        // SAFETY: the event and the stream belong to this context.
        driver("cuEventRecord", unsafe {
            result::event::record(e.0, self.stream)
        })
    }

    /// (free, total) bytes of device memory, as the driver reports them now.
    pub fn memory_info(&self) -> GpuResult<(usize, usize)> {
        self.current()?;
        driver("cuMemGetInfo", result::mem_get_info())
    }

    /// The stream every operation of this runtime goes on (for libraries: cuBLASLt).
    pub fn stream(&self) -> sys::CUstream {
        self.stream
    }

    /// Milliseconds between two recorded events (waits for the second).
    pub fn elapsed_ms(&self, a: &CudaEvent, b: &CudaEvent) -> GpuResult<f64> {
        self.current()?;
        // SAFETY: both events were recorded on this context.
        unsafe {
            driver("cuEventSynchronize", result::event::synchronize(b.0))?;
            Ok(driver("cuEventElapsedTime", result::event::elapsed(a.0, b.0))? as f64)
        }
    }

    /// Names of the CUDA devices ("NVIDIA H200 (sm_90)"), or why there are none; opens no
    /// context.
    pub fn device_names() -> GpuResult<Vec<String>> {
        // SAFETY: only probes for the shared library; touching the driver without it panics.
        if !unsafe { sys::is_culib_present() } {
            return Err(GpuError::Unavailable(
                "libcuda (the NVIDIA driver) is not installed".into(),
            ));
        }
        driver("cuInit", result::init())?;
        let count = driver("cuDeviceGetCount", result::device::get_count())?;
        (0..count.max(0))
            .map(|i| {
                let device = driver("cuDeviceGet", result::device::get(i))?;
                driver("cuDeviceGetName", result::device::get_name(device))
            })
            .collect()
    }

    /// Milliseconds per call of `f` (which enqueues device work on the runtime's stream),
    /// measured with CUDA events around `iters` calls after `warmup` untimed ones.
    pub fn time_ms(
        &self,
        warmup: usize,
        iters: usize,
        f: &mut dyn FnMut() -> GpuResult<()>,
    ) -> GpuResult<f64> {
        self.current()?;
        for _ in 0..warmup {
            f()?;
        }
        let flags = sys::CUevent_flags::CU_EVENT_DEFAULT;
        let start = driver("cuEventCreate", result::event::create(flags))?;
        let end = driver("cuEventCreate", result::event::create(flags))?;
        let mut run = || -> GpuResult<f64> {
            // SAFETY: both events were just created in the current context, on whose
            // stream every operation of this runtime goes.
            unsafe {
                driver("cuEventRecord", result::event::record(start, self.stream))?;
                for _ in 0..iters {
                    f()?;
                }
                driver("cuEventRecord", result::event::record(end, self.stream))?;
                driver("cuEventSynchronize", result::event::synchronize(end))?;
                let ms = driver("cuEventElapsedTime", result::event::elapsed(start, end))?;
                Ok(ms as f64 / iters.max(1) as f64)
            }
        };
        let out = run();
        // SAFETY: created above, no longer used.
        unsafe {
            let _ = result::event::destroy(start);
            let _ = result::event::destroy(end);
        }
        out
    }

    /// Opens device `ordinal` and loads the kernels.
    pub fn new(ordinal: usize) -> GpuResult<Self> {
        // SAFETY: only probes for the shared library; touching the driver without it panics.
        if !unsafe { sys::is_culib_present() } {
            return Err(GpuError::Unavailable(
                "libcuda (the NVIDIA driver) is not installed".into(),
            ));
        }
        driver("cuInit", result::init())?;
        let count = driver("cuDeviceGetCount", result::device::get_count())?;
        if count <= 0 || ordinal >= count as usize {
            return Err(GpuError::Unavailable(format!(
                "device {ordinal} requested, {count} CUDA device(s) present"
            )));
        }
        let device = driver("cuDeviceGet", result::device::get(ordinal as i32))?;
        let name = driver("cuDeviceGetName", result::device::get_name(device))?;
        // SAFETY: `device` comes from cuDeviceGet.
        let (major, minor) = unsafe {
            (
                driver(
                    "cuDeviceGetAttribute",
                    result::device::get_attribute(
                        device,
                        sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                    ),
                )?,
                driver(
                    "cuDeviceGetAttribute",
                    result::device::get_attribute(
                        device,
                        sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                    ),
                )?,
            )
        };
        // SAFETY: `device` comes from cuDeviceGet.
        let sms = unsafe {
            driver(
                "cuDeviceGetAttribute",
                result::device::get_attribute(
                    device,
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                ),
            )?
        };
        // A host thread waiting for the device sleeps instead of spinning a core. Only takes
        // effect before the primary context is first created (else it keeps its flags).
        // SAFETY: `device` is valid.
        let _ = unsafe {
            sys::cuDevicePrimaryCtxSetFlags_v2(
                device,
                sys::CUctx_flags_enum::CU_CTX_SCHED_BLOCKING_SYNC as u32,
            )
        };
        // SAFETY: `device` is valid; the retained primary context is released in Drop.
        let ctx = driver("cuDevicePrimaryCtxRetain", unsafe {
            result::primary_ctx::retain(device)
        })?;
        // SAFETY: ctx was just retained.
        driver("cuCtxSetCurrent", unsafe { result::ctx::set_current(ctx) })?;
        let (module, how) = match load_module(major, minor) {
            Ok(m) => m,
            Err(e) => {
                // SAFETY: balances the retain above.
                let _ = unsafe { result::primary_ctx::release(device) };
                return Err(e);
            }
        };
        let stream = match driver(
            "cuStreamCreate",
            result::stream::create(result::stream::StreamKind::NonBlocking),
        ) {
            Ok(s) => s,
            Err(e) => {
                // SAFETY: balances the load and the retain above.
                unsafe {
                    let _ = result::module::unload(module);
                    let _ = result::primary_ctx::release(device);
                }
                return Err(e);
            }
        };
        Ok(CudaRuntime {
            device,
            sms: sms.max(1) as usize,
            sync_launches: std::env::var_os("VITK_SYNC_LAUNCHES").is_some_and(|v| v != "0"),
            ctx,
            module,
            stream,
            capturing: AtomicBool::new(false),
            functions: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            description: format!("cuda: {name} (sm_{major}{minor}), kernels from {how}"),
        })
    }

    fn current(&self) -> GpuResult<()> {
        // SAFETY: ctx stays retained for the lifetime of self.
        driver("cuCtxSetCurrent", unsafe {
            result::ctx::set_current(self.ctx)
        })
    }

    /// The kernel's function, opted in to `shared_bytes` of dynamic shared memory when that is
    /// above the default limit (once per kernel and size: one map lookup per launch).
    fn function(&self, kernel: &'static str, shared_bytes: u32) -> GpuResult<sys::CUfunction> {
        let mut map = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        let (f, opted) = match map.get(kernel) {
            Some(&entry) => entry,
            None => {
                let name = CString::new(kernel).map_err(|_| GpuError::Kernel {
                    kernel: kernel.into(),
                    message: "kernel name contains a NUL byte".into(),
                })?;
                // SAFETY: the module is loaded for the lifetime of self.
                let f =
                    unsafe { result::module::get_function(self.module, name) }.map_err(|e| {
                        GpuError::Kernel {
                            kernel: kernel.into(),
                            message: format!("not in the module: {e}"),
                        }
                    })?;
                (f, DEFAULT_SHARED_LIMIT)
            }
        };
        let opted = if shared_bytes > opted {
            // SAFETY: f is a function of the loaded module.
            unsafe {
                result::function::set_function_attribute(
                    f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    shared_bytes as i32,
                )
            }
            .map_err(|e| GpuError::Kernel {
                kernel: kernel.into(),
                message: format!("{shared_bytes} bytes of shared memory: {e}"),
            })?;
            shared_bytes
        } else {
            opted
        };
        map.insert(kernel, (f, opted));
        Ok(f)
    }

    fn capturing(&self) -> bool {
        self.capturing.load(Ordering::Relaxed)
    }

    /// Waits for the stream (a host wait).
    fn drain(&self, op: &str) -> GpuResult<()> {
        // SAFETY: the stream belongs to this runtime's context.
        driver(op, unsafe { result::stream::synchronize(self.stream) })
    }
}

/// The embedded fatbin, or NVRTC's PTX of the embedded sources.
fn load_module(major: i32, minor: i32) -> GpuResult<(sys::CUmodule, String)> {
    if !embedded::FATBIN.is_empty() {
        // cuModuleLoadData wants an aligned image; include_bytes! guarantees no alignment.
        let mut image = vec![0u64; embedded::FATBIN.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut image)[..embedded::FATBIN.len()]
            .copy_from_slice(embedded::FATBIN);
        // SAFETY: a complete fatbin image produced by nvcc, alive for the call.
        let m = driver("cuModuleLoadData (fatbin)", unsafe {
            result::module::load_data(image.as_ptr().cast())
        })?;
        return Ok((m, embedded::KERNEL_BUILD.to_string()));
    }
    // SAFETY: only probes for the shared library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(GpuError::Unavailable(
            "this build has no fatbin (no nvcc at build time) and libnvrtc is not installed".into(),
        ));
    }
    // NVRTC may not know the newest architectures: cap at sm_90, whose PTX the driver JITs.
    let arch = if (major, minor) > (9, 0) {
        (9, 0)
    } else {
        (major, minor)
    };
    let opts = cudarc::nvrtc::CompileOptions {
        options: vec![
            format!("--gpu-architecture=compute_{}{}", arch.0, arch.1),
            "--std=c++17".into(),
        ],
        name: Some("vitk_kernels.cu".into()),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(embedded::SOURCE, opts).map_err(|e| {
        GpuError::Driver {
            op: "NVRTC compile".into(),
            message: e.to_string(),
        }
    })?;
    let image = ptx.as_bytes().ok_or_else(|| GpuError::Driver {
        op: "NVRTC compile".into(),
        message: "no PTX image".into(),
    })?;
    // SAFETY: NUL-terminated PTX from nvrtcGetPTX, alive for the call.
    let m = driver("cuModuleLoadData (NVRTC PTX)", unsafe {
        result::module::load_data(image.as_ptr().cast())
    })?;
    Ok((m, format!("NVRTC (compute_{}{})", arch.0, arch.1)))
}

impl Drop for CudaRuntime {
    fn drop(&mut self) {
        // SAFETY: stream, module and context were created in `new` and are not used
        // afterwards.
        unsafe {
            let _ = result::ctx::set_current(self.ctx);
            let _ = result::stream::synchronize(self.stream);
            let _ = result::stream::destroy(self.stream);
            let _ = result::module::unload(self.module);
            let _ = result::primary_ctx::release(self.device);
        }
    }
}

impl Runtime for CudaRuntime {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn alloc_bytes(&self, bytes: usize) -> GpuResult<DevicePtr> {
        self.current()?;
        // SAFETY: context is current; zero-byte allocations are rounded up to one byte.
        let p = driver("cuMemAlloc", unsafe { result::malloc_sync(bytes.max(1)) })?;
        Ok(DevicePtr(p))
    }

    fn free_bytes(&self, ptr: DevicePtr) -> GpuResult<()> {
        self.current()?;
        // SAFETY: ptr came from alloc_bytes and is freed once (DeviceBuffer's drop).
        driver("cuMemFree", unsafe { result::free_sync(ptr.0) })
    }

    fn upload_bytes(&self, dst: DevicePtr, src: &[u8]) -> GpuResult<()> {
        if self.capturing() {
            return Err(not_while_capturing("cuMemcpyHtoDAsync (pageable)"));
        }
        self.current()?;
        self.counters.pageable_copy();
        // SAFETY: DeviceBuffer checked that dst holds src.len() bytes; the stream is drained
        // before returning, so src outlives the copy.
        driver("cuMemcpyHtoDAsync", unsafe {
            result::memcpy_htod_async(dst.0, src, self.stream)
        })?;
        self.drain("cuStreamSynchronize (after an upload)")
    }

    fn download_bytes(&self, dst: &mut [u8], src: DevicePtr) -> GpuResult<()> {
        if self.capturing() {
            return Err(not_while_capturing("cuMemcpyDtoHAsync (pageable)"));
        }
        self.current()?;
        self.counters.pageable_copy();
        // SAFETY: DeviceBuffer checked that src holds dst.len() bytes; drained before
        // returning, so dst is written before it is read.
        driver("cuMemcpyDtoHAsync", unsafe {
            result::memcpy_dtoh_async(dst, src.0, self.stream)
        })?;
        self.drain("cuStreamSynchronize (after a download)")
    }

    fn memset_bytes(&self, dst: DevicePtr, byte: u8, bytes: usize) -> GpuResult<()> {
        self.current()?;
        // SAFETY: DeviceBuffer passes its own size; stream-ordered.
        driver("cuMemsetD8Async", unsafe {
            result::memset_d8_async(dst.0, byte, bytes, self.stream)
        })
    }

    fn sm_count(&self) -> usize {
        self.sms
    }

    fn launch(&self, launch: &Launch) -> GpuResult<()> {
        let (kernel, cfg) = (launch.kernel, launch.cfg);
        self.current()?;
        let f = self.function(kernel, cfg.shared_bytes)?;
        let err = |e: result::DriverError| GpuError::Kernel {
            kernel: kernel.into(),
            message: e.to_string(),
        };
        let mut values = [KernelArg::I32(0); super::runtime::MAX_KERNEL_ARGS];
        let args = launch.args();
        values[..args.len()].copy_from_slice(args);
        let mut params = [std::ptr::null_mut::<c_void>(); super::runtime::MAX_KERNEL_ARGS];
        for (p, v) in params.iter_mut().zip(values.iter_mut()) {
            *p = arg_ptr(v);
        }
        let capturing = self.capturing();
        self.counters.launch(capturing);
        // SAFETY: the typed launchers in kernels/ match each kernel's signature; `values`
        // outlives the call (cuLaunchKernel copies the parameters before returning).
        unsafe {
            result::launch_kernel(
                f,
                cfg.grid,
                cfg.block,
                cfg.shared_bytes,
                self.stream,
                &mut params[..args.len()],
            )
        }
        .map_err(err)?;
        if (self.sync_launches || cfg!(debug_assertions)) && !capturing {
            self.drain("cuStreamSynchronize (VITK_SYNC_LAUNCHES)")
                .map_err(|e| GpuError::Kernel {
                    kernel: kernel.into(),
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }

    fn synchronize(&self) -> GpuResult<()> {
        if self.capturing() {
            return Err(not_while_capturing("cuStreamSynchronize"));
        }
        self.current()?;
        self.counters.host_sync();
        self.drain("cuStreamSynchronize")
    }

    fn alloc_host(&self, bytes: usize) -> GpuResult<HostPtr> {
        self.current()?;
        // SAFETY: context is current; page-locked, page-aligned memory.
        let p = driver("cuMemHostAlloc", unsafe {
            result::malloc_host(bytes.max(1), 0)
        })?;
        Ok(HostPtr(p as usize))
    }

    fn free_host(&self, ptr: HostPtr) -> GpuResult<()> {
        self.current()?;
        // SAFETY: ptr came from alloc_host and is freed once (PinnedBuffer's drop, after the
        // stream drained).
        driver("cuMemFreeHost", unsafe {
            result::free_host(ptr.0 as *mut c_void)
        })
    }

    fn upload_async(&self, dst: DevicePtr, src: HostPtr, bytes: usize) -> GpuResult<()> {
        self.current()?;
        self.counters.async_copy();
        // SAFETY: PinnedBuffer checked that src holds `bytes` and the view dst spans them;
        // pinned memory stays valid until its buffer drops, which drains the stream first.
        let src = unsafe { std::slice::from_raw_parts(src.0 as *const u8, bytes) };
        driver("cuMemcpyHtoDAsync (pinned)", unsafe {
            result::memcpy_htod_async(dst.0, src, self.stream)
        })
    }

    fn download_async(&self, dst: HostPtr, src: DevicePtr, bytes: usize) -> GpuResult<()> {
        self.current()?;
        self.counters.async_copy();
        // SAFETY: as upload_async.
        let dst = unsafe { std::slice::from_raw_parts_mut(dst.0 as *mut u8, bytes) };
        driver("cuMemcpyDtoHAsync (pinned)", unsafe {
            result::memcpy_dtoh_async(dst, src.0, self.stream)
        })
    }

    fn fence_create(&self) -> GpuResult<FenceId> {
        self.current()?;
        let e = driver(
            "cuEventCreate",
            result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING),
        )?;
        Ok(FenceId(e as usize as u64))
    }

    fn fence_record(&self, fence: FenceId) -> GpuResult<()> {
        if self.capturing() {
            return Err(not_while_capturing("cuEventRecord (fence)"));
        }
        self.current()?;
        // SAFETY: the id is an event of fence_create, alive until fence_destroy.
        driver("cuEventRecord", unsafe {
            result::event::record(fence.0 as usize as sys::CUevent, self.stream)
        })
    }

    fn fence_wait(&self, fence: FenceId) -> GpuResult<()> {
        if self.capturing() {
            return Err(not_while_capturing("cuEventSynchronize (fence)"));
        }
        self.current()?;
        self.counters.fence_wait();
        // SAFETY: as fence_record.
        driver("cuEventSynchronize", unsafe {
            result::event::synchronize(fence.0 as usize as sys::CUevent)
        })
    }

    fn fence_destroy(&self, fence: FenceId) {
        let _ = self.current();
        // SAFETY: as fence_record; not used after this.
        let _ = unsafe { result::event::destroy(fence.0 as usize as sys::CUevent) };
    }

    fn begin_capture(&self) -> GpuResult<()> {
        self.current()?;
        // Global mode: a call from any thread that would wait for the device fails the
        // capture instead of silently breaking it.
        // SAFETY: the stream belongs to this runtime.
        driver("cuStreamBeginCapture", unsafe {
            result::stream::begin_capture(
                self.stream,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL,
            )
        })?;
        self.capturing.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn end_capture(&self) -> GpuResult<GraphId> {
        self.current()?;
        self.capturing.store(false, Ordering::Relaxed);
        // SAFETY: the stream belongs to this runtime; the graph is destroyed once the
        // executable exists (which does not refer to it).
        unsafe {
            let graph = driver(
                "cuStreamEndCapture",
                result::stream::end_capture(self.stream),
            )?;
            let exec = driver(
                "cuGraphInstantiate",
                result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)),
            );
            let _ = result::graph::destroy(graph);
            Ok(GraphId(exec? as usize as u64))
        }
    }

    fn graph_launch(&self, graph: GraphId) -> GpuResult<()> {
        self.current()?;
        self.counters.graph_launch();
        // SAFETY: the id is an executable graph of end_capture, alive until graph_destroy.
        driver("cuGraphLaunch", unsafe {
            result::graph::launch(graph.0 as usize as sys::CUgraphExec, self.stream)
        })?;
        if self.sync_launches {
            self.drain("cuStreamSynchronize (VITK_SYNC_LAUNCHES, after a graph)")?;
        }
        Ok(())
    }

    fn graph_destroy(&self, graph: GraphId) {
        let _ = self.current();
        // SAFETY: as graph_launch; not used after this.
        let _ = unsafe { result::graph::exec_destroy(graph.0 as usize as sys::CUgraphExec) };
    }

    fn counts(&self) -> RuntimeCounts {
        self.counters.snapshot()
    }
}
