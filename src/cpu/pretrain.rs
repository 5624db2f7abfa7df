//! The pre-training model of `vitk pretrain` (issue 12) on the CPU, both objectives
//! ([`Objective`]): the classification model's encoder with patch embeddings substituted as
//! the batch's [`PatchMasks`] say, the final per-token norm and a linear decoder on every patch
//! token, then
//! - pixels (SimMIM style): masked patches take the learnable mask token; the decoder predicts
//!   each patch's K = P·P·C pixel values; the masked L1/L2 pixel loss;
//! - colour (the ViT paper's masked patch prediction): positions take the mask token, another
//!   patch's embedding or their own (`PatchMasks::sources`); the decoder's K = 512 logits
//!   classify each patch's 3-bit mean colour; cross-entropy over the predicted patches.
//!
//! The two share everything but the substitution, the targets and the loss.
//!
//! Driven by `pretrain::CpuPretrainer` (parameters, gradients, AdamW) in the loop of
//! `vitk pretrain`; the device engine's twin is `gpu::GpuPretrainer`. The classification
//! engine's numbers are unchanged by the encoder/head split (the same ops in the same order).
//!
//! Shapes: B batch, N patches, T tokens (N + 1 with a class token), D width, K the decoder's
//! outputs per patch (P·P·C pixel values or 512 colour logits), R = B·T.
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
use super::engine::Substitution;
use super::layernorm::{layernorm_backward, layernorm_forward};
use super::linear::{linear_backward, linear_forward};
use super::mim::{masked_pixel_loss, patch_targets, PixelLoss};
use super::mim_colour::{masked_cross_entropy, mean_colour_targets, COLOUR_CHANNELS};
use super::{CpuEngine, Float};
use crate::data::Normalize;
use crate::model::{BatchDims, ConfigError, ModelConfig, PretrainLayout};
use crate::pretrain::{Objective, PatchMasks};

/// What the pixel decoder predicts and how it is scored.
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
    target: S,  // [B·N, K] patch_targets of the images (pixels; empty for colour)
    dpred: S,   // [B·N, K]
    dnormed: S, // [B·N, D]
    dx: S,      // [B·N, D]
}

impl<S: Carve> DecoderActs<S> {
    /// `kt`: target values per patch (K for pixels, 0 for colour, whose targets are classes).
    fn carve(buf: &mut S, np: usize, d: usize, k: usize, kt: usize) -> Self {
        Self {
            x: buf.take_front(np * d),
            normed: buf.take_front(np * d),
            mean: buf.take_front(np),
            rstd: buf.take_front(np),
            pred: buf.take_front(np * k),
            target: buf.take_front(np * kt),
            dpred: buf.take_front(np * k),
            dnormed: buf.take_front(np * d),
            dx: buf.take_front(np * d),
        }
    }
}

/// (K, target values per patch) of `objective`.
fn decoder_dims(cfg: &ModelConfig, objective: &Objective) -> (usize, usize) {
    let k = objective.decoder_outputs(cfg);
    match objective {
        Objective::Pixels(_) => (k, k),
        Objective::Colour => (k, 0),
    }
}

/// Elements of the decoder's buffers (in f64, see [`CpuPretrainEngine::buffer_elems`]): the
/// [`DecoderActs`] and, for colour, the B·N class targets (u32, counted as elements).
fn decoder_elems(cfg: &ModelConfig, objective: &Objective, max_batch: usize) -> f64 {
    let z = BatchDims::new(cfg, max_batch);
    let (k, kt) = decoder_dims(cfg, objective);
    let (np, d) = (z.b as f64 * z.n as f64, z.d as f64);
    let classes = match objective {
        Objective::Pixels(_) => 0.0,
        Objective::Colour => 1.0,
    };
    np * (4.0 * d + 2.0 + 2.0 * k as f64 + kt as f64 + classes)
}

/// The pre-training model on the CPU: owns the encoder's activations (a [`CpuEngine`]) and
/// the decoder's, sized for `max_batch` images; parameters and gradients are flat buffers
/// laid out by [`PretrainLayout`], owned by the caller.
pub struct CpuPretrainEngine<F: Float> {
    encoder: CpuEngine<F>,
    layout: PretrainLayout,
    objective: Objective,
    /// The images' normalisation (colour: the targets are classes of the unnormalised means).
    normalize: Normalize,
    /// The masks of the last forward pass: predicted [B, N] as u8 (the colour loss) and as
    /// bool (the pixel ops), sources [B, N] (the colour substitution).
    predicted: Vec<u8>,
    mask: Vec<bool>,
    sources: Vec<i32>,
    /// Colour classes [B, N] of the last forward pass (empty for pixels).
    classes: Vec<u32>,
    /// The colour objective's images [B, C, S_h, S_w] in f32 (reused between batches).
    images32: Vec<f32>,
    acts: Vec<F>,
}

