//! kernels/attention.cu: multi-head softmax attention over head-major q, k, v, forward and
//! backward, with the probabilities [B, H, T, T] in global memory.

use super::{expect_count, expect_len, instance, same_precision, shape_err, Operand, OperandArg};
use crate::gpu::error::GpuResult;
use crate::gpu::runtime::{DView, Launch, LaunchConfig, Runtime};

/// Shared memory a kernel may use without opting in (portable across sm_80/sm_90).
const PORTABLE_SHARED: usize = 48 * 1024;

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
    /// Elements of the probabilities: B·H·T·T.
    pub fn probs_len(&self) -> usize {
        self.batch * self.heads * self.tokens * self.tokens
    }
    /// (staged flag, dynamic shared bytes) for `mats` fp32 matrices of [T, hd + 1].
    fn staging(&self, mats: usize, allow: bool) -> (bool, u32) {
        let bytes = mats * self.tokens * (self.head_dim + 1) * 4;
        if allow && bytes <= PORTABLE_SHARED {
            (true, bytes as u32)
        } else {
            (false, 0)
        }
    }
    fn check(&self, k: &str) -> GpuResult<()> {
        if self.head_dim == 0 || self.tokens == 0 || self.heads == 0 {
            return Err(shape_err(k, format!("empty attention shape {self:?}")));
        }
        for (what, n) in [
            ("B*H*T*T", self.probs_len()),
            ("B*T*3D", self.head_len() * 3),
        ] {
            i32::try_from(n).map_err(|_| shape_err(k, format!("{what} = {n} > i32::MAX")))?;
        }
        Ok(())
    }
    fn scale(&self) -> f32 {
        (1.0 / (self.head_dim as f64).sqrt()) as f32
    }
    fn launch(&self, shared: u32) -> LaunchConfig {
        LaunchConfig {
            grid: ((self.batch * self.heads) as u32, 1, 1),
            block: (256, 1, 1),
            shared_bytes: shared,
        }
    }
    /// Q·Kᵀ and P·V: 2 products of 2·T·T·hd flops each per (b, h).
    fn flops(&self) -> f64 {
        4.0 * (self.batch * self.heads) as f64 * (self.tokens * self.tokens * self.head_dim) as f64
    }
}

/// out [B, T, D], probs [B, H, T, T] from head-major q, k, v [B, H, T, hd] (q, k, v and out
/// all fp32 or all bf16). `stage` lets K and V go through shared memory when they fit (false
/// forces the global-memory path).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    rt: &dyn Runtime,
    out: Operand,
    probs: DView,
    q: Operand,
    k: Operand,
    v: Operand,
    s: AttnDims,
    stage: bool,
) -> GpuResult<()> {
    const K: &str = "attention_forward";
    s.check(K)?;
    let p = out.precision();
    same_precision(K, p, &[("q", q), ("k", k), ("v", v)])?;
    for (name, buf) in [("out", out), ("q", q), ("k", k), ("v", v)] {
        expect_count(K, name, buf.len(), s.head_len())?;
    }
    expect_len(K, "probs", probs, s.probs_len())?;
    if s.batch == 0 {
        return Ok(());
    }
    let (staged, shared) = s.staging(2, stage);
    let name = instance(
        p,
        ["vitk_attention_forward_f32", "vitk_attention_forward_bf16"],
    );
    let bytes = 4.0 * (s.head_len() * out.elem_bytes()) as f64 + 4.0 * s.probs_len() as f64;
    Launch::new(name, s.launch(shared))
        .operand(out)
        .ptr(probs)
        .operand(q)
        .operand(k)
        .operand(v)
        .int("heads", s.heads)
        .int("tokens", s.tokens)
        .int("head_dim", s.head_dim)
        .f32(s.scale())
        .flag(staged)
        .cost(s.flops(), bytes)
        .run(rt)
}

/// dqkv [B, T, 3D] (overwritten, token-major) from dout [B, T, D], probs and head-major
/// q, k, v (all fp32 or all bf16); `ds` [B, H, T, T] is fp32 scratch.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    rt: &dyn Runtime,
    dqkv: Operand,
    ds: DView,
    dout: Operand,
    probs: DView,
    q: Operand,
    k: Operand,
    v: Operand,
    s: AttnDims,
    stage: bool,
) -> GpuResult<()> {
    const K: &str = "attention_backward";
    s.check(K)?;
    let p = dqkv.precision();
    same_precision(K, p, &[("dout", dout), ("q", q), ("k", k), ("v", v)])?;
    for (name, buf) in [("dout", dout), ("q", q), ("k", k), ("v", v)] {
        expect_count(K, name, buf.len(), s.head_len())?;
    }
    expect_count(K, "dqkv", dqkv.len(), 3 * s.head_len())?;
    expect_len(K, "probs", probs, s.probs_len())?;
    expect_len(K, "ds", ds, s.probs_len())?;
    if s.batch == 0 {
        return Ok(());
    }
    let (staged, shared) = s.staging(4, stage);
    let name = instance(
        p,
        [
            "vitk_attention_backward_f32",
            "vitk_attention_backward_bf16",
        ],
    );
    let bytes = 7.0 * (s.head_len() * dqkv.elem_bytes()) as f64 + 12.0 * s.probs_len() as f64;
    Launch::new(name, s.launch(shared))
        .operand(dqkv)
        .ptr(ds)
        .operand(dout)
        .ptr(probs)
        .operand(q)
        .operand(k)
        .operand(v)
        .int("heads", s.heads)
        .int("tokens", s.tokens)
        .int("head_dim", s.head_dim)
        .f32(s.scale())
        .flag(staged)
        .cost(2.0 * s.flops(), bytes)
        .run(rt)
}
