//! The CPU emulator (kernels/emu) as a `Runtime`, through its C ABI (kernels/emu/vitk_emu.h).
//! Launches are synchronous and every fault (barrier misuse, out-of-bounds write, launch
//! limits) comes back as an error of that launch.

use std::ffi::{c_char, c_int, c_void, CStr, CString};

use super::error::{GpuError, GpuResult};
use super::runtime::{DevicePtr, KernelArg, Launch, Runtime};

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

/// The emulator has no state of its own beyond process-wide allocations: any number of
/// `EmuRuntime`s share it, and launches from different host threads run independently.
#[derive(Debug, Default, Clone, Copy)]
pub struct EmuRuntime;

impl EmuRuntime {
    pub fn new() -> Self {
        EmuRuntime
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
        // SAFETY: src is a valid host slice; the emulator checks dst lies in one allocation.
        mem("upload", unsafe {
            vitk_emu_memcpy_htod(addr(dst), src.as_ptr().cast(), src.len())
        })
    }

    fn download_bytes(&self, dst: &mut [u8], src: DevicePtr) -> GpuResult<()> {
        // SAFETY: dst is a valid host slice; the emulator checks src lies in one allocation.
        mem("download", unsafe {
            vitk_emu_memcpy_dtoh(dst.as_mut_ptr().cast(), addr(src), dst.len())
        })
    }

    fn memset_bytes(&self, dst: DevicePtr, byte: u8, bytes: usize) -> GpuResult<()> {
        // SAFETY: the emulator checks [dst, dst + bytes) lies in one allocation.
        mem("memset", unsafe {
            vitk_emu_memset(addr(dst), c_int::from(byte), bytes)
        })
    }

    fn sm_count(&self) -> usize {
        EMULATED_SMS
    }

    fn launch(&self, launch: &Launch) -> GpuResult<()> {
        let (kernel, cfg) = (launch.kernel, launch.cfg);
        let name = CString::new(kernel).map_err(|_| GpuError::Kernel {
            kernel: kernel.into(),
            message: "kernel name contains a NUL byte".into(),
        })?;
        let mut values: Vec<KernelArg> = launch.args().to_vec();
        let mut params: Vec<*mut c_void> = values.iter_mut().map(arg_ptr).collect();
        let mut err = vec![0 as c_char; 2048];
        // SAFETY: `params` points at `values`, alive for the (synchronous) launch; the
        // emulator checks the parameter count against the kernel's signature.
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

    fn synchronize(&self) -> GpuResult<()> {
        Ok(()) // launches are synchronous
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
