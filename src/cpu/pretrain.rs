//! The pixel-prediction pre-training model of `vitk pretrain --objective pixels` (SimMIM
//! style, issue 12) on the CPU: the classification model's encoder with masked patches'
//! embeddings replaced by a learnable mask token, the final per-token norm, a linear decoder
//! from each patch token to its patch's pixels, and the masked L1/L2 pixel loss.
//!
//! STATUS (branch issue12-cpu-model):
//! - done: [`PretrainLayout`] (src/model/pretrain_layout.rs), [`CpuPretrainEngine`] forward,
//!   loss and backward in f32/f64, reusing [`CpuEngine`]'s encoder through the crate-private
//!   stages `forward_encoder` / `backward_encoder` (the classification engine's numbers are
//!   unchanged: the same ops in the same order; checked bit for bit against the commit
//!   before, f32 logits, loss and every gradient, both poolings). tests/grad_pretrain.rs: the whole
//!   model's gradients against finite differences in f64 (cls and mean pooling, L1 and L2,
//!   norm_pix on and off, 8x12 images), the loss against a plain f64 forward, nothing masked,
//!   everything masked, the f32 engine against the f64 one.
//!   `init_pretrain_params` (src/model/init.rs), `CpuPretrainEngine::buffer_elems`,
//!   `ParamGroups::pretraining` (src/optim/groups.rs: everything at the base rate) with which
//!   the CPU `AdamW` trains this layout (tests/grad_pretrain.rs: the loss falls).
//! - not done: a pre-training trainer (masks from `data::masking::patch_mask` per batch,
//!   clipping, the LR schedule, metrics), checkpoints of the pre-training
//!   layout and loading its encoder into a classifier (the encoder is the classification
//!   layout's prefix, so it is a copy), a `TrainEngine`-like interface, the device engine,
//!   the CLI (`vitk pretrain`) and its memory estimate (use `CpuPretrainEngine::buffer_elems`).
//!
//! Shapes: B batch, N patches, T tokens (N + 1 with a class token), D width, K = P·P·C pixel
//! values per patch, R = B·T.
//!
//! The final norm: for cls-pooled models timm's `norm` is a LayerNorm applied to every token
//! before pooling, so it is applied here per token. Mean-pooled models have `norm` = Identity
//! and `fc_norm` after pooling; a pooled norm has no per-token meaning, so this model applies
//! `fc_norm` per token instead (the same tensor, the same place in the layout, so a
//! fine-tuned classifier starts from a norm that was trained on token features). The class
//! token's normed row would feed nothing (the decoder reads patch tokens only), so the norm
//! is computed on the N patch rows of each image only: the same values as normalising all
//! T rows and dropping the class row.

use super::carve::{two_mut, Carve};
use super::layernorm::{layernorm_backward, layernorm_forward};
use super::linear::{linear_backward, linear_forward};
use super::mim::{masked_pixel_loss, patch_targets, PixelLoss};
use super::{CpuEngine, Float};
use crate::model::{BatchDims, ConfigError, ModelConfig, PretrainLayout};

/// What the decoder predicts and how it is scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelObjective {
    /// L1 (SimMIM) or L2 (MAE) per pixel value.
    pub loss: PixelLoss,
    /// Targets normalised per patch (MAE's `norm_pix_loss`).
    pub norm_pix: bool,
}

/// The decoder's activations and gradients, rows (b, n) of the patch tokens.
struct DecoderActs<S> {
    x: S,       // [B·N, D] patch rows of x_L
    normed: S,  // [B·N, D] after the per-token norm
    mean: S,    // [B·N]
    rstd: S,    // [B·N]
    pred: S,    // [B·N, K] decoder output
    target: S,  // [B·N, K] patch_targets of the images
    dpred: S,   // [B·N, K]
    dnormed: S, // [B·N, D]
    dx: S,      // [B·N, D]
}

impl<S: Carve> DecoderActs<S> {
    fn carve(buf: &mut S, np: usize, d: usize, k: usize) -> Self {
        Self {
            x: buf.take_front(np * d),
            normed: buf.take_front(np * d),
            mean: buf.take_front(np),
            rstd: buf.take_front(np),
            pred: buf.take_front(np * k),
            target: buf.take_front(np * k),
            dpred: buf.take_front(np * k),
            dnormed: buf.take_front(np * d),
            dx: buf.take_front(np * d),
        }
    }

