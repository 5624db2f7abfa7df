//! CUDA through cudarc's driver API, loaded at run time (`dynamic-loading`): the binary builds
//! and starts without CUDA, and a machine without libcuda or without a GPU gets an error value
//! from `CudaRuntime::new`, never a panic. Device code is the fatbin embedded by build.rs, or
//! the embedded sources compiled by NVRTC for the device's architecture.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::Mutex;

use cudarc::driver::{result, sys};

use super::embedded;
use super::emu::arg_ptr;
use super::error::{GpuError, GpuResult};
use super::runtime::{DevicePtr, KernelArg, Launch, Runtime};

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
    functions: Mutex<HashMap<String, sys::CUfunction>>,
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

    /// Records `e` on the default stream, after the work enqueued so far.
    pub fn record(&self, e: &CudaEvent) -> GpuResult<()> {
        self.current()?;
        // SAFETY: the event belongs to this context; null is the default stream, on which
        // every launch of this runtime goes.
        driver("cuEventRecord", unsafe {
            result::event::record(e.0, std::ptr::null_mut())
        })
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

    /// Milliseconds per call of `f` (which enqueues device work on the default stream),
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
            // SAFETY: both events were just created in the current context; null is the
            // default stream, on which every launch of this runtime goes.
            unsafe {
                driver(
                    "cuEventRecord",
                    result::event::record(start, std::ptr::null_mut()),
                )?;
                for _ in 0..iters {
                    f()?;
                }
                driver(
                    "cuEventRecord",
                    result::event::record(end, std::ptr::null_mut()),
                )?;
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
        Ok(CudaRuntime {
            device,
            sms: sms.max(1) as usize,
            sync_launches: std::env::var_os("VITK_SYNC_LAUNCHES").is_some_and(|v| v != "0"),
            ctx,
            module,
            functions: Mutex::new(HashMap::new()),
            description: format!("cuda: {name} (sm_{major}{minor}), kernels from {how}"),
        })
    }

    fn current(&self) -> GpuResult<()> {
        // SAFETY: ctx stays retained for the lifetime of self.
        driver("cuCtxSetCurrent", unsafe {
            result::ctx::set_current(self.ctx)
        })
    }

    fn function(&self, kernel: &str) -> GpuResult<sys::CUfunction> {
        let mut map = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(kernel) {
            return Ok(*f);
        }
        let name = CString::new(kernel).map_err(|_| GpuError::Kernel {
            kernel: kernel.into(),
            message: "kernel name contains a NUL byte".into(),
        })?;
        // SAFETY: the module is loaded for the lifetime of self.
        let f = unsafe { result::module::get_function(self.module, name) }.map_err(|e| {
            GpuError::Kernel {
                kernel: kernel.into(),
                message: format!("not in the module: {e}"),
            }
        })?;
        map.insert(kernel.into(), f);
        Ok(f)
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
        // SAFETY: module and context were created in `new` and are not used afterwards.
        unsafe {
            let _ = result::ctx::set_current(self.ctx);
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
        self.current()?;
        // SAFETY: DeviceBuffer checked that dst holds src.len() bytes; the copy is synchronous.
        driver("cuMemcpyHtoD", unsafe {
            result::memcpy_htod_sync(dst.0, src)
        })
    }

    fn download_bytes(&self, dst: &mut [u8], src: DevicePtr) -> GpuResult<()> {
        self.current()?;
        // SAFETY: DeviceBuffer checked that src holds dst.len() bytes; synchronous.
        driver("cuMemcpyDtoH", unsafe {
            result::memcpy_dtoh_sync(dst, src.0)
        })
    }

    fn memset_bytes(&self, dst: DevicePtr, byte: u8, bytes: usize) -> GpuResult<()> {
        self.current()?;
        // SAFETY: DeviceBuffer passes its own size.
        driver("cuMemsetD8", unsafe {
            result::memset_d8_sync(dst.0, byte, bytes)
        })
    }

    fn sm_count(&self) -> usize {
        self.sms
    }

    fn launch(&self, launch: &Launch) -> GpuResult<()> {
        let (kernel, cfg) = (launch.kernel, launch.cfg);
        self.current()?;
        let f = self.function(kernel)?;
        let err = |e: result::DriverError| GpuError::Kernel {
            kernel: kernel.into(),
            message: e.to_string(),
        };
        if cfg.shared_bytes > DEFAULT_SHARED_LIMIT {
            // SAFETY: f is a function of the loaded module.
            unsafe {
                result::function::set_function_attribute(
                    f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    cfg.shared_bytes as i32,
                )
            }
            .map_err(err)?;
        }
        let mut values: Vec<KernelArg> = launch.args().to_vec();
        let mut params: Vec<*mut c_void> = values.iter_mut().map(arg_ptr).collect();
        // SAFETY: the typed launchers in kernels.rs match each kernel's signature; `values`
        // outlives the call (cuLaunchKernel copies the parameters before returning).
        unsafe {
            result::launch_kernel(
                f,
                cfg.grid,
                cfg.block,
                cfg.shared_bytes,
                std::ptr::null_mut(),
                &mut params,
            )
        }
        .map_err(err)?;
        if self.sync_launches || cfg!(debug_assertions) {
            result::ctx::synchronize().map_err(err)?;
        }
        Ok(())
    }

    fn synchronize(&self) -> GpuResult<()> {
        self.current()?;
        driver("cuCtxSynchronize", result::ctx::synchronize())
    }
}
