//! The encoder of both device models, written once: patch embedding (im2col, patch linear),
//! the optional corruption of the patch embeddings (the pre-training model's mask token),
//! tokens and the blocks up to x_L [R, D], and its backward from d x_L down to the patch
//! embedding's gradients. The classifier ([`super::GpuTrainer`]) adds pooling and its head,
//! the pre-training model ([`super::GpuPretrainer`]) the per-token norm and the decoder (as
//! the CPU engine's `forward_encoder` / `backward_encoder`).

use std::ops::Range;

use super::Acts;
use crate::gpu::error::GpuResult;
use crate::gpu::kernels::{self as k, LinearEpilogue, Operand};
use crate::gpu::runtime::{BView, DView, Runtime, View};
use crate::model::{BatchDims, ModelConfig, ParamLayout};

/// Which patch embeddings the corruption replaces, [B·N] on the device.
#[derive(Clone, Copy)]
pub(super) enum Corruption {
    /// Non-zero: the mask token (SimMIM; the CPU pixel model's `mask_tokens_*`).
    Mask(View<u8>),
    /// −1: the mask token, else the patch of the same image whose embedding the position
    /// receives (BERT-style; `substitute_*`).
    Sources(View<i32>),
}

/// The corruption of one batch's patch embeddings between the patch linear and the tokens
/// (before pos_embed is added, as SimMIM does), with its buffers.
#[derive(Clone, Copy)]
pub(super) struct Substitution {
    pub(super) corruption: Corruption,
    /// The mask token's place in the parameters [D].
    pub(super) token: (usize, usize),
    /// [B·N, D] the corrupted embeddings (forward), then their gradient (backward).
    pub(super) embed: DView,
    /// The mask token gradient's partial sums (`mask_tokens_backward_scratch_len(B·N, D)`).
    pub(super) scratch: DView,
}

impl Substitution {
    pub(super) fn new(
        corruption: Corruption,
        token: &Range<usize>,
        embed: DView,
        scratch: DView,
    ) -> Self {
        Substitution {
            corruption,
            token: (token.start, token.len()),
            embed,
            scratch,
        }
    }
}

/// Stochastic depth of one training step on the device: the per-sample scales [L, 2, B]
/// (block, [attention, MLP], sample; staged with the step's inputs, so that each graph
/// replay reads its own step's) and the blocks' rates: a block of rate 0 keeps its fused
/// residual adds (bitwise the step without drop-path).
#[derive(Clone, Copy)]
pub(super) struct DropScales<'a> {
    pub(super) scales: DView,
    pub(super) rates: &'a [f64],
}

impl DropScales<'_> {
    /// The scales [B] of `branch` (0 attention, 1 MLP) of block `l`, `None` when not dropped.
    fn of(drop: Option<&Self>, l: usize, branch: usize, batch: usize) -> Option<DView> {
        drop.filter(|d| d.rates[l] > 0.0)
            .map(|d| d.scales.slice((2 * l + branch) * batch, batch))
    }
}

/// The encoder's parameters, gradients and weights as the kernels see them. `layout` is the
/// classification layout of the model: its encoder tensors lie at the same offsets in the
/// pre-training layout, and only those are read here.
pub(super) struct Net<'a> {
    pub(super) rt: &'a dyn Runtime,
    pub(super) cfg: &'a ModelConfig,
    pub(super) layout: &'a ParamLayout,
    pub(super) params: DView,
    pub(super) grads: DView,
    /// The bf16 copies of `params` (bf16 path only).
    pub(super) low: Option<BView>,
}