impl<F: Float> CpuPretrainEngine<F> {
    /// An engine for `cfg` (its `num_classes` plays no part) and `objective` that runs
    /// batches of up to `max_batch` images normalised with `normalize` (read by the colour
    /// objective only, which needs 3 channels).
    pub fn new(
        cfg: &ModelConfig,
        objective: Objective,
        normalize: Normalize,
        max_batch: usize,
    ) -> Result<Self, ConfigError> {
        if objective == Objective::Colour && cfg.in_chans != COLOUR_CHANNELS {
            return Err(ConfigError(format!(
                "the colour objective needs {COLOUR_CHANNELS}-channel images, not {}",
                cfg.in_chans
            )));
        }
        let encoder = CpuEngine::new(cfg, max_batch)?;
        let z = BatchDims::new(cfg, max_batch);
        let np = z.b * z.n;
        let (k, kt) = decoder_dims(cfg, &objective);
        // Smaller than the encoder's buffers, which CpuEngine::new has allocated.
        let n = np * (4 * z.d + 2 + 2 * k + kt);
        let mut acts = Vec::new();
        acts.try_reserve_exact(n).map_err(|_| {
            ConfigError(format!(
                "decoder activations for batch {max_batch} cannot be allocated"
            ))
        })?;
        acts.resize(n, F::zero());
        let classes = match objective {
            Objective::Pixels(_) => Vec::new(),
            Objective::Colour => vec![0; np],
        };
        assert_eq!(
            CpuEngine::<F>::buffer_elems(cfg, max_batch) + (n + classes.len()) as f64,
            Self::buffer_elems(cfg, &objective, max_batch),
            "decoder buffer and buffer_elems disagree"
        );
        Ok(Self {
            encoder,
            layout: PretrainLayout::new(cfg, k),
            objective,
            normalize,
            predicted: Vec::new(),
            mask: Vec::new(),
            sources: Vec::new(),
            classes,
            images32: Vec::new(),
            acts,
        })
    }

    /// Elements of the buffers [`Self::new`] allocates for `cfg`, `objective` and `max_batch`
    /// (in f64: no overflow for any model, for memory estimates): the encoder's and the
    /// decoder's.
    pub fn buffer_elems(cfg: &ModelConfig, objective: &Objective, max_batch: usize) -> f64 {
        CpuEngine::<F>::buffer_elems(cfg, max_batch) + decoder_elems(cfg, objective, max_batch)
    }

    pub fn config(&self) -> &ModelConfig {
        self.encoder.config()
    }

    pub fn layout(&self) -> &PretrainLayout {
        &self.layout
    }

    pub fn objective(&self) -> Objective {
        self.objective
    }

    pub fn max_batch(&self) -> usize {
        self.encoder.max_batch()
    }

    fn dims(&self) -> BatchDims {
        BatchDims::new(self.encoder.config(), self.encoder.batch())
    }

    /// The decoder's buffers for the current batch.
    fn decoder_acts<S: Carve>(
        mut buf: S,
        cfg: &ModelConfig,
        objective: &Objective,
        z: &BatchDims,
    ) -> DecoderActs<S> {
        let (k, kt) = decoder_dims(cfg, objective);
        DecoderActs::carve(&mut buf, z.b * z.n, z.d, k, kt)
    }

