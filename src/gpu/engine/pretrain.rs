//! The pre-training model of `vitk pretrain` (issue 12) on a device: the classifier's encoder
//! (encoder.rs) with the patch embeddings corrupted by the mask token, the per-token norm
//! (the classifier's `norm.*` / `fc_norm.*`) on the N patch rows of each image, a linear
//! decoder D → K per patch token and the masked loss: pixels (patch targets, masked L1/L2) or
//! mean colours (3-bit classes, masked cross-entropy). The device twin of
//! `cpu::CpuPretrainEngine`; parameters laid out by [`PretrainLayout`].
//!
//! Shapes: B batch, N patches, T tokens (N + 1 with a class token), D width, R = B·T,
//! K the decoder's outputs per patch token.
//!
//! Steps are queued as the classifier's (pipeline.rs): images and masks staged in pinned
//! memory, the step one graph replay, its statistics read one step late.

use std::sync::Arc;

use half::bf16;

use super::encoder::{Corruption, Net, Substitution};
use super::pipeline::{Pipeline, Report, StepSlot};
use super::state::ParamState;
use super::{act_bound, alloc, Acts, Carvers, GIB, MAX_COUNTED};
use crate::data::Normalize;
use crate::engine::{OptimizerState, Precision};
use crate::gpu::error::{GpuError, GpuResult, InEngine};
use crate::gpu::kernels::{self as k, LinearEpilogue, Operand};
use crate::gpu::runtime::{Carver, DView, DeviceBuffer, Runtime};
use crate::gpu::stream::PinnedBuffer;
use crate::model::{BatchDims, ModelConfig, ParamLayout, PretrainLayout};
use crate::optim::{AdamWConfig, ParamGroups};
use crate::pretrain::{Objective, PatchMasks, PretrainEngine, PretrainStepOutput};

/// The corruption's and the decoder's activations and gradients, rows (b, n) of the patch
/// tokens (NP = B·N).
struct DecoderActs {
    embed: DView,         // [NP, D] corrupted patch embeddings, then their gradient
    token_scratch: DView, // mask token gradient partials
    x: DView,             // [NP, D] patch rows of x_L (with a class token only)
    normed: Operand,      // [NP, D] after the per-token norm (the decoder's input)
    mean: DView,          // [NP]
    rstd: DView,          // [NP]
    pred: DView,          // [NP, K] decoder output
    target: DView,        // [NP, K] pixel targets (pixel objective only)
    dpred: Operand,       // [NP, K]
    row_loss: DView,      // [NP] per-row pixel losses
    dnormed: DView,       // [NP, D]
    dx: DView,            // [NP, D] gradient of the patch rows (with a class token only)
}

impl DecoderActs {
    fn carve(c: &mut Carvers, z: &BatchDims, outputs: usize, pixels: bool) -> Self {
        let (np, d) = (z.b * z.n, z.d);
        // Without a class token x_L is the patch rows [NP, D] itself: no copies.
        let rows = if z.t > z.n { np } else { 0 };
        DecoderActs {
            embed: c.f32(np * d),
            token_scratch: c.f32(k::mask_tokens_backward_scratch_len(np, d)),
            x: c.f32(rows * d),
            normed: c.low(np * d),
            mean: c.f32(np),
            rstd: c.f32(np),
            pred: c.f32(np * outputs),
            target: c.f32(if pixels { np * outputs } else { 0 }),
            dpred: c.low(np * outputs),
            row_loss: c.f32(np),
            dnormed: c.f32(np * d),
            dx: c.f32(rows * d),
        }
    }
}

/// (fp32 elements, bf16 elements, split-K workspace) of the activations of `z` (the counting
/// pass of the carving itself).
fn counts(
    rt: &dyn Runtime,
    z: &BatchDims,
    objective: &Objective,
    outputs: usize,
    precision: Precision,
) -> (usize, usize, usize) {
    let splitk = z
        .splitk_workspace(rt, precision)
        .max(k::splitk_workspace_len(
            rt,
            precision,
            z.b * z.n,
            z.d,
            outputs,
        ));
    let mut count = Carvers {
        f32: Carver::counting(),
        low: Carver::counting(),
        precision,
    };
    Acts::carve(&mut count, z, splitk);
    DecoderActs::carve(&mut count, z, outputs, is_pixels(objective));
    (count.f32.used(), count.low.used(), splitk)
}

