//! kernels/attention.cu (fp32) and kernels/attention_tc.cu (bf16 tensor cores): fused
//! multi-head softmax attention over head-major q, k, v, forward and backward. Only the
//! log-sum-exp of each score row is kept for backward; no [B, H, T, T] tensor exists.

use super::{expect_count, expect_len, same_precision, shape_err, Operand, OperandArg};
use crate::engine::Precision;
use crate::gpu::error::GpuResult;
use crate::gpu::runtime::{DView, Launch, LaunchConfig, Runtime};

/// Rows per block of every attention kernel (kernels/attention*.cu).
const CHUNK: usize = 64;
/// Largest head dimension the kernels handle.
pub const MAX_HEAD_DIM: usize = 128;

/// Shape of one attention call: batch, heads, tokens, head dim.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub batch: usize,
    pub heads: usize,
    pub tokens: usize,
    pub head_dim: usize,
}

impl AttnDims {
    /// Elements of one of q, k, v (or of the attention output): B·H·T·hd.
    pub fn head_len(&self) -> usize {
        self.batch * self.heads * self.tokens * self.head_dim
    }
    /// Rows of scores: B·H·T (the length of lse and rowdot).
    pub fn rows(&self) -> usize {
        self.batch * self.heads * self.tokens
    }
    fn check(&self, k: &str) -> GpuResult<()> {
        if self.head_dim == 0 || self.tokens == 0 || self.heads == 0 {
            return Err(shape_err(k, format!("empty attention shape {self:?}")));
        }
        if self.head_dim > MAX_HEAD_DIM {
            return Err(shape_err(
                k,
                format!(
                    "head dim {} above the {MAX_HEAD_DIM} the attention kernels handle",
                    self.head_dim
                ),
            ));
        }
        if self.batch * self.heads > 65_535 {
            return Err(shape_err(
                k,
                format!("B*H = {} > 65535", self.batch * self.heads),
            ));
        }
        i32::try_from(self.head_len() * 3)
            .map(|_| ())
            .map_err(|_| shape_err(k, format!("B*T*3D = {} > i32::MAX", self.head_len() * 3)))
    }
    fn scale(&self) -> f32 {
        (1.0 / (self.head_dim as f64).sqrt()) as f32
    }
    /// Blocks of 64 rows per (b, h), blocks of `threads`, `shared` dynamic bytes.
    fn grid(&self, threads: u32, shared: usize) -> LaunchConfig {
        LaunchConfig {
            grid: (
                self.tokens.div_ceil(CHUNK) as u32,
                (self.batch * self.heads) as u32,
                1,
            ),
            block: (threads, 1, 1),
            shared_bytes: shared as u32,
        }
    }
    /// The tensor-core instance's padded head dim.
    fn padded(&self) -> usize {
        [16, 32, 64, 128]
            .into_iter()
            .find(|&p| p >= self.head_dim)
            .unwrap_or(MAX_HEAD_DIM)
    }
    /// One product of T·T·hd multiply-adds per (b, h).
    fn product_flops(&self) -> f64 {
        2.0 * (self.batch * self.heads) as f64 * (self.tokens * self.tokens * self.head_dim) as f64
    }
}

/// Dynamic shared memory of the fp32 kernels: `tiles` of 32 x (hd + 1) floats.
fn simt_shared(s: &AttnDims, tiles: usize) -> usize {
    tiles * 32 * (s.head_dim + 1) * 4
}

/// Dynamic shared memory of the tensor-core kernels: `tiles` of 64 x (HDP + 8) bf16.
fn tc_shared(s: &AttnDims, tiles: usize) -> usize {
    tiles * CHUNK * (s.padded() + 8) * 2
}