    fn len(np: usize, d: usize, k: usize) -> usize {
        np * (4 * d + 2 + 3 * k)
    }
}

/// The pre-training model on the CPU: owns the encoder's activations (a [`CpuEngine`]) and
/// the decoder's, sized for `max_batch` images; parameters and gradients are flat buffers
/// laid out by [`PretrainLayout`], owned by the caller.
pub struct CpuPretrainEngine<F: Float> {
    encoder: CpuEngine<F>,
    layout: PretrainLayout,
    objective: PixelObjective,
    /// mask [B, N] of the last forward pass.
    mask: Vec<bool>,
    acts: Vec<F>,
}

impl<F: Float> CpuPretrainEngine<F> {
    /// An engine for `cfg` (its `num_classes` plays no part) and `objective` that runs
    /// batches of up to `max_batch` images.
    pub fn new(
        cfg: &ModelConfig,
        objective: PixelObjective,
        max_batch: usize,
    ) -> Result<Self, ConfigError> {
        let encoder = CpuEngine::new(cfg, max_batch)?;
        let z = BatchDims::new(cfg, max_batch);
        // Smaller than the encoder's buffers, which CpuEngine::new has allocated.
        let n = DecoderActs::<&[F]>::len(z.b * z.n, z.d, z.cpp);
        let mut acts = Vec::new();
        acts.try_reserve_exact(n).map_err(|_| {
            ConfigError(format!(
                "decoder activations for batch {max_batch} cannot be allocated"
            ))
        })?;
        acts.resize(n, F::zero());
        assert_eq!(
            CpuEngine::<F>::buffer_elems(cfg, max_batch) + n as f64,
            Self::buffer_elems(cfg, max_batch),
            "decoder buffer and buffer_elems disagree"
        );
        Ok(Self {
            encoder,
            layout: PretrainLayout::new(cfg, cfg.patch_dim()),
            objective,
            mask: Vec::new(),
            acts,
        })
    }

    /// Elements of the buffers [`Self::new`] allocates for `cfg` and `max_batch` (in f64:
    /// no overflow for any model, for memory estimates): the encoder's and the decoder's.
    pub fn buffer_elems(cfg: &ModelConfig, max_batch: usize) -> f64 {
        let z = BatchDims::new(cfg, max_batch);
        let (np, d, k) = (z.b as f64 * z.n as f64, z.d as f64, z.cpp as f64);
        CpuEngine::<F>::buffer_elems(cfg, max_batch) + np * (4.0 * d + 2.0 + 3.0 * k)
    }

    pub fn config(&self) -> &ModelConfig {
        self.encoder.config()
    }

    pub fn layout(&self) -> &PretrainLayout {
        &self.layout
    }

    pub fn objective(&self) -> PixelObjective {
        self.objective
    }

    pub fn max_batch(&self) -> usize {
        self.encoder.max_batch()
    }

    fn dims(&self) -> BatchDims {
        BatchDims::new(self.encoder.config(), self.encoder.batch())
    }