/// What makes two pre-training steps the same graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct StepShape {
    batch: usize,
    clip: Option<u64>,
}

/// The masks of one queued step, pinned.
struct StagedMasks {
    predicted: PinnedBuffer<u8>, // [max_batch·N]
    sources: PinnedBuffer<i32>,  // [max_batch·N]
}

/// [loss, correct, grad norm, clip coefficient] as a pre-training step reports them.
fn step_output(r: Report) -> PretrainStepOutput {
    PretrainStepOutput {
        loss: r.stats[0] as f64,
        grad_norm: r.clipped.then(|| r.stats[2] as f64),
    }
}

/// An upper bound on the activation elements (f64: no overflow): the encoder's
/// ([`act_bound`]) and the decoder's, at most 8 tensors of [NP, D + K].
fn bound(z: &BatchDims, outputs: usize) -> f64 {
    act_bound(z) + 8.0 * z.b as f64 * z.n as f64 * (z.d + outputs) as f64
}

fn is_pixels(objective: &Objective) -> bool {
    matches!(objective, Objective::Pixels(_))
}

/// The pre-training model with its parameters, gradients and AdamW state on a device.
pub struct GpuPretrainer {
    rt: Arc<dyn Runtime>,
    cfg: ModelConfig,
    /// The classification layout: its encoder tensors are the pre-training layout's prefix.
    encoder: ParamLayout,
    layout: PretrainLayout,
    objective: Objective,
    normalize: Normalize,
    precision: Precision,
    max_batch: usize,
    state: ParamState,
    acts_f32: DeviceBuffer<f32>,
    acts_low: DeviceBuffer<bf16>,
    splitk: usize,
    predicted: DeviceBuffer<u8>, // [max_batch·N] 1 where the loss covers the patch
    sources: DeviceBuffer<i32>,  // [max_batch·N] −1 the mask token, else a patch index
    classes: DeviceBuffer<u32>,  // [max_batch·N] colour targets (colour objective)
    /// [loss, correct (colour), grad norm, clip coefficient] of the last step.
    stats: DeviceBuffer<f32>,
    /// Batch size of the last forward pass (0 before the first).
    batch: usize,
    /// The queued-step machinery (pipeline.rs).
    pipeline: Pipeline<StepShape, StagedMasks>,
}

