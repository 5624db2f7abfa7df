//! The CPU engine: the whole ViT forward and backward over flat parameter, gradient and
//! activation buffers, generic over f32 (training) and f64 (gradient checks).

use super::attention::{attention_backward, attention_forward, AttnShape};
use super::carve::{two_mut, Carve};
use super::drop_path::{drop_path_add, drop_path_backward, step_scales};
use super::gelu::{gelu_backward, gelu_forward};
use super::layernorm::{layernorm_backward, layernorm_forward};
use super::linear::{linear_backward, linear_forward, linear_residual_forward};
use super::loss::{cross_entropy, LossStats};
use super::mim::{
    mask_tokens_backward, mask_tokens_forward, substitute_backward, substitute_forward,
};
use super::patch_embed::im2col;
use super::pooling::{pool_backward, pool_forward};
use super::soft_loss::soft_target_cross_entropy;
use super::tokens::{tokens_backward, tokens_forward};
use super::Float;
use crate::model::drop_path::StepDrops;
use crate::model::{BatchDims, ConfigError, ModelConfig, ParamLayout};
use num_traits::AsPrimitive;
use std::ops::{Add, Mul};

/// Arithmetic the buffer sizes are computed in: `usize` to carve the buffers, `f64` to
/// estimate them for any model without overflow.
trait Size: Copy + 'static + Add<Output = Self> + Mul<Output = Self> {}
impl<N: Copy + 'static + Add<Output = N> + Mul<Output = N>> Size for N {}