    /// Forward pass of `images` [B, C, S_h, S_w] (normalised) with `mask` [B, N] (true: the
    /// patch is replaced by the mask token and predicted): the encoder, the per-token norm,
    /// the decoder's predictions [B, N, K] and the targets [B, N, K] of the images. Keeps
    /// everything for [`Self::loss`] and [`Self::backward`].
    pub fn forward(&mut self, params: &[F], images: &[F], mask: &[bool]) {
        let lay = &self.layout;
        assert_eq!(params.len(), lay.len, "pretrain forward: parameter buffer");
        let token = &params[lay.mask_token.clone()];
        self.encoder
            .forward_encoder(params, images, Some((mask, token)));
        self.mask.clear();
        self.mask.extend_from_slice(mask);

        let cfg = self.encoder.config();
        let z = self.dims();
        let (np, d, k) = (z.b * z.n, z.d, z.cpp);
        let prefix = z.t - z.n;
        let p = |range: &std::ops::Range<usize>| &params[range.clone()];
        let enc = self.encoder.layout();
        let a = DecoderActs::carve(&mut &mut self.acts[..], np, d, k);
        // x [B·N, D] = the patch rows of x_L [B, T, D].
        let x_last = self.encoder.encoder_output();
        for (b, xb) in a.x.chunks_mut(z.n * d).enumerate() {
            xb.copy_from_slice(&x_last[(b * z.t + prefix) * d..(b + 1) * z.t * d]);
        }
        layernorm_forward(
            a.normed,
            a.mean,
            a.rstd,
            a.x,
            p(&enc.head_norm_w),
            p(&enc.head_norm_b),
            d,
        );
        linear_forward(
            a.pred,
            a.normed,
            p(&lay.decoder_w),
            Some(p(&lay.decoder_b)),
            np,
            d,
            k,
        );
        patch_targets(
            a.target,
            images,
            cfg.in_chans,
            cfg.image_size,
            cfg.patch_size,
            self.objective.norm_pix,
        );
    }

    /// Predictions [B, N, K] of the last forward pass (in the order of the targets; with
    /// norm_pix, in normalised units).
    pub fn predictions(&self) -> &[F] {
        let z = self.dims();
        DecoderActs::carve(&mut &self.acts[..], z.b * z.n, z.d, z.cpp).pred
    }

    /// Targets [B, N, K] of the last forward pass.
    pub fn targets(&self) -> &[F] {
        let z = self.dims();
        DecoderActs::carve(&mut &self.acts[..], z.b * z.n, z.d, z.cpp).target
    }

    /// The masked pixel loss of the last forward pass (0 when nothing is masked); also
    /// prepares its gradient for [`Self::backward`].
    pub fn loss(&mut self) -> f64 {
        let z = self.dims();
        assert!(z.b > 0, "loss before forward");
        let a = DecoderActs::carve(&mut &mut self.acts[..], z.b * z.n, z.d, z.cpp);
        masked_pixel_loss(
            a.pred,
            a.target,
            &self.mask,
            self.objective.loss,
            Some(a.dpred),
        )
    }

    /// Backward pass of the last forward pass and [`Self::loss`]: adds the gradient of the
    /// loss to `grads` (laid out as the parameters; zero it first for a fresh step).
    pub fn backward(&mut self, params: &[F], grads: &mut [F]) {
        let lay = &self.layout;
        assert_eq!(params.len(), lay.len, "pretrain backward: parameter buffer");
        assert_eq!(grads.len(), lay.len, "pretrain backward: gradient buffer");
        let z = self.dims();
        assert!(z.b > 0, "backward before forward");
        let (np, d, k) = (z.b * z.n, z.d, z.cpp);
        let prefix = z.t - z.n;
        let p = |range: &std::ops::Range<usize>| &params[range.clone()];
        let enc = self.encoder.layout();
        let (norm_w, norm_b) = (enc.head_norm_w.clone(), enc.head_norm_b.clone());
        let a = DecoderActs::carve(&mut &mut self.acts[..], np, d, k);
        let (gw, gb) = two_mut(grads, lay.decoder_w.clone(), lay.decoder_b.clone());
        linear_backward(
            Some(&mut *a.dnormed),
            false,
            gw,
            Some(gb),
            a.dpred,
            a.normed,
            p(&lay.decoder_w),
            np,
            d,
            k,
        );
        a.dx.fill(F::zero());
        let (gw, gb) = two_mut(grads, norm_w.clone(), norm_b);
        layernorm_backward(a.dx, gw, gb, a.dnormed, a.x, a.mean, a.rstd, p(&norm_w), d);
        // d x_L [B, T, D]: the patch rows from dx, zero on the class token's row.
        let dx_last = self.encoder.encoder_output_grad();
        for (b, gb) in a.dx.chunks(z.n * d).enumerate() {
            let img = &mut dx_last[b * z.t * d..(b + 1) * z.t * d];
            img[..prefix * d].fill(F::zero());
            img[prefix * d..].copy_from_slice(gb);
        }
        self.encoder
            .backward_encoder(params, grads, Some((&self.mask, lay.mask_token.clone())));
    }
}