fn tc_name(s: &AttnDims, names: [&'static str; 4]) -> &'static str {
    match s.padded() {
        16 => names[0],
        32 => names[1],
        64 => names[2],
        _ => names[3],
    }
}

/// Whether the bf16 tensors allow 16-byte tile loads: aligned bases, and every row start of
/// every (b, h) a multiple of 8 elements.
fn vectorizable(s: &AttnDims, ops: &[Operand]) -> bool {
    let d = s.heads * s.head_dim;
    s.head_dim.is_multiple_of(8)
        && (s.tokens * s.head_dim).is_multiple_of(8)
        && d.is_multiple_of(8)
        && ops.iter().all(|o| o.aligned_to(16))
}

/// out [B, T, D] and lse [B, H, T] from head-major q, k, v [B, H, T, hd] (q, k, v and out all
/// fp32 or all bf16).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    rt: &dyn Runtime,
    out: Operand,
    lse: DView,
    q: Operand,
    k: Operand,
    v: Operand,
    s: AttnDims,
) -> GpuResult<()> {
    const K: &str = "attention_forward";
    s.check(K)?;
    let p = out.precision();
    same_precision(K, p, &[("q", q), ("k", k), ("v", v)])?;
    for (name, buf) in [("out", out), ("q", q), ("k", k), ("v", v)] {
        expect_count(K, name, buf.len(), s.head_len())?;
    }
    expect_len(K, "lse", lse, s.rows())?;
    if s.batch == 0 {
        return Ok(());
    }
    let bytes = (4 * s.head_len() * out.elem_bytes() + 4 * s.rows()) as f64;
    let launch = match p {
        Precision::Fp32 => Launch::new(
            "vitk_attention_forward_f32",
            s.grid(256, simt_shared(&s, 2)),
        ),
        Precision::Bf16 => Launch::new(
            tc_name(
                &s,
                [
                    "vitk_attention_forward_tc16",
                    "vitk_attention_forward_tc32",
                    "vitk_attention_forward_tc64",
                    "vitk_attention_forward_tc128",
                ],
            ),
            s.grid(128, tc_shared(&s, 3)),
        ),
    };
    let launch = launch
        .operand(out)
        .ptr(lse)
        .operand(q)
        .operand(k)
        .operand(v)
        .int("heads", s.heads)
        .int("tokens", s.tokens)
        .int("head_dim", s.head_dim)
        .f32(s.scale());
    let launch = match p {
        Precision::Fp32 => launch,
        Precision::Bf16 => launch.flag(vectorizable(&s, &[out, q, k, v])),
    };
    launch.cost(2.0 * s.product_flops(), bytes).run(rt)
}

/// Attention probabilities for attention maps (evaluation only): probs [B, H, T, T] fp32
/// (overwritten), P = exp(scale·QKᵀ − lse) recomputed from head-major q, k [B, H, T, hd] (both
/// fp32 or both bf16) and the forward's lse [B, H, T] (kernels/attention_probs.cu).
pub fn attention_probs(
    rt: &dyn Runtime,
    probs: DView,
    lse: DView,
    q: Operand,
    k: Operand,
    s: AttnDims,
) -> GpuResult<()> {
    const K: &str = "attention_probs";
    s.check(K)?;
    let p = q.precision();
    same_precision(K, p, &[("k", k)])?;
    for (name, buf) in [("q", q), ("k", k)] {
        expect_count(K, name, buf.len(), s.head_len())?;
    }
    expect_len(K, "lse", lse, s.rows())?;
    let tt = s.tokens * s.tokens;
    expect_len(K, "probs", probs, s.batch * s.heads * tt)?;
    if s.batch == 0 {
        return Ok(());
    }
    let name = match p {
        Precision::Fp32 => "vitk_attention_probs_f32",
        Precision::Bf16 => "vitk_attention_probs_bf16",
    };
    let grid = LaunchConfig {
        grid: (
            u32::try_from(tt.div_ceil(256))
                .map_err(|_| shape_err(K, format!("T*T = {tt} too large")))?,
            (s.batch * s.heads) as u32,
            1,
        ),
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    let elems = (s.batch * s.heads * tt) as f64;
    Launch::new(name, grid)
        .ptr(probs)
        .ptr(lse)
        .operand(q)
        .operand(k)
        .int("tokens", s.tokens)
        .int("head_dim", s.head_dim)
        .f32(s.scale())
        .cost(
            elems * 2.0 * s.head_dim as f64,
            elems * 4.0 + (2 * s.head_len() * q.elem_bytes() + 4 * s.rows()) as f64,
        )
        .run(rt)
}

/// dqkv [B, T, 3D] (overwritten, token-major) from dout [B, T, D], the forward's out and lse,
/// and head-major q, k, v (all fp32 or all bf16); `rowdot` [B, H, T] is fp32 scratch.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    rt: &dyn Runtime,
    dqkv: Operand,
    rowdot: DView,
    dout: Operand,
    out: Operand,
    lse: DView,
    q: Operand,
    k: Operand,
    v: Operand,
    s: AttnDims,
) -> GpuResult<()> {
    const K: &str = "attention_backward";
    s.check(K)?;
    let p = dqkv.precision();
    same_precision(
        K,
        p,
        &[("dout", dout), ("out", out), ("q", q), ("k", k), ("v", v)],
    )?;
    for (name, buf) in [("dout", dout), ("out", out), ("q", q), ("k", k), ("v", v)] {
        expect_count(K, name, buf.len(), s.head_len())?;
    }
    expect_count(K, "dqkv", dqkv.len(), 3 * s.head_len())?;
    expect_len(K, "lse", lse, s.rows())?;
    expect_len(K, "rowdot", rowdot, s.rows())?;
    if s.batch == 0 {
        return Ok(());
    }
    let eb = dqkv.elem_bytes();
    // rowdot = Σ dout ⊙ out per row: one warp per row.
    let rowdot_name = match p {
        Precision::Fp32 => "vitk_attention_rowdot_f32",
        Precision::Bf16 => "vitk_attention_rowdot_bf16",
    };
    Launch::new(rowdot_name, LaunchConfig::for_items(s.rows() * 32, 256))
        .ptr(rowdot)
        .operand(dout)
        .operand(out)
        .int("batch", s.batch)
        .int("heads", s.heads)
        .int("tokens", s.tokens)
        .int("head_dim", s.head_dim)
        .cost(
            2.0 * s.head_len() as f64,
            (2 * s.head_len() * eb + 4 * s.rows()) as f64,
        )
        .run(rt)?;
    let vec = vectorizable(&s, &[dqkv, dout, out, q, k, v]);
    let kernels: [(&'static str, LaunchConfig, f64); 2] = match p {
        Precision::Fp32 => [
            (
                "vitk_attention_backward_kv_f32",
                s.grid(256, simt_shared(&s, 2)),
                4.0,
            ),
            (
                "vitk_attention_backward_q_f32",
                s.grid(256, simt_shared(&s, 2)),
                3.0,
            ),
        ],
        Precision::Bf16 => [
            (
                tc_name(
                    &s,
                    [
                        "vitk_attention_backward_kv_tc16",
                        "vitk_attention_backward_kv_tc32",
                        "vitk_attention_backward_kv_tc64",
                        "vitk_attention_backward_kv_tc128",
                    ],
                ),
                s.grid(128, tc_shared(&s, 4)),
                4.0,
            ),
            (
                tc_name(
                    &s,
                    [
                        "vitk_attention_backward_q_tc16",
                        "vitk_attention_backward_q_tc32",
                        "vitk_attention_backward_q_tc64",
                        "vitk_attention_backward_q_tc128",
                    ],
                ),
                s.grid(128, tc_shared(&s, 4)),
                3.0,
            ),
        ],
    };
    // dK/dV: S, dP, dV, dK (4 products); dQ: S, dP, dQ (3).
    for (name, cfg, products) in kernels {
        let launch = Launch::new(name, cfg)
            .operand(dqkv)
            .operand(dout)
            .ptr(lse)
            .ptr(rowdot)
            .operand(q)
            .operand(k)
            .operand(v)
            .int("heads", s.heads)
            .int("tokens", s.tokens)
            .int("head_dim", s.head_dim)
            .f32(s.scale());
        let launch = match p {
            Precision::Fp32 => launch,
            Precision::Bf16 => launch.flag(vec),
        };
        let bytes = (5 * s.head_len() * eb + 8 * s.rows()) as f64;
        launch.cost(products * s.product_flops(), bytes).run(rt)?;
    }
    Ok(())
}