/// What the patch embeddings [B, N, D] are replaced with before pos_embed is added (the
/// pre-training models; the classifier passes none). `T` is the mask token: its values [D] in
/// the forward pass, its range in the gradient buffer in the backward pass.
pub(crate) enum Substitution<'a, T> {
    /// SimMIM: mask [B, N] true → the token, else the patch's own embedding.
    MaskToken(&'a [bool], T),
    /// The ViT paper's BERT-style corruption: sources [B, N], −1 → the token, else the
    /// embedding of that patch of the same image (see `mim::substitute_forward`).
    Sources(&'a [i32], T),
}

/// Buffer sizes of this engine for a batch.
impl BatchDims {
    /// (B, N, T, D, M, H, K, C·P·P, L) in `N`.
    fn sized<N: Size>(&self) -> [N; 9]
    where
        usize: AsPrimitive<N>,
    {
        [
            self.b, self.n, self.t, self.d, self.m, self.h, self.k, self.cpp, self.depth,
        ]
        .map(|v| v.as_())
    }
    fn embed_len<N: Size>(&self) -> N
    where
        usize: AsPrimitive<N>,
    {
        let [b, n, _, d, _, _, _, cpp, _] = self.sized::<N>();
        b * n * (cpp + d)
    }
    fn block_len<N: Size>(&self) -> N
    where
        usize: AsPrimitive<N>,
    {
        let [b, _, t, d, m, h, _, _, _] = self.sized::<N>();
        let r = b * t;
        let [three, four, five]: [N; 3] = [3usize, 4, 5].map(|v| v.as_());
        r * d * five + r * four + r * three * d + b * h * t * t + r * m
    }
    fn head_len<N: Size>(&self) -> N
    where
        usize: AsPrimitive<N>,
    {
        let [b, _, t, d, _, _, k, _, _] = self.sized::<N>();
        let two: N = 2usize.as_();
        b * t * d + two * b * d + two * b + two * b * k
    }
    fn acts_len<N: Size>(&self) -> N
    where
        usize: AsPrimitive<N>,
    {
        let depth: N = self.depth.as_();
        self.embed_len::<N>() + depth * self.block_len::<N>() + self.head_len::<N>()
    }
    fn scratch_len<N: Size>(&self) -> N
    where
        usize: AsPrimitive<N>,
    {
        let [b, n, t, d, m, _, _, _, _] = self.sized::<N>();
        let r = b * t;
        let [two, three]: [N; 2] = [2usize, 3].map(|v| v.as_());
        r * d * three + r * three * d + two * r * m + two * b * d + b * n * d
    }
    fn attn_shape(&self) -> AttnShape {
        AttnShape {
            batch: self.b,
            tokens: self.t,
            heads: self.h,
            head_dim: self.d / self.h,
        }
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// Patch embedding activations.
struct EmbedActs<S> {
    patches: S,   // [B·N, C·P·P]
    patch_out: S, // [B·N, D]
}

/// Activations of one block saved for backward.
struct BlockActs<S> {
    x: S,        // [R, D] block input (residual stream)
    ln1: S,      // [R, D]
    ln1_mean: S, // [R]
    ln1_rstd: S, // [R]
    qkv: S,      // [R, 3D]
    probs: S,    // [B, H, T, T]
    attn: S,     // [R, D] heads concatenated, input of proj
    x_mid: S,    // [R, D] x + proj(attn)
    ln2: S,      // [R, D]
    ln2_mean: S, // [R]
    ln2_rstd: S, // [R]
    fc1: S,      // [R, M] pre-activation; gelu(fc1) is recomputed in backward (saves R·M per block)
}

/// Activations after the last block.
struct HeadActs<S> {
    x: S,       // [R, D] output of the last block
    pooled: S,  // [B, D]
    normed: S,  // [B, D] after norm (cls) or fc_norm (mean)
    mean: S,    // [B]
    rstd: S,    // [B]
    logits: S,  // [B, K]
    dlogits: S, // [B, K]
}

/// Scratch buffers: the GELU output in forward, gradients in backward.
struct Scratch<S> {
    gelu: S,    // [R, M] gelu(fc1) of the current block (forward, and recomputed in backward)
    dx: S,      // [R, D] residual stream gradient
    dln: S,     // [R, D] gradient at a LayerNorm output
    dattn: S,   // [R, D]
    dqkv: S,    // [R, 3D]
    dgelu: S,   // [R, M]
    dpooled: S, // [B, D]
    dnormed: S, // [B, D]
    dpatch: S,  // [B·N, D]
}

impl<S: Carve> EmbedActs<S> {
    fn carve(buf: &mut S, z: &BatchDims) -> Self {
        let np = z.b * z.n;
        Self {
            patches: buf.take_front(np * z.cpp),
            patch_out: buf.take_front(np * z.d),
        }
    }
}

impl<S: Carve> BlockActs<S> {
    fn carve(buf: &mut S, z: &BatchDims) -> Self {
        let (r, d) = (z.rows(), z.d);
        Self {
            x: buf.take_front(r * d),
            ln1: buf.take_front(r * d),
            ln1_mean: buf.take_front(r),
            ln1_rstd: buf.take_front(r),
            qkv: buf.take_front(r * 3 * d),
            probs: buf.take_front(z.b * z.h * z.t * z.t),
            attn: buf.take_front(r * d),
            x_mid: buf.take_front(r * d),
            ln2: buf.take_front(r * d),
            ln2_mean: buf.take_front(r),
            ln2_rstd: buf.take_front(r),
            fc1: buf.take_front(r * z.m),
        }
    }
}

impl<S: Carve> HeadActs<S> {
    fn carve(buf: &mut S, z: &BatchDims) -> Self {
        let (b, d) = (z.b, z.d);
        Self {
            x: buf.take_front(z.rows() * d),
            pooled: buf.take_front(b * d),
            normed: buf.take_front(b * d),
            mean: buf.take_front(b),
            rstd: buf.take_front(b),
            logits: buf.take_front(b * z.k),
            dlogits: buf.take_front(b * z.k),
        }
    }
}

impl<S: Carve> Scratch<S> {
    fn carve(buf: &mut S, z: &BatchDims) -> Self {
        let (r, d) = (z.rows(), z.d);
        Self {
            gelu: buf.take_front(r * z.m),
            dx: buf.take_front(r * d),
            dln: buf.take_front(r * d),
            dattn: buf.take_front(r * d),
            dqkv: buf.take_front(r * 3 * d),
            dgelu: buf.take_front(r * z.m),
            dpooled: buf.take_front(z.b * d),
            dnormed: buf.take_front(z.b * d),
            dpatch: buf.take_front(z.b * z.n * d),
        }
    }
}

/// All activations of one forward pass, as views.
struct Acts<S> {
    embed: EmbedActs<S>,
    blocks: Vec<BlockActs<S>>,
    head: HeadActs<S>,
}

impl<S: Carve> Acts<S> {
    fn carve(mut buf: S, z: &BatchDims) -> Self {
        let embed = EmbedActs::carve(&mut buf, z);
        let blocks = (0..z.depth)
            .map(|_| BlockActs::carve(&mut buf, z))
            .collect();
        let head = HeadActs::carve(&mut buf, z);
        debug_assert_eq!(
            buf.remaining(),
            0,
            "activation layout and BatchDims::acts_len disagree"
        );
        Self {
            embed,
            blocks,
            head,
        }
    }
}

/// A ViT on the CPU: owns activation and scratch buffers sized for `max_batch` images;
/// parameters and gradients are flat buffers laid out by [`ParamLayout`], owned by the caller.
pub struct CpuEngine<F: Float> {
    cfg: ModelConfig,
    layout: ParamLayout,
    max_batch: usize,
    /// Batch size of the last forward pass (0 before the first).
    batch: usize,
    acts: Vec<F>,
    scratch: Vec<F>,
    /// Stochastic depth of the last forward pass, for its backward: per block, the scales
    /// [B] of its [attention, MLP] branches, `None` where not dropped (empty: no drop-path).
    drop: Vec<Option<[Vec<F>; 2]>>,
}

impl<F: Float> CpuEngine<F> {
    /// An engine for `cfg` that runs batches of up to `max_batch` images. Buffers too large
    /// to allocate are an error, never an abort.
    pub fn new(cfg: &ModelConfig, max_batch: usize) -> Result<Self, ConfigError> {
        cfg.validate()?;
        if max_batch == 0 {
            return Err(ConfigError("batch size is 0, expected at least 1".into()));
        }
        let elems = Self::buffer_elems(cfg, max_batch);
        let bytes = elems * std::mem::size_of::<F>() as f64;
        let too_big = || {
            ConfigError(format!(
                "activations for batch {max_batch} need {:.1} GiB, which cannot be allocated (try a smaller batch or model)",
                bytes / GIB
            ))
        };
        // Past 2^52 elements the usize sizes below could overflow; no machine has that much.
        if elems > (1u64 << 52) as f64 {
            return Err(too_big());
        }
        let z = BatchDims::new(cfg, max_batch);
        let zeroed = |n: usize| -> Result<Vec<F>, ConfigError> {
            let mut v = Vec::new();
            v.try_reserve_exact(n).map_err(|_| too_big())?;
            v.resize(n, F::zero());
            Ok(v)
        };
        Ok(Self {
            cfg: cfg.clone(),
            layout: ParamLayout::new(cfg),
            max_batch,
            batch: 0,
            acts: zeroed(z.acts_len())?,
            scratch: zeroed(z.scratch_len())?,
            drop: Vec::new(),
        })
    }

    /// Elements of the activation and scratch buffers [`Self::new`] allocates for `cfg` and
    /// `max_batch` (in f64: no overflow for any model, for memory estimates).
    pub fn buffer_elems(cfg: &ModelConfig, max_batch: usize) -> f64 {
        let z = BatchDims::new(cfg, max_batch);
        z.acts_len::<f64>() + z.scratch_len::<f64>()
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Forward pass of `images` [B, C, S_h, S_w] (normalised) with `params`; keeps the
    /// activations for [`Self::backward`]. B = images.len() / (C·S_h·S_w) ≤ max_batch.
    pub fn forward(&mut self, params: &[F], images: &[F]) {
        self.forward_dropping(params, images, None);
    }

    /// [`Self::forward`] of a training step with stochastic depth: the branches of each block
    /// dropped per sample as `drops` says (its batch that of `images`); its backward uses
    /// the same scales. `None`: nothing dropped (evaluation).
    pub fn forward_dropping(&mut self, params: &[F], images: &[F], drops: Option<&StepDrops>) {
        assert_eq!(params.len(), self.layout.len, "forward: parameter buffer");
        self.forward_encoder(params, images, None, drops);
        self.forward_head(params);
    }

    /// The encoder's part of [`Self::forward`]: patch embedding, optionally SimMIM's mask-token
    /// substitution, tokens and the blocks, up to x_L [R, D] (see [`Self::encoder_output`]).
    /// `masking`: the patch embeddings' [`Substitution`] by the mask token [D] (and, for
    /// sources, other patches), before pos_embed is added. Reads only the encoder's tensors of `params`
    /// (those of [`ParamLayout`] before `head.*`, at the same offsets), so a longer buffer
    /// whose prefix is laid out the same way (the pre-training layout) may be passed.
    pub(crate) fn forward_encoder(
        &mut self,
        params: &[F],
        images: &[F],
        masking: Option<Substitution<'_, &[F]>>,
        drops: Option<&StepDrops>,
    ) {
        let cfg = &self.cfg;
        let lay = &self.layout;
        assert!(
            params.len() >= lay.head_w.start,
            "forward: parameter buffer"
        );
        let image_len = cfg.image_len();
        assert_eq!(images.len() % image_len, 0, "forward: images");
        let batch = images.len() / image_len;
        assert!(
            batch >= 1 && batch <= self.max_batch,
            "forward: batch {batch} > {}",
            self.max_batch
        );
        self.batch = batch;
        self.drop = drops
            .map(|dr| {
                assert!(
                    dr.keep.len() == cfg.depth
                        && dr.keep.iter().all(|k| k.iter().all(|k| k.len() == batch)),
                    "forward: drop-path flags for another model or batch"
                );
                step_scales(dr)
            })
            .unwrap_or_default();
        let z = BatchDims::new(cfg, batch);
        let (r, d, m) = (z.rows(), z.d, z.m);
        let p = |range: &std::ops::Range<usize>| &params[range.clone()];

        let mut a = Acts::carve(&mut self.acts[..z.acts_len::<usize>()], &z);
        let s = Scratch::carve(&mut &mut self.scratch[..z.scratch_len::<usize>()], &z);
        im2col(
            a.embed.patches,
            images,
            batch,
            cfg.in_chans,
            cfg.image_size,
            cfg.patch_size,
        );
        let np = batch * z.n;
        linear_forward(
            a.embed.patch_out,
            a.embed.patches,
            p(&lay.patch_w),
            Some(p(&lay.patch_b)),
            np,
            z.cpp,
            d,
        );
        // With masking, the substituted embeddings [B·N, D] live in dpatch (free in forward).
        let embeddings: &[F] = match masking {
            Some(Substitution::MaskToken(mask, token)) => {
                assert_eq!(mask.len(), np, "forward: mask [B, N]");
                mask_tokens_forward(s.dpatch, a.embed.patch_out, mask, token);
                s.dpatch
            }
            Some(Substitution::Sources(src, token)) => {
                assert_eq!(src.len(), np, "forward: sources [B, N]");
                substitute_forward(s.dpatch, a.embed.patch_out, src, z.n, token);
                s.dpatch
            }
            None => a.embed.patch_out,
        };
        // The residual stream x_l lives at the start of block l's views (x_L in the head's).
        let mut stream: Vec<&mut [F]> = Vec::with_capacity(z.depth + 1);
        let mut blocks = Vec::with_capacity(z.depth);
        for blk in a.blocks.iter_mut() {
            stream.push(std::mem::take(&mut blk.x));
            blocks.push(blk);
        }
        stream.push(std::mem::take(&mut a.head.x));
        tokens_forward(
            stream[0],
            embeddings,
            p(&lay.pos_embed),
            lay.cls_token.as_ref().map(p),
            d,
        );
        for (l, (blk, w)) in blocks.into_iter().zip(&lay.blocks).enumerate() {
            let (cur, next) = stream.split_at_mut(l + 1);
            let x: &[F] = cur[l];
            let x_next: &mut [F] = next[0];
            layernorm_forward(
                blk.ln1,
                blk.ln1_mean,
                blk.ln1_rstd,
                x,
                p(&w.norm1_w),
                p(&w.norm1_b),
                d,
            );
            linear_forward(
                blk.qkv,
                blk.ln1,
                p(&w.qkv_w),
                Some(p(&w.qkv_b)),
                r,
                d,
                3 * d,
            );
            attention_forward(blk.attn, blk.probs, blk.qkv, z.attn_shape());
            // x_mid = x + s_b · proj(attn); dropped through dattn [R, D] (free in forward),
            // else the residual add fused into the matmul.
            let drop = self.drop.get(l).and_then(Option::as_ref);
            residual_branch(
                blk.x_mid,
                x,
                s.dattn,
                drop.map(|s| &s[0][..]),
                |out| linear_forward(out, blk.attn, p(&w.proj_w), Some(p(&w.proj_b)), r, d, d),
                |out| {
                    linear_residual_forward(out, x, blk.attn, p(&w.proj_w), p(&w.proj_b), r, d, d)
                },
            );
            layernorm_forward(
                blk.ln2,
                blk.ln2_mean,
                blk.ln2_rstd,
                blk.x_mid,
                p(&w.norm2_w),
                p(&w.norm2_b),
                d,
            );
            linear_forward(blk.fc1, blk.ln2, p(&w.fc1_w), Some(p(&w.fc1_b)), r, d, m);
            gelu_forward(s.gelu, blk.fc1);
            // x_next = x_mid + s_b · fc2(gelu)
            let gelu: &[F] = s.gelu;
            residual_branch(
                x_next,
                blk.x_mid,
                s.dattn,
                drop.map(|s| &s[1][..]),
                |out| linear_forward(out, gelu, p(&w.fc2_w), Some(p(&w.fc2_b)), r, m, d),
                |out| {
                    linear_residual_forward(out, blk.x_mid, gelu, p(&w.fc2_w), p(&w.fc2_b), r, m, d)
                },
            );
        }
    }

    /// The head's part of [`Self::forward`] after [`Self::forward_encoder`]: pooling, the
    /// head norm and the logits.
    fn forward_head(&mut self, params: &[F]) {
        let cfg = &self.cfg;
        let lay = &self.layout;
        let z = BatchDims::new(cfg, self.batch);
        let d = z.d;
        let p = |range: &std::ops::Range<usize>| &params[range.clone()];
        let a = Acts::carve(&mut self.acts[..z.acts_len::<usize>()], &z);
        let h = a.head;
        pool_forward(h.pooled, h.x, z.t, d, cfg.pool);
        layernorm_forward(
            h.normed,
            h.mean,
            h.rstd,
            h.pooled,
            p(&lay.head_norm_w),
            p(&lay.head_norm_b),
            d,
        );
        linear_forward(
            h.logits,
            h.normed,
            p(&lay.head_w),
            Some(p(&lay.head_b)),
            self.batch,
            d,
            z.k,
        );
    }

    /// Batch size of the last forward pass (0 before the first).
    pub(crate) fn batch(&self) -> usize {
        self.batch
    }

    /// x_L [R, D]: the last block's output of the last forward pass (before any final norm).
    pub(crate) fn encoder_output(&self) -> &[F] {
        let z = BatchDims::new(&self.cfg, self.batch);
        let a = Acts::carve(&self.acts[..z.acts_len::<usize>()], &z);
        a.head.x
    }

    /// d x_L [R, D], the scratch view [`Self::backward_encoder`] reads its incoming gradient
    /// from: the caller overwrites it between the forward and the backward pass.
    pub(crate) fn encoder_output_grad(&mut self) -> &mut [F] {
        let z = BatchDims::new(&self.cfg, self.batch);
        let mut buf: &mut [F] = &mut self.scratch[..z.scratch_len::<usize>()];
        Scratch::carve(&mut buf, &z).dx
    }

    /// Logits [B, K] of the last forward pass.
    pub fn logits(&self) -> &[F] {
        let z = BatchDims::new(&self.cfg, self.batch);
        let a = Acts::carve(&self.acts[..z.acts_len::<usize>()], &z);
        a.head.logits
    }

    /// Attention probabilities of the last forward pass, [L, B, H, T, T]: the softmax of
    /// each block, as saved for backward, concatenated block after block.
    pub fn attention_probs(&self) -> Vec<F> {
        let z = BatchDims::new(&self.cfg, self.batch);
        let a = Acts::carve(&self.acts[..z.acts_len::<usize>()], &z);
        let mut out = Vec::with_capacity(z.depth * z.b * z.h * z.t * z.t);
        for blk in &a.blocks {
            out.extend_from_slice(blk.probs); // [B, H, T, T]
        }
        out
    }

    /// Loss of the last forward pass against `labels` [B]; also prepares the gradient of the
    /// loss for [`Self::backward`].
    pub fn loss(&mut self, labels: &[u32], smoothing: f64) -> LossStats {
        let z = BatchDims::new(&self.cfg, self.batch);
        assert_eq!(labels.len(), self.batch, "loss: labels");
        let a = Acts::carve(&mut self.acts[..z.acts_len::<usize>()], &z);
        cross_entropy(a.head.logits, labels, z.k, smoothing, Some(a.head.dlogits))
    }

    /// [`Self::loss`] against soft targets [B, K] (mixup/CutMix, smoothing folded in): timm's
    /// `SoftTargetCrossEntropy`; a row counts as correct when its arg-max is its dominant target.
    pub fn soft_loss(&mut self, targets: &[F]) -> LossStats {
        let z = BatchDims::new(&self.cfg, self.batch);
        assert_eq!(targets.len(), self.batch * z.k, "soft_loss: targets");
        let a = Acts::carve(&mut self.acts[..z.acts_len::<usize>()], &z);
        soft_target_cross_entropy(a.head.logits, targets, z.k, Some(a.head.dlogits))
    }

    /// Backward pass of the last forward pass and [`Self::loss`]: adds the gradient of the
    /// mean loss to `grads` (same layout as the parameters; zero it first for a fresh step).
    pub fn backward(&mut self, params: &[F], grads: &mut [F]) {
        self.backward_head(params, grads);
        self.backward_backbone(params, grads);
    }

    /// The head's part of [`Self::backward`]: adds the gradients of `head.*` and of its norm
    /// (`norm.*` or `fc_norm.*`) and stops there; every other gradient is left as it is. All
    /// a frozen backbone needs (`--freeze-backbone`).
    pub fn backward_head(&mut self, params: &[F], grads: &mut [F]) {
        let lay = &self.layout;
        assert_eq!(params.len(), lay.len, "backward: parameter buffer");
        assert_eq!(grads.len(), lay.len, "backward: gradient buffer");
        assert!(self.batch > 0, "backward before forward");
        let z = BatchDims::new(&self.cfg, self.batch);
        let d = z.d;
        let p = |range: &std::ops::Range<usize>| &params[range.clone()];
        let a = Acts::carve(&self.acts[..z.acts_len::<usize>()], &z);
        let s = Scratch::carve(&mut &mut self.scratch[..z.scratch_len::<usize>()], &z);

        let h = &a.head;
        let (gw, gb) = two_mut(grads, lay.head_w.clone(), lay.head_b.clone());
        linear_backward(
            Some(&mut *s.dnormed),
            false,
            gw,
            Some(gb),
            h.dlogits,
            h.normed,
            p(&lay.head_w),
            z.b,
            d,
            z.k,
        );
        s.dpooled.fill(F::zero());
        let (gw, gb) = two_mut(grads, lay.head_norm_w.clone(), lay.head_norm_b.clone());
        layernorm_backward(
            s.dpooled,
            gw,
            gb,
            s.dnormed,
            h.pooled,
            h.mean,
            h.rstd,
            p(&lay.head_norm_w),
            d,
        );
    }

    /// The rest of [`Self::backward`] after [`Self::backward_head`] (whose d pooled it
    /// reads from the scratch): pooling, then [`Self::backward_encoder`].
    fn backward_backbone(&mut self, params: &[F], grads: &mut [F]) {
        let z = BatchDims::new(&self.cfg, self.batch);
        let s = Scratch::carve(&mut &mut self.scratch[..z.scratch_len::<usize>()], &z);
        pool_backward(s.dx, s.dpooled, z.t, z.d, self.cfg.pool);
        self.backward_encoder(params, grads, None);
    }

    /// Backward of [`Self::forward_encoder`] from d x_L [R, D] in the scratch (see
    /// [`Self::encoder_output_grad`]; consumed): the blocks in reverse, the tokens, the
    /// substitution (`masking`, the same as in the forward pass with the mask token's range in
    /// `grads`, which is added to) and the patch embedding. Adds to the encoder's gradients only.
    pub(crate) fn backward_encoder(
        &mut self,
        params: &[F],
        grads: &mut [F],
        masking: Option<Substitution<'_, std::ops::Range<usize>>>,
    ) {
        let lay = &self.layout;
        assert!(
            params.len() >= lay.head_w.start,
            "backward: parameter buffer"
        );
        assert_eq!(grads.len(), params.len(), "backward: gradient buffer");
        assert!(self.batch > 0, "backward before forward");
        let z = BatchDims::new(&self.cfg, self.batch);
        let (r, d, m) = (z.rows(), z.d, z.m);
        let p = |range: &std::ops::Range<usize>| &params[range.clone()];
        let a = Acts::carve(&self.acts[..z.acts_len::<usize>()], &z);
        let s = Scratch::carve(&mut &mut self.scratch[..z.scratch_len::<usize>()], &z);

        for (l, (blk, w)) in a.blocks.iter().zip(&lay.blocks).enumerate().rev() {
            // x_next = x_mid + s_b · fc2(gelu(fc1(ln2(x_mid)))): dx holds d x_next; the
            // branch's dY is s_b · dx when dropped (into dattn, free until proj's backward).
            let drop = self.drop.get(l).and_then(Option::as_ref);
            gelu_forward(s.gelu, blk.fc1);
            let dy = branch_grad(s.dattn, s.dx, drop.map(|s| &s[1][..]));
            let (gw, gb) = two_mut(grads, w.fc2_w.clone(), w.fc2_b.clone());
            linear_backward(
                Some(&mut *s.dgelu),
                false,
                gw,
                Some(gb),
                dy,
                s.gelu,
                p(&w.fc2_w),
                r,
                m,
                d,
            );
            // The GELU output is no longer needed: its buffer takes d fc1.
            let dfc1 = &mut *s.gelu;
            gelu_backward(dfc1, s.dgelu, blk.fc1);
            let (gw, gb) = two_mut(grads, w.fc1_w.clone(), w.fc1_b.clone());
            linear_backward(
                Some(&mut *s.dln),
                false,
                gw,
                Some(gb),
                dfc1,
                blk.ln2,
                p(&w.fc1_w),
                r,
                d,
                m,
            );
            let (gw, gb) = two_mut(grads, w.norm2_w.clone(), w.norm2_b.clone());
            layernorm_backward(
                s.dx,
                gw,
                gb,
                s.dln,
                blk.x_mid,
                blk.ln2_mean,
                blk.ln2_rstd,
                p(&w.norm2_w),
                d,
            );
            // x_mid = x + s_b · proj(attn(ln1(x))): dx now holds d x_mid; the scaled dY goes
            // into dqkv's front (free until attention's backward).
            let dy = branch_grad(&mut s.dqkv[..r * d], s.dx, drop.map(|s| &s[0][..]));
            let (gw, gb) = two_mut(grads, w.proj_w.clone(), w.proj_b.clone());
            linear_backward(
                Some(&mut *s.dattn),
                false,
                gw,
                Some(gb),
                dy,
                blk.attn,
                p(&w.proj_w),
                r,
                d,
                d,
            );
            attention_backward(s.dqkv, s.dattn, blk.probs, blk.qkv, z.attn_shape());
            let (gw, gb) = two_mut(grads, w.qkv_w.clone(), w.qkv_b.clone());
            linear_backward(
                Some(&mut *s.dln),
                false,
                gw,
                Some(gb),
                s.dqkv,
                blk.ln1,
                p(&w.qkv_w),
                r,
                d,
                3 * d,
            );
            let (gw, gb) = two_mut(grads, w.norm1_w.clone(), w.norm1_b.clone());
            layernorm_backward(
                s.dx,
                gw,
                gb,
                s.dln,
                blk.x,
                blk.ln1_mean,
                blk.ln1_rstd,
                p(&w.norm1_w),
                d,
            );
        }

        match &lay.cls_token {
            Some(cls) => {
                let (gcls, gpos) = two_mut(grads, cls.clone(), lay.pos_embed.clone());
                tokens_backward(s.dpatch, gpos, Some(gcls), s.dx, d);
            }
            None => tokens_backward(s.dpatch, &mut grads[lay.pos_embed.clone()], None, s.dx, d),
        }
        let np = z.b * z.n;
        // With masking, d of the patch embeddings (zero where masked, summed where copied)
        // goes to the start of dln [R, D] (free here; R ≥ B·N).
        let dembed: &[F] = match masking {
            Some(Substitution::MaskToken(mask, token)) => {
                assert_eq!(mask.len(), np, "backward: mask [B, N]");
                let dpe = &mut s.dln[..np * d];
                mask_tokens_backward(dpe, &mut grads[token], s.dpatch, mask);
                dpe
            }
            Some(Substitution::Sources(src, token)) => {
                assert_eq!(src.len(), np, "backward: sources [B, N]");
                let dpe = &mut s.dln[..np * d];
                substitute_backward(dpe, &mut grads[token], s.dpatch, src, z.n);
                dpe
            }
            None => s.dpatch,
        };
        let (gw, gb) = two_mut(grads, lay.patch_w.clone(), lay.patch_b.clone());
        linear_backward(
            None,
            false,
            gw,
            Some(gb),
            dembed,
            a.embed.patches,
            p(&lay.patch_w),
            np,
            z.cpp,
            d,
        );
    }
}

/// out [R, D] = x + s_b · f(·) for a dropped branch (f computed into `branch` [R, D] by
/// `plain`, then the per-sample add), else `fused` (the matmul's residual epilogue: the
/// step without drop-path, bitwise).
fn residual_branch<F: Float>(
    out: &mut [F],
    x: &[F],
    branch: &mut [F],
    scales: Option<&[F]>,
    plain: impl FnOnce(&mut [F]),
    fused: impl FnOnce(&mut [F]),
) {
    match scales {
        Some(scales) => {
            plain(&mut *branch);
            out.copy_from_slice(x);
            drop_path_add(out, branch, scales);
        }
        None => fused(out),
    }
}

/// The dY of a branch's last matmul from the residual stream's gradient dy [R, D]: s_b · dy
/// (into `scratch` [R, D]) when dropped, else dy itself.
fn branch_grad<'a, F: Float>(scratch: &'a mut [F], dy: &'a [F], scales: Option<&[F]>) -> &'a [F] {
    match scales {
        Some(scales) => {
            drop_path_backward(scratch, dy, scales);
            scratch
        }
        None => dy,
    }
}