impl GpuPretrainer {
    /// A pre-training engine for `cfg` and `objective` on `rt` holding `params` (laid out by
    /// `PretrainLayout::new(cfg, objective.decoder_outputs(cfg))`), with room for batches of
    /// `max_batch`, computing in `precision`; every tensor trains at the base rate
    /// (`ParamGroups::pretraining`). `normalize` is how the images were normalised (the colour
    /// objective's targets are colours of the raw images).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rt: Arc<dyn Runtime>,
        cfg: &ModelConfig,
        objective: Objective,
        normalize: Normalize,
        max_batch: usize,
        params: &[f32],
        adamw: AdamWConfig,
        precision: Precision,
    ) -> GpuResult<Self> {
        let bad = |m: String| GpuError::Shape {
            kernel: "pretrain engine".into(),
            message: m,
        };
        cfg.validate().map_err(|e| bad(e.to_string()))?;
        if max_batch == 0 {
            return Err(bad("batch size is 0, expected at least 1".into()));
        }
        if objective == Objective::Colour && cfg.in_chans != 3 {
            return Err(bad(format!(
                "the colour objective needs RGB images, the model has {} channels",
                cfg.in_chans
            )));
        }
        let outputs = objective.decoder_outputs(cfg);
        let layout = PretrainLayout::new(cfg, outputs);
        if params.len() != layout.len {
            return Err(bad(format!(
                "{} parameters given, the pre-training model has {}",
                params.len(),
                layout.len
            )));
        }
        let groups = ParamGroups::pretraining(&layout);
        let state = ParamState::new(&rt, params, groups, adamw, precision)?;
        let z = BatchDims::new(cfg, max_batch);
        if bound(&z, outputs) > MAX_COUNTED {
            return Err(GpuError::Memory {
                op: "allocating activations".into(),
                message: format!(
                    "about {:.0} GiB for batch {max_batch}: far beyond any device; try a smaller --batch-size or model",
                    bound(&z, outputs) * 4.0 / GIB
                ),
            });
        }
        let (n_f32, n_low, splitk) = counts(&*rt, &z, &objective, outputs, precision);
        let acts_f32 = alloc::<f32>(&rt, n_f32, "activations")?;
        let acts_low = alloc::<bf16>(&rt, n_low, "bf16 activations")?;
        let np = max_batch * z.n;
        Ok(GpuPretrainer {
            predicted: alloc::<u8>(&rt, np, "patch masks")?,
            sources: alloc::<i32>(&rt, np, "patch sources")?,
            classes: alloc::<u32>(&rt, np, "colour targets")?,
            stats: alloc::<f32>(&rt, 4, "step statistics")?,
            rt,
            cfg: cfg.clone(),
            encoder: ParamLayout::new(cfg),
            layout,
            objective,
            normalize,
            precision,
            max_batch,
            state,
            acts_f32,
            acts_low,
            splitk,
            batch: 0,
            pipeline: Pipeline::default(),
        })
    }

    /// Bytes of device memory [`Self::new`] allocates for `cfg` and `objective` at
    /// `max_batch` in `precision` on `rt` (`cfg` must be valid); f64, so that any model can
    /// be estimated.
    pub fn device_bytes(
        rt: &dyn Runtime,
        cfg: &ModelConfig,
        objective: Objective,
        max_batch: usize,
        precision: Precision,
    ) -> f64 {
        let outputs = objective.decoder_outputs(cfg);
        let n = PretrainLayout::new(cfg, outputs).len;
        let z = BatchDims::new(cfg, max_batch);
        // the trained state; masks, sources and colour targets
        let fixed = ParamState::bytes(n, precision) + 9.0 * (max_batch * z.n) as f64;
        if bound(&z, outputs) > MAX_COUNTED {
            return fixed + bound(&z, outputs) * 4.0;
        }
        let (n_f32, n_low, _) = counts(rt, &z, &objective, outputs, precision);
        fixed + 4.0 * n_f32 as f64 + 2.0 * n_low as f64
    }

    /// Bytes of pinned host memory the queued steps stage batches in (two slots of images
    /// and both masks).
    pub fn pinned_bytes(cfg: &ModelConfig, max_batch: usize) -> f64 {
        let (image, n) = (cfg.image_len() as f64, cfg.num_patches() as f64);
        2.0 * max_batch as f64 * (4.0 * image + 5.0 * n)
    }

    /// The precision this engine computes in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn objective(&self) -> Objective {
        self.objective
    }

    pub fn layout(&self) -> &PretrainLayout {
        &self.layout
    }

    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.rt
    }

    fn acts(&self, batch: usize) -> (BatchDims, Acts, DecoderActs) {
        let z = BatchDims::new(&self.cfg, batch);
        let mut c = Carvers {
            f32: Carver::new(self.acts_f32.view()),
            low: Carver::new(self.acts_low.view()),
            precision: self.precision,
        };
        let a = Acts::carve(&mut c, &z, self.splitk);
        let outputs = self.layout.outputs;
        let dec = DecoderActs::carve(&mut c, &z, outputs, is_pixels(&self.objective));
        (z, a, dec)
    }

    /// The encoder's view of the parameters (encoder.rs).
    fn net(&self) -> Net<'_> {
        Net {
            rt: &*self.rt,
            cfg: &self.cfg,
            layout: &self.encoder,
            params: self.state.params,
            grads: self.state.grads,
            low: self.state.low(),
        }
    }

    /// The corruption of the batch's patch embeddings: the pixel objective replaces the
    /// predicted patches by the mask token (`mask_tokens`, as the CPU pixel model), the colour
    /// objective follows the sources (`substitute`: mask token, another patch or unchanged).
    fn substitution(&self, z: &BatchDims, dec: &DecoderActs) -> Substitution {
        let np = z.b * z.n;
        let corruption = match self.objective {
            Objective::Pixels(_) => Corruption::Mask(self.predicted.view().slice(0, np)),
            Objective::Colour => Corruption::Sources(self.sources.view().slice(0, np)),
        };
        Substitution::new(
            corruption,
            &self.layout.mask_token,
            dec.embed,
            dec.token_scratch,
        )
    }

    /// The batch size of `images` [B, C, S_h, S_w] and `masks`, or why they do not fit.
    fn batch_of(&self, images: &[f32], masks: &PatchMasks) -> GpuResult<usize> {
        let image = self.cfg.image_len();
        let batch = images.len() / image;
        let bad = |message: String| GpuError::Shape {
            kernel: "pretrain engine".into(),
            message,
        };
        if batch == 0 || batch * image != images.len() || batch > self.max_batch {
            return Err(bad(format!(
                "{} image values: expected B x {image} with 1 <= B <= {}",
                images.len(),
                self.max_batch
            )));
        }
        let n = self.cfg.num_patches();
        masks.check(batch, n).map_err(bad)?;
        // The pixel model reads `predicted` for its mask token (as the CPU one): the sources
        // must say the same.
        let consistent =
            |(i, (&p, &s)): (usize, (&u8, &i32))| s == if p != 0 { -1 } else { (i % n) as i32 };
        let pixels = is_pixels(&self.objective);
        if pixels
            && !masks
                .predicted
                .iter()
                .zip(&masks.sources)
                .enumerate()
                .all(consistent)
        {
            return Err(bad(
                "pixel masks must take the mask token (source -1) exactly where predicted".into(),
            ));
        }
        Ok(batch)
    }

    /// Uploads a batch of images and its masks; returns B.
    fn stage(&mut self, images: &[f32], masks: &PatchMasks) -> GpuResult<usize> {
        let batch = self.batch_of(images, masks)?;
        let rt = &*self.rt;
        let np = masks.predicted.len();
        self.acts(batch).1.images.upload(rt, images)?;
        self.predicted
            .view()
            .slice(0, np)
            .upload(rt, &masks.predicted)?;
        self.sources
            .view()
            .slice(0, np)
            .upload(rt, &masks.sources)?;
        Ok(batch)
    }

    /// Forward pass of `images` [B, C, S_h, S_w] (normalised) corrupted by `masks`: the
    /// encoder, the per-token norm and the decoder's outputs; keeps the activations.
    pub fn try_forward(&mut self, images: &[f32], masks: &PatchMasks) -> GpuResult<()> {
        let batch = self.stage(images, masks)?;
        self.forward(batch)
    }

    /// Enqueues the forward pass of the `batch` images and masks already on the device.
    fn forward(&mut self, batch: usize) -> GpuResult<()> {
        self.batch = batch;
        let (z, a, dec) = self.acts(batch);
        let net = self.net();
        let (rt, enc, lay) = (net.rt, net.layout, &self.layout);
        let (np, d, prefix) = (z.b * z.n, z.d, z.t - z.n);
        net.forward_encoder(&z, &a, Some(&self.substitution(&z, &dec)), None)?;
        // x [NP, D]: the patch rows of x_L [B, T, D] (x_L itself without a class token).
        let x = if prefix == 0 {
            a.x_last
        } else {
            k::patch_rows_gather(rt, Operand::F32(dec.x), a.x_last, z.b, z.t, d, prefix)?;
            dec.x
        };
        k::layernorm_forward(
            rt,
            dec.normed,
            dec.mean,
            dec.rstd,
            x,
            net.p(&enc.head_norm_w),
            net.p(&enc.head_norm_b),
            d,
        )?;
        k::linear_forward(
            rt,
            Operand::F32(dec.pred),
            dec.normed,
            net.w(&lay.decoder_w),
            net.p(&lay.decoder_b),
            LinearEpilogue::Bias,
            np,
            d,
            lay.outputs,
        )
    }

    /// Enqueues the targets of the images on the device and the masked loss of the last
    /// forward pass (into stats[0]; the colour objective's correct count into stats[1]), and
    /// the loss's gradient with respect to the decoder's outputs.
    fn loss(&self) -> GpuResult<()> {
        let rt = &*self.rt;
        let (z, a, dec) = self.acts(self.batch);
        let cfg = &self.cfg;
        let np = z.b * z.n;
        let mask = self.predicted.view().slice(0, np);
        match self.objective {
            Objective::Pixels(o) => {
                k::patch_targets(
                    rt,
                    dec.target,
                    a.images,
                    z.b,
                    cfg.in_chans,
                    cfg.image_size,
                    cfg.patch_size,
                    o.norm_pix,
                )?;
                k::masked_pixel_loss(
                    rt,
                    self.stats.view().slice(0, 1),
                    dec.dpred,
                    dec.row_loss,
                    dec.pred,
                    dec.target,
                    mask,
                    o.loss,
                )
            }
            Objective::Colour => {
                let classes = self.classes.view().slice(0, np);
                k::mim_colour::mean_colour_targets(
                    rt,
                    classes,
                    a.images,
                    z.b,
                    cfg.image_size,
                    cfg.patch_size,
                    self.normalize.mean,
                    self.normalize.std,
                )?;
                k::mim_colour::masked_cross_entropy(
                    rt,
                    self.stats.view(),
                    dec.dpred,
                    dec.pred,
                    classes,
                    mask,
                    np,
                    self.layout.outputs,
                    0.0,
                )
            }
        }
    }

    /// Backward of the last forward pass and loss: the gradient buffer is zeroed and then
    /// holds the gradient of the loss.
    fn backward(&self) -> GpuResult<()> {
        let (z, a, dec) = self.acts(self.batch);
        let net = self.net();
        let (rt, enc, lay) = (net.rt, net.layout, &self.layout);
        let (np, d, prefix, kd) = (z.b * z.n, z.d, z.t - z.n, lay.outputs);
        self.state.grads.fill_bytes(rt, 0)?;
        // decoder: dnormed = dpred · W (fp32, into the LayerNorm backward)
        k::linear_backward_dx(
            rt,
            Operand::F32(dec.dnormed),
            dec.dpred,
            net.w(&lay.decoder_w),
            None,
            np,
            d,
            kd,
        )?;
        net.dw(
            &a,
            &lay.decoder_w,
            &lay.decoder_b,
            dec.dpred,
            dec.normed,
            np,
            d,
            kd,
        )?;
        // The norm's dx is accumulated into: straight into d x_L [R, D] without a class
        // token, else into the patch rows, scattered with a zero class row.
        let (x, dx, dx_low) = if prefix == 0 {
            (a.x_last, a.dx, a.dx_low)
        } else {
            (dec.x, dec.dx, None)
        };
        dx.fill_bytes(rt, 0)?;
        k::layernorm_backward(
            rt,
            dx,
            dx_low,
            net.g(&enc.head_norm_w),
            net.g(&enc.head_norm_b),
            a.ln_scratch,
            dec.dnormed,
            x,
            dec.mean,
            dec.rstd,
            net.p(&enc.head_norm_w),
            d,
        )?;
        if prefix > 0 {
            k::patch_rows_scatter(rt, a.dx, a.dx_low, dec.dx, z.b, z.t, d, prefix)?;
        }
        net.backward_encoder(&z, &a, Some(&self.substitution(&z, &dec)), None)
    }

    /// Loss of the last forward pass (waited for), and its gradient prepared.
    pub fn try_loss(&mut self) -> GpuResult<f64> {
        self.loss()?;
        Ok(self.read_stats()?[0] as f64)
    }

    /// Backward of the last forward pass and [`Self::try_loss`].
    pub fn try_backward(&mut self) -> GpuResult<()> {
        self.backward()
    }

    /// Optional clipping (on device) and one AdamW update at base rate `lr`.
    pub fn try_update(&mut self, lr: f64, clip: Option<f64>) -> GpuResult<()> {
        self.state.step += 1;
        let hyper = self.state.hyper_values(lr);
        self.state.hyper.upload(&hyper)?;
        self.state.update(&*self.rt, self.stats.view(), clip)
    }

    /// Enqueues a whole step on inputs already on the device: what a step graph holds.
    fn enqueue_step(&mut self, batch: usize, clip: Option<f64>) -> GpuResult<()> {
        self.forward(batch)?;
        self.loss()?;
        self.backward()?;
        self.state.update(&*self.rt, self.stats.view(), clip)
    }

    /// Queues one step (see `PretrainEngine::pretrain_step`) and returns the output of the
    /// step queued before it, waiting for that one only.
    pub fn submit_step(
        &mut self,
        images: &[f32],
        masks: &PatchMasks,
        lr: f64,
        clip: Option<f64>,
    ) -> GpuResult<Option<PretrainStepOutput>> {
        let batch = self.batch_of(images, masks)?;
        // Out of the engine while the step's launches borrow it.
        let mut pipeline = std::mem::take(&mut self.pipeline);
        let out = self.submit_with(&mut pipeline, images, masks, lr, clip, batch);
        self.pipeline = pipeline;
        out
    }

    fn submit_with(
        &mut self,
        pipeline: &mut Pipeline<StepShape, StagedMasks>,
        images: &[f32],
        masks: &PatchMasks,
        lr: f64,
        clip: Option<f64>,
        batch: usize,
    ) -> GpuResult<Option<PretrainStepOutput>> {
        self.state.step += 1;
        let hyper = self.state.hyper_values(lr);
        let np = masks.predicted.len();
        let images_dev = self.acts(batch).1.images;
        let (rt, cfg) = (self.rt.clone(), &self.cfg);
        let (image_len, masks_len) = (
            self.max_batch * cfg.image_len(),
            self.max_batch * cfg.num_patches(),
        );
        let groups = self.state.groups.groups.len();
        let slot = pipeline.next_slot(|| {
            let masks = StagedMasks {
                predicted: PinnedBuffer::new(&rt, masks_len)?,
                sources: PinnedBuffer::new(&rt, masks_len)?,
            };
            StepSlot::new(&rt, image_len, masks, groups)
        })?;
        slot.images.as_mut_slice()[..images.len()].copy_from_slice(images);
        slot.inputs.predicted.as_mut_slice()[..np].copy_from_slice(&masks.predicted);
        slot.inputs.sources.as_mut_slice()[..np].copy_from_slice(&masks.sources);
        slot.hyper.as_mut_slice().copy_from_slice(&hyper);
        slot.images.upload_to(images_dev)?;
        slot.inputs
            .predicted
            .upload_to(self.predicted.view().slice(0, np))?;
        slot.inputs
            .sources
            .upload_to(self.sources.view().slice(0, np))?;
        slot.hyper.upload_to(self.state.hyper.view())?;
        let key = StepShape {
            batch,
            clip: clip.map(f64::to_bits),
        };
        // A replay does not run `forward`, which records the batch size.
        self.batch = batch;
        let stats = self.stats.view();
        let report = pipeline.submit(&rt, key, stats, clip.is_some(), || {
            self.enqueue_step(batch, clip)
        })?;
        Ok(report.map(step_output))
    }

    /// Waits for the queued step and returns its output (`None` when nothing is queued).
    pub fn finish_steps(&mut self) -> GpuResult<Option<PretrainStepOutput>> {
        Ok(self.pipeline.finish()?.map(step_output))
    }

    /// One whole step, waited for: [`Self::submit_step`] then [`Self::finish_steps`].
    pub fn try_step(
        &mut self,
        images: &[f32],
        masks: &PatchMasks,
        lr: f64,
        clip: Option<f64>,
    ) -> GpuResult<PretrainStepOutput> {
        self.finish_steps()?;
        self.submit_step(images, masks, lr, clip)?;
        self.finish_steps()?.ok_or_else(|| GpuError::Driver {
            op: "pretrain step".into(),
            message: "the step queued no output".into(),
        })
    }

    /// Whether steps run as graph replays (the default; `VITK_NO_GRAPH=1` starts without) or
    /// as the same kernels launched one by one.
    pub fn set_graphs(&mut self, on: bool) {
        self.pipeline.set_graphs(on)
    }

    pub fn graphs_enabled(&self) -> bool {
        self.pipeline.graphs_enabled()
    }

    /// Kernels in each captured step graph.
    pub fn graph_kernels(&self) -> Vec<u64> {
        self.pipeline.graph_kernels()
    }

    /// An evaluation forward pass: the loss and the decoder's outputs [B, N, K].
    pub fn try_evaluate(
        &mut self,
        images: &[f32],
        masks: &PatchMasks,
    ) -> GpuResult<(f64, Vec<f32>)> {
        self.try_forward(images, masks)?;
        let loss = self.try_loss()?;
        Ok((loss, self.try_predictions()?))
    }

    /// [loss, correct (colour), grad norm, clip coefficient] of the last step (waits).
    pub fn read_stats(&self) -> GpuResult<[f32; 4]> {
        let mut s = [0.0f32; 4];
        self.stats.download(&mut s)?;
        Ok(s)
    }

    /// The decoder's outputs [B, N, K] of the last forward pass.
    pub fn try_predictions(&self) -> GpuResult<Vec<f32>> {
        self.acts(self.batch).2.pred.to_vec(&*self.rt)
    }

    /// The gradients of the last backward pass, flat in the layout order.
    pub fn try_grads(&self) -> GpuResult<Vec<f32>> {
        self.state.grads.to_vec(&*self.rt)
    }

    pub fn try_params(&self) -> GpuResult<Vec<f32>> {
        self.state.params.to_vec(&*self.rt)
    }

    pub fn try_optimizer_state(&self) -> GpuResult<OptimizerState> {
        self.state.optimizer_state(&*self.rt)
    }

    pub fn try_load(&mut self, params: &[f32], opt: Option<&OptimizerState>) -> GpuResult<()> {
        self.finish_steps()?;
        self.state.load(&*self.rt, params, opt)
    }
}