impl Net<'_> {
    /// The fp32 parameter view of a layout range (biases, norms, embeddings).
    pub(super) fn p(&self, r: &Range<usize>) -> DView {
        self.params.slice(r.start, r.len())
    }
    /// A weight as a matmul operand: fp32, or its bf16 copy on the bf16 path.
    pub(super) fn w(&self, r: &Range<usize>) -> Operand {
        match self.low {
            None => Operand::F32(self.p(r)),
            Some(low) => Operand::Bf16(low.slice(r.start, r.len())),
        }
    }
    pub(super) fn g(&self, r: &Range<usize>) -> DView {
        self.grads.slice(r.start, r.len())
    }

    /// Weight and bias gradients of one linear layer: dW += dyᵀ x, db += Σ dy.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn dw(
        &self,
        a: &Acts,
        wr: &Range<usize>,
        br: &Range<usize>,
        dy: Operand,
        x: Operand,
        rows: usize,
        i: usize,
        o: usize,
    ) -> GpuResult<()> {
        k::linear_backward_dw(
            self.rt,
            self.g(wr),
            Some(self.g(br)),
            a.splitk,
            dy,
            x,
            rows,
            i,
            o,
        )
    }

    /// out [R, D] = x + s_b · (input [R, I] · Wᵀ + b): the matmul's residual epilogue, or for
    /// a dropped branch (`scale` [B]) the matmul into `a.dln` [R, D] (free in forward), then
    /// the per-sample add.
    #[allow(clippy::too_many_arguments)]
    fn residual_linear(
        &self,
        a: &Acts,
        out: DView,
        x: DView,
        input: Operand,
        (w, b): (&Range<usize>, &Range<usize>),
        scale: Option<DView>,
        (rows, i, o, batch): (usize, usize, usize, usize),
    ) -> GpuResult<()> {
        let (weight, bias) = (self.w(w), self.p(b));
        match scale {
            None => k::linear_forward(
                self.rt,
                Operand::F32(out),
                input,
                weight,
                bias,
                LinearEpilogue::Residual(x),
                rows,
                i,
                o,
            ),
            Some(scale) => {
                let branch = a.dln;
                let (rt, e) = (self.rt, LinearEpilogue::Bias);
                k::linear_forward(rt, Operand::F32(branch), input, weight, bias, e, rows, i, o)?;
                k::drop_path_add(rt, out, x, branch, scale, batch)
            }
        }
    }

    /// The dY [R, D] of a branch's last matmul: the residual stream's gradient, or s_b · dx
    /// in the step's precision for a dropped branch (`scale` [B]), in the front of `a.dqkv`
    /// (free until attention's backward).
    fn branch_dy(&self, a: &Acts, scale: Option<DView>, batch: usize) -> GpuResult<Operand> {
        match scale {
            None => Ok(a.dy()),
            Some(scale) => {
                let dy = a.dqkv.slice(0, a.dx.len());
                k::drop_path_backward(self.rt, dy, a.dx, scale, batch)?;
                Ok(dy)
            }
        }
    }

    /// Enqueues the encoder's forward pass of the `z.b` images already in `a.images`, up to
    /// `a.x_last` [R, D], corrupting the patch embeddings as `subst` says and dropping
    /// residual branches as `drop` says (training steps of the classifier only).
    pub(super) fn forward_encoder(
        &self,
        z: &BatchDims,
        a: &Acts,
        subst: Option<&Substitution>,
        drop: Option<&DropScales>,
    ) -> GpuResult<()> {
        let rt = self.rt;
        let lay = self.layout;
        let cfg = self.cfg;
        let (r, d, m, batch) = (z.rows(), z.d, z.m, z.b);
        k::patch_embed_im2col(
            rt,
            a.patches,
            a.images,
            batch,
            cfg.in_chans,
            cfg.image_size,
            cfg.patch_size,
        )?;
        let np = batch * z.n;
        k::linear_forward(
            rt,
            Operand::F32(a.patch_out),
            a.patches,
            self.w(&lay.patch_w),
            self.p(&lay.patch_b),
            LinearEpilogue::Bias,
            np,
            z.cpp,
            d,
        )?;
        let embed = match subst {
            None => a.patch_out,
            Some(s) => {
                let token = self.params.slice(s.token.0, s.token.1);
                match s.corruption {
                    Corruption::Mask(mask) => {
                        k::mask_tokens_forward(rt, s.embed, a.patch_out, mask, token)?
                    }
                    Corruption::Sources(src) => {
                        k::substitute_forward(rt, s.embed, a.patch_out, src, token, z.n)?
                    }
                }
                s.embed
            }
        };
        let x0 = a.blocks.first().map(|b| b.x).unwrap_or(a.x_last);
        k::tokens_forward(
            rt,
            x0,
            embed,
            self.p(&lay.pos_embed),
            lay.cls_token.as_ref().map(|c| self.p(c)),
            batch,
            d,
        )?;
        let hl = z.attn_dims().head_len();
        for (l, (blk, w)) in a.blocks.iter().zip(&lay.blocks).enumerate() {
            let x_next = a.blocks.get(l + 1).map(|b| b.x).unwrap_or(a.x_last);
            k::layernorm_forward(
                rt,
                blk.ln1,
                blk.ln1_mean,
                blk.ln1_rstd,
                blk.x,
                self.p(&w.norm1_w),
                self.p(&w.norm1_b),
                d,
            )?;
            k::qkv_forward(
                rt,
                blk.qkv,
                blk.ln1,
                self.w(&w.qkv_w),
                self.p(&w.qkv_b),
                batch,
                z.t,
                z.h,
                d,
            )?;
            k::attention_forward(
                rt,
                blk.attn,
                blk.lse,
                blk.qkv.slice(0, hl),
                blk.qkv.slice(hl, hl),
                blk.qkv.slice(2 * hl, hl),
                z.attn_dims(),
            )?;
            // x_mid = x + s_b · proj(attn)
            self.residual_linear(
                a,
                blk.x_mid,
                blk.x,
                blk.attn,
                (&w.proj_w, &w.proj_b),
                DropScales::of(drop, l, 0, batch),
                (r, d, d, batch),
            )?;
            k::layernorm_forward(
                rt,
                blk.ln2,
                blk.ln2_mean,
                blk.ln2_rstd,
                blk.x_mid,
                self.p(&w.norm2_w),
                self.p(&w.norm2_b),
                d,
            )?;
            k::linear_forward(
                rt,
                blk.gelu,
                blk.ln2,
                self.w(&w.fc1_w),
                self.p(&w.fc1_b),
                LinearEpilogue::Gelu { pre: blk.fc1 },
                r,
                d,
                m,
            )?;
            // x_next = x_mid + s_b · fc2(gelu)
            self.residual_linear(
                a,
                x_next,
                blk.x_mid,
                blk.gelu,
                (&w.fc2_w, &w.fc2_b),
                DropScales::of(drop, l, 1, batch),
                (r, m, d, batch),
            )?;
        }
        Ok(())
    }

    /// Backward of [`Self::forward_encoder`] from d x_L in `a.dx` (and its bf16 copy in
    /// `a.dx_low` on the bf16 path; consumed): the blocks in reverse, the tokens, the
    /// corruption (`subst`) and the patch linear, with the forward pass's `drop`. Adds to the
    /// encoder's gradients (and the mask token's) only.
    pub(super) fn backward_encoder(
        &self,
        z: &BatchDims,
        a: &Acts,
        subst: Option<&Substitution>,
        drop: Option<&DropScales>,
    ) -> GpuResult<()> {
        let rt = self.rt;
        let lay = self.layout;
        let (r, d, m, b) = (z.rows(), z.d, z.m, z.b);
        let hl = z.attn_dims().head_len();
        for (l, (blk, w)) in a.blocks.iter().zip(&lay.blocks).enumerate().rev() {
            // fc2: its dX times gelu'(fc1) is fc1's pre-activation gradient; dY = s_b · dx
            let dy = self.branch_dy(a, DropScales::of(drop, l, 1, b), b)?;
            k::linear_backward_dx(rt, a.dfc1, dy, self.w(&w.fc2_w), Some(blk.fc1), r, m, d)?;
            self.dw(a, &w.fc2_w, &w.fc2_b, dy, blk.gelu, r, m, d)?;
            k::linear_backward_dx(
                rt,
                Operand::F32(a.dln),
                a.dfc1,
                self.w(&w.fc1_w),
                None,
                r,
                d,
                m,
            )?;
            self.dw(a, &w.fc1_w, &w.fc1_b, a.dfc1, blk.ln2, r, d, m)?;
            k::layernorm_backward(
                rt,
                a.dx,
                a.dx_low,
                self.g(&w.norm2_w),
                self.g(&w.norm2_b),
                a.ln_scratch,
                a.dln,
                blk.x_mid,
                blk.ln2_mean,
                blk.ln2_rstd,
                self.p(&w.norm2_w),
                d,
            )?;
            // proj: dY = s_b · dx
            let dy = self.branch_dy(a, DropScales::of(drop, l, 0, b), b)?;
            k::linear_backward_dx(rt, a.dattn, dy, self.w(&w.proj_w), None, r, d, d)?;
            self.dw(a, &w.proj_w, &w.proj_b, dy, blk.attn, r, d, d)?;
            k::attention_backward(
                rt,
                a.dqkv,
                a.rowdot,
                a.dattn,
                blk.attn,
                blk.lse,
                blk.qkv.slice(0, hl),
                blk.qkv.slice(hl, hl),
                blk.qkv.slice(2 * hl, hl),
                z.attn_dims(),
            )?;
            k::linear_backward_dx(
                rt,
                Operand::F32(a.dln),
                a.dqkv,
                self.w(&w.qkv_w),
                None,
                r,
                d,
                3 * d,
            )?;
            self.dw(a, &w.qkv_w, &w.qkv_b, a.dqkv, blk.ln1, r, d, 3 * d)?;
            k::layernorm_backward(
                rt,
                a.dx,
                a.dx_low,
                self.g(&w.norm1_w),
                self.g(&w.norm1_b),
                a.ln_scratch,
                a.dln,
                blk.x,
                blk.ln1_mean,
                blk.ln1_rstd,
                self.p(&w.norm1_w),
                d,
            )?;
        }
        // Without corruption the tokens' patch gradient is the patch matmul's dY itself;
        // with it, an fp32 gradient of the corrupted embeddings goes back through it first.
        let dembed = subst.map_or(a.dpatch, |s| Operand::F32(s.embed));
        k::tokens_backward(
            rt,
            dembed,
            self.g(&lay.pos_embed),
            lay.cls_token.as_ref().map(|c| self.g(c)),
            a.dx,
            b,
            d,
        )?;
        if let Some(s) = subst {
            let dtoken = self.grads.slice(s.token.0, s.token.1);
            match s.corruption {
                Corruption::Mask(mask) => {
                    k::mask_tokens_backward(rt, a.dpatch, dtoken, s.scratch, s.embed, mask)?
                }
                Corruption::Sources(src) => {
                    k::substitute_backward(rt, a.dpatch, dtoken, s.scratch, s.embed, src, z.n)?
                }
            }
        }
        self.dw(
            a,
            &lay.patch_w,
            &lay.patch_b,
            a.dpatch,
            a.patches,
            b * z.n,
            z.cpp,
            d,
        )
    }
}