    /// Forward pass of `images` [B, C, S_h, S_w] (normalised) corrupted by `masks` (B images
    /// of N patches; checked, panics when they do not fit — the caller validates): the
    /// encoder on the substituted embeddings, the per-token norm, the decoder's outputs
    /// [B, N, K] and the targets of the images (pixels [B, N, K] or colour classes [B, N]).
    /// Keeps everything for [`Self::loss`] and [`Self::backward`].
    ///
    /// Pixels: the mask token replaces exactly the predicted patches, so `masks.sources` must
    /// be −1 where predicted and the patch itself elsewhere (as `PatchMasks::draw` makes them).
    pub fn forward(&mut self, params: &[F], images: &[F], masks: &PatchMasks) {
        let lay = &self.layout;
        assert_eq!(params.len(), lay.len, "pretrain forward: parameter buffer");
        let cfg = self.encoder.config();
        let n = cfg.num_patches();
        let batch = images.len() / cfg.image_len();
        if let Err(e) = masks.check(batch, n) {
            panic!("pretrain forward: {e}");
        }
        self.predicted.clone_from(&masks.predicted);
        self.sources.clone_from(&masks.sources);
        self.mask.clear();
        self.mask.extend(masks.predicted.iter().map(|&m| m != 0));
        let token = &params[lay.mask_token.clone()];
        let substitution = match self.objective {
            Objective::Pixels(_) => {
                let consistent = self
                    .sources
                    .iter()
                    .zip(&self.mask)
                    .enumerate()
                    .all(|(i, (&s, &m))| s == if m { -1 } else { (i % n) as i32 });
                assert!(
                    consistent,
                    "pretrain forward: pixel masks must take the mask token exactly where predicted"
                );
                Substitution::MaskToken(&self.mask[..], token)
            }
            Objective::Colour => Substitution::Sources(&self.sources[..], token),
        };
        self.encoder
            .forward_encoder(params, images, Some(substitution), None);

        let cfg = self.encoder.config();
        let z = self.dims();
        let (np, d, k) = (z.b * z.n, z.d, lay.outputs);
        let prefix = z.t - z.n;
        let p = |range: &std::ops::Range<usize>| &params[range.clone()];
        let enc = self.encoder.layout();
        let a = Self::decoder_acts(&mut self.acts[..], cfg, &self.objective, &z);
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
        // pred [B·N, K] = normed [B·N, D] · decoder_wᵀ + decoder_b.
        linear_forward(
            a.pred,
            a.normed,
            p(&lay.decoder_w),
            Some(p(&lay.decoder_b)),
            np,
            d,
            k,
        );
        match self.objective {
            Objective::Pixels(obj) => patch_targets(
                a.target,
                images,
                cfg.in_chans,
                cfg.image_size,
                cfg.patch_size,
                obj.norm_pix,
            ),
            Objective::Colour => {
                // The classes are defined on f32 images (the kernel's rule); an f64 batch is
                // rounded to f32 first.
                self.images32.clear();
                self.images32
                    .extend(images.iter().map(|&v| Float::to_f64(v) as f32));
                mean_colour_targets(
                    &mut self.classes[..np],
                    &self.images32,
                    z.b,
                    cfg.image_size,
                    cfg.patch_size,
                    self.normalize.mean,
                    self.normalize.std,
                );
            }
        }
    }

    /// Decoder outputs [B, N, K] of the last forward pass: pixels in the order of the
    /// targets (with norm_pix, in normalised units), or colour logits.
    pub fn predictions(&self) -> &[F] {
        let z = self.dims();
        Self::decoder_acts(&self.acts[..], self.config(), &self.objective, &z).pred
    }

    /// Pixel targets [B, N, K] of the last forward pass (empty for the colour objective).
    pub fn targets(&self) -> &[F] {
        let z = self.dims();
        Self::decoder_acts(&self.acts[..], self.config(), &self.objective, &z).target
    }

    /// Colour classes [B, N] (in 0..512) of the last forward pass (empty for pixels).
    pub fn colour_targets(&self) -> &[u32] {
        let z = self.dims();
        &self.classes[..self.classes.len().min(z.b * z.n)]
    }

    /// The loss of the last forward pass over the predicted patches (masked pixel L1/L2 or
    /// masked cross-entropy; 0 when nothing is predicted); also prepares its gradient for
    /// [`Self::backward`].
    pub fn loss(&mut self) -> f64 {
        let z = self.dims();
        assert!(z.b > 0, "loss before forward");
        let cfg = self.encoder.config();
        let a = Self::decoder_acts(&mut self.acts[..], cfg, &self.objective, &z);
        match self.objective {
            Objective::Pixels(obj) => {
                masked_pixel_loss(a.pred, a.target, &self.mask, obj.loss, Some(a.dpred))
            }
            Objective::Colour => {
                let np = z.b * z.n;
                let classes = self.layout.outputs;
                // No label smoothing: the ViT paper's objective.
                masked_cross_entropy(
                    a.pred,
                    &self.classes[..np],
                    &self.predicted,
                    classes,
                    0.0,
                    Some(a.dpred),
                )
                .loss
            }
        }
    }

    /// Backward pass of the last forward pass and [`Self::loss`]: adds the gradient of the
    /// loss to `grads` (laid out as the parameters; zero it first for a fresh step).
    pub fn backward(&mut self, params: &[F], grads: &mut [F]) {
        let lay = &self.layout;
        assert_eq!(params.len(), lay.len, "pretrain backward: parameter buffer");
        assert_eq!(grads.len(), lay.len, "pretrain backward: gradient buffer");
        let z = self.dims();
        assert!(z.b > 0, "backward before forward");
        let (np, d, k) = (z.b * z.n, z.d, lay.outputs);
        let prefix = z.t - z.n;
        let p = |range: &std::ops::Range<usize>| &params[range.clone()];
        let enc = self.encoder.layout();
        let (norm_w, norm_b) = (enc.head_norm_w.clone(), enc.head_norm_b.clone());
        let cfg = self.encoder.config();
        let a = Self::decoder_acts(&mut self.acts[..], cfg, &self.objective, &z);
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
        let token = lay.mask_token.clone();
        let substitution = match self.objective {
            Objective::Pixels(_) => Substitution::MaskToken(&self.mask[..], token),
            Objective::Colour => Substitution::Sources(&self.sources[..], token),
        };
        self.encoder
            .backward_encoder(params, grads, Some(substitution));
    }
}
