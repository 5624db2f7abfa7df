//! cuBLASLt, loaded at run time where the library exists, as the yardstick the kernel benches
//! hold vitk's matmuls against (same shapes, layouts and precision). Training never uses it.
//!
//! vitk's tensors are row-major; cuBLASLt's are column-major. A row-major X [r, c] is the
//! column-major Xᵀ, so C = op(A)·op(B) row-major is computed as Cᵀ = op(B)ᵀ·op(A)ᵀ.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublaslt::{result as lt, sys};

use super::cuda::CudaRuntime;
use super::error::{GpuError, GpuResult};
use super::runtime::{DeviceBuffer, Elem, Runtime, View};
use crate::engine::Precision;

const WORKSPACE: usize = 32 << 20;

/// Which product, in vitk's row-major terms (the three matmuls of a linear layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Product {
    /// C [M, N] = A [M, K] · B [N, K]ᵀ (forward: y = x Wᵀ)
    Forward,
    /// C [M, N] = A [M, K] · B [K, N] (dX = dY W)
    Dx,
    /// C [M, N] = A [K, M]ᵀ · B [K, N] (dW = dYᵀ X)
    Dw,
}

fn err(op: &str, e: impl std::fmt::Debug) -> GpuError {
    GpuError::Driver {
        op: format!("cuBLASLt {op}"),
        message: format!("{e:?}"),
    }
}

/// A cuBLASLt handle and its workspace on the device of `cuda`, issuing on its stream (so
/// that the runtime's events time it).
pub struct CublasLt {
    handle: sys::cublasLtHandle_t,
    workspace: DeviceBuffer<u8>,
    cuda: Arc<CudaRuntime>,
}

impl CublasLt {
    /// Opens cuBLASLt, or says why it cannot (no library, no device).
    pub fn new(cuda: &Arc<CudaRuntime>) -> GpuResult<Self> {
        // SAFETY: only probes for the shared library; calling into it without one panics.
        if !unsafe { sys::is_culib_present() } {
            return Err(GpuError::Unavailable("libcublasLt is not installed".into()));
        }
        let rt: Arc<dyn Runtime> = cuda.clone();
        let workspace = DeviceBuffer::<u8>::new(&rt, WORKSPACE)?;
        let handle = lt::create_handle().map_err(|e| err("create", e))?;
        Ok(CublasLt {
            handle,
            workspace,
            cuda: cuda.clone(),
        })
    }

    /// Enqueues C = product(A, B) on the runtime's stream, with fp32 accumulation; A and B of
    /// `precision` (bf16 or fp32), C of type `Out`.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul<In: Elem, Out: Elem>(
        &self,
        product: Product,
        precision: Precision,
        c: View<Out>,
        a: View<In>,
        b: View<In>,
        (m, n, k): (usize, usize, usize),
    ) -> GpuResult<()> {
        let ty = |p: Precision| match p {
            Precision::Fp32 => sys::cudaDataType::CUDA_R_32F,
            Precision::Bf16 => sys::cudaDataType::CUDA_R_16BF,
        };
        let out = if std::mem::size_of::<Out>() == 4 {
            Precision::Fp32
        } else {
            Precision::Bf16
        };
        if a.len() < m * k || b.len() < k * n || c.len() < m * n {
            return Err(GpuError::Shape {
                kernel: "cublaslt".into(),
                message: format!("buffers too small for {m} x {n} x {k}"),
            });
        }
        // Column-major operands of Cᵀ [N, M] = Lt_A [N, K] · Lt_B [K, M] (see the module doc):
        // (transa, rows, cols, ld of the stored Lt_A), the same for Lt_B.
        let (ta, a_dims, tb, b_dims) = match product {
            Product::Forward => (1i32, (k, n, k), 0i32, (k, m, k)),
            Product::Dx => (0, (n, k, n), 0, (k, m, k)),
            Product::Dw => (0, (n, k, n), 1, (m, k, m)),
        };
        let layout = |p: Precision, (r, c, ld): (usize, usize, usize)| {
            lt::create_matrix_layout(ty(p), r as u64, c as u64, ld as i64)
                .map_err(|e| err("matrix layout", e))
        };
        let la = layout(precision, a_dims)?;
        let lb = layout(precision, b_dims)?;
        let lc = layout(out, (n, m, n))?;
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(|e| err("matmul desc", e))?;
        let pref = lt::create_matmul_pref().map_err(|e| err("preference", e))?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the descriptors were just created and are destroyed below; the attribute
        // buffers are plain values of the documented sizes; the device pointers are live
        // allocations of at least the sizes checked above.
        let run = unsafe {
            let set = |attr, v: &i32| {
                lt::set_matmul_desc_attribute(
                    desc,
                    attr,
                    (v as *const i32).cast(),
                    std::mem::size_of::<i32>(),
                )
            };
            set(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &ta,
            )
            .map_err(|e| err("transa", e))?;
            set(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                &tb,
            )
            .map_err(|e| err("transb", e))?;
            let ws = WORKSPACE as u64;
            lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&ws as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
            .map_err(|e| err("workspace preference", e))?;
            let heuristic = lt::get_matmul_algo_heuristic(self.handle, desc, la, lb, lc, lc, pref)
                .map_err(|e| err("algorithm heuristic", e))?;
            let addr = |p: u64| p as usize as *mut c_void;
            lt::matmul(
                self.handle,
                desc,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                addr(b.device_address()),
                la,
                addr(a.device_address()),
                lb,
                addr(c.device_address()),
                lc,
                addr(c.device_address()),
                lc,
                &heuristic.algo,
                addr(self.workspace.view().device_address()),
                WORKSPACE,
                self.cuda.stream() as _,
            )
            .map_err(|e| err("matmul", e))
        };
        // SAFETY: created above, not used after this point.
        unsafe {
            let _ = lt::destroy_matmul_pref(pref);
            let _ = lt::destroy_matmul_desc(desc);
            let _ = lt::destroy_matrix_layout(la);
            let _ = lt::destroy_matrix_layout(lb);
            let _ = lt::destroy_matrix_layout(lc);
        }
        run
    }
}

impl Drop for CublasLt {
    fn drop(&mut self) {
        // SAFETY: the handle was created in `new` and is not used after this.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}