/// As the classifier's `TrainEngine`: errors carry the device's message.
impl PretrainEngine for GpuPretrainer {
    fn describe(&self) -> String {
        format!("{}, {}", self.rt.describe(), self.precision)
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn pretrain_step(
        &mut self,
        images: &[f32],
        masks: &PatchMasks,
        lr: f64,
        clip: Option<f64>,
    ) -> anyhow::Result<Option<PretrainStepOutput>> {
        self.submit_step(images, masks, lr, clip)
            .in_engine("pretrain step")
    }

    fn finish_steps(&mut self) -> anyhow::Result<Option<PretrainStepOutput>> {
        GpuPretrainer::finish_steps(self).in_engine("finish the queued step")
    }

    fn evaluate(&mut self, images: &[f32], masks: &PatchMasks) -> anyhow::Result<(f64, Vec<f32>)> {
        self.try_evaluate(images, masks).in_engine("evaluate")
    }

    fn params(&self) -> anyhow::Result<Vec<f32>> {
        self.try_params().in_engine("download parameters")
    }

    fn optimizer_state(&self) -> anyhow::Result<OptimizerState> {
        self.try_optimizer_state()
            .in_engine("download optimizer state")
    }

    fn load(&mut self, params: &[f32], opt: Option<&OptimizerState>) -> anyhow::Result<()> {
        self.try_load(params, opt).in_engine("upload parameters")
    }
}
