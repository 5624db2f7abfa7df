//! Typed launchers, one file per kernel family of kernels/*.cu. Each launcher checks its
//! shapes, then declares its launch once: the kernel (the instance for the operands' precision),
//! the launch shape documented at the top of the kernel file, the parameters in order and the
//! work (FLOPs and bytes, for the profiler and the benches).

mod attention;
mod drop_path;
mod ema;
mod layernorm;
mod loss;
mod matmul;
mod mim;
pub mod mim_colour;
mod optim;
mod patch;
mod reduce;
mod tokens;

pub use attention::{
    attention_backward, attention_forward, attention_probs, AttnDims, MAX_HEAD_DIM,
};
pub use drop_path::{drop_path_add, drop_path_backward, DROP_PATH_MAX_BATCH};
pub use ema::ema_update;
pub use layernorm::{layernorm_backward, layernorm_backward_scratch_len, layernorm_forward};
pub use loss::{cross_entropy, soft_cross_entropy};
pub use matmul::{
    linear_backward_dw, linear_backward_dx, linear_forward, matmul_plan, qkv_forward,
    splitk_workspace_len, LinearEpilogue, MatmulPlan, Tile,
};
pub use mim::{
    mask_tokens_backward, mask_tokens_backward_scratch_len, mask_tokens_forward, masked_pixel_loss,
    patch_targets, substitute_backward, substitute_forward, MASK_TOKEN_ROWS_PER_CHUNK,
};
pub use optim::{adamw, grad_norm_clip, NORM_BLOCKS};
pub use patch::patch_embed_im2col;
pub use reduce::{test_block_sum, test_warp_sum};
pub use tokens::{
    patch_rows_gather, patch_rows_scatter, pool_backward, pool_forward, tokens_backward,
    tokens_forward,
};

use super::error::{GpuError, GpuResult};
use super::runtime::{BView, DView, Launch, LaunchConfig, View};
use crate::engine::Precision;

/// Threads per block of the 1-D kernels.
const BLOCK: u32 = 256;

/// Most blocks an elementwise (grid-stride) launch uses: 2048 x 256 threads is two waves of
/// a 132-SM GPU at full occupancy; larger inputs loop (the tests cross this at 2^19 items).
pub const ELEMENTWISE_MAX_BLOCKS: u32 = 2048;

/// A tensor stored in the compute precision of the step: fp32, or bf16 on the bf16 path
/// (matmul operands and the activations saved for them). Launchers pick the kernel instance
/// from it, and reject a mix of precisions where the kernel has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    F32(DView),
    Bf16(BView),
}

impl Operand {
    pub fn len(&self) -> usize {
        match self {
            Operand::F32(v) => v.len(),
            Operand::Bf16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn precision(&self) -> Precision {
        match self {
            Operand::F32(_) => Precision::Fp32,
            Operand::Bf16(_) => Precision::Bf16,
        }
    }

    /// Bytes per element.
    pub fn elem_bytes(&self) -> usize {
        match self {
            Operand::F32(_) => 4,
            Operand::Bf16(_) => 2,
        }
    }

    /// Elements [offset, offset + len).
    pub fn slice(&self, offset: usize, len: usize) -> Self {
        match self {
            Operand::F32(v) => Operand::F32(v.slice(offset, len)),
            Operand::Bf16(v) => Operand::Bf16(v.slice(offset, len)),
        }
    }

    /// Whether the address is a multiple of `align` bytes.
    pub fn aligned_to(&self, align: usize) -> bool {
        match self {
            Operand::F32(v) => v.aligned_to(align),
            Operand::Bf16(v) => v.aligned_to(align),
        }
    }

    /// The fp32 view, or an error naming `what` for a bf16 one.
    pub fn f32(&self, kernel: &str, what: &str) -> GpuResult<DView> {
        match self {
            Operand::F32(v) => Ok(*v),
            Operand::Bf16(_) => Err(shape_err(kernel, format!("{what} must be fp32, got bf16"))),
        }
    }
}

impl From<DView> for Operand {
    fn from(v: DView) -> Self {
        Operand::F32(v)
    }
}

impl From<BView> for Operand {
    fn from(v: BView) -> Self {
        Operand::Bf16(v)
    }
}

/// Launch-builder extension: an [`Operand`] parameter.
trait OperandArg {
    fn operand(self, v: Operand) -> Self;
    fn operand_opt(self, v: Option<Operand>) -> Self;
}

impl OperandArg for Launch {
    fn operand(self, v: Operand) -> Self {
        match v {
            Operand::F32(v) => self.ptr(v),
            Operand::Bf16(v) => self.ptr(v),
        }
    }
    fn operand_opt(self, v: Option<Operand>) -> Self {
        match v {
            Some(v) => self.operand(v),
            None => self.opt::<f32>(None),
        }
    }
}

/// The kernel instance for a precision: `f32` or `bf16` from a pair of names.
fn instance(p: Precision, names: [&'static str; 2]) -> &'static str {
    match p {
        Precision::Fp32 => names[0],
        Precision::Bf16 => names[1],
    }
}

fn shape_err(kernel: &str, message: String) -> GpuError {
    GpuError::Shape {
        kernel: kernel.into(),
        message,
    }
}

fn expect_len<T: super::runtime::Elem>(
    kernel: &str,
    what: &str,
    buf: View<T>,
    want: usize,
) -> GpuResult<()> {
    expect_count(kernel, what, buf.len(), want)
}

fn expect_count(kernel: &str, what: &str, len: usize, want: usize) -> GpuResult<()> {
    if len == want {
        Ok(())
    } else {
        Err(shape_err(
            kernel,
            format!("{what} has {len} elements, expected {want}"),
        ))
    }
}

/// Every operand in `ops` has precision `p`.
fn same_precision(kernel: &str, p: Precision, ops: &[(&str, Operand)]) -> GpuResult<()> {
    for (what, op) in ops {
        if op.precision() != p {
            return Err(shape_err(
                kernel,
                format!("{what} is {}, the other operands {p}", op.precision()),
            ));
        }
    }
    Ok(())
}

/// Blocks for elementwise kernels: grid-stride loops, so the grid is capped.
fn elementwise(n: usize) -> LaunchConfig {
    let mut cfg = LaunchConfig::for_items(n, BLOCK);
    cfg.grid.0 = cfg.grid.0.min(ELEMENTWISE_MAX_BLOCKS);
    cfg
}

/// One block of `threads` per row.
fn per_row(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid: (rows.min(u32::MAX as usize) as u32, 1, 1),
        block: (threads, 1, 1),
        shared_bytes: 0,
    }
}
