//! The device engine: the whole ViT training step (forward, loss, backward, clipping, AdamW)
//! orchestrated over the typed launchers, written once against [`Runtime`] so that it runs on
//! CUDA and on the emulator, and once for both precisions: every tensor that feeds a matmul is
//! an [`Operand`] of the step's precision (fp32, or bf16 with fp32 master weights; see
//! [`Precision`]). Memory: parameters, gradients and the AdamW moments are one allocation of
//! four [`ParamLayout`]-shaped views (plus the bf16 weight copies on the bf16 path);
//! activations and backward scratch are one fp32 and one bf16 allocation of named views,
//! carved per batch size (as the CPU engine does).

use std::sync::Arc;

use half::bf16;

use super::error::{GpuError, GpuResult, InEngine};
use super::kernels::{self as k, AttnDims, LinearEpilogue, Operand};
use super::runtime::{BView, Carver, DView, DeviceBuffer, Elem, Runtime};
use crate::engine::{OptimizerState, Precision, StepOutput, TrainEngine};
use crate::model::drop_path::{drop_path_rates, DropPath};
use crate::model::{BatchDims, ModelConfig, ParamLayout, Pool};
use crate::optim::{AdamWConfig, EmaConfig, FineTuning, ParamGroups};

mod encoder;
mod pipeline;
mod pretrain;
mod state;
use encoder::{DropScales, Net};
use pipeline::{ClassInputs, Pipeline, StepShape};
pub use pretrain::GpuPretrainer;
use state::ParamState;

/// Buffer sizes of this engine for a batch.
impl BatchDims {
    fn attn_dims(&self) -> AttnDims {
        AttnDims {
            batch: self.b,
            heads: self.h,
            tokens: self.t,
            head_dim: self.d / self.h,
        }
    }
    fn ln_scratch(&self) -> usize {
        k::layernorm_backward_scratch_len(self.rows(), self.d)
            .max(k::layernorm_backward_scratch_len(self.b, self.d))
    }
    /// The split-K workspace of the largest weight gradient (dW [O, I] over `rows`).
    fn splitk_workspace(&self, rt: &dyn Runtime, p: Precision) -> usize {
        let r = self.rows();
        [
            (self.b * self.n, self.cpp, self.d),
            (r, self.d, 3 * self.d),
            (r, self.d, self.d),
            (r, self.d, self.m),
            (r, self.m, self.d),
            (self.b, self.d, self.k),
        ]
        .iter()
        .map(|&(rows, i, o)| k::splitk_workspace_len(rt, p, rows, i, o))
        .max()
        .unwrap_or(0)
    }
}

/// Carves fp32 views and operands of the step's precision from the two activation buffers.
struct Carvers {
    f32: Carver<f32>,
    low: Carver<bf16>,
    precision: Precision,
}

impl Carvers {
    fn f32(&mut self, len: usize) -> DView {
        self.f32.take(len)
    }
    /// A tensor in the step's precision (a matmul operand or output).
    fn low(&mut self, len: usize) -> Operand {
        match self.precision {
            Precision::Fp32 => Operand::F32(self.f32.take(len)),
            Precision::Bf16 => Operand::Bf16(self.low.take(len)),
        }
    }
    /// A bf16 copy of an fp32 tensor, on the bf16 path only.
    fn copy(&mut self, len: usize) -> Option<BView> {
        (self.precision == Precision::Bf16).then(|| self.low.take(len))
    }
}

/// Activations of one block saved for backward.
struct BlockActs {
    x: DView,        // [R, D] block input (residual stream, fp32)
    ln1: Operand,    // [R, D]
    ln1_mean: DView, // [R]
    ln1_rstd: DView, // [R]
    qkv: Operand,    // [3, B, H, T, hd] head-major q | k | v
    lse: DView,      // [B, H, T] log-sum-exp of each score row
    attn: Operand,   // [R, D] heads concatenated (proj input)
    x_mid: DView,    // [R, D] x + proj(attn)
    ln2: Operand,    // [R, D]
    ln2_mean: DView, // [R]
    ln2_rstd: DView, // [R]
    fc1: Operand,    // [R, M] pre-activation
    gelu: Operand,   // [R, M] gelu(fc1) (fc2 input)
}

/// Every activation and scratch view of one batch size.
struct Acts {
    images: DView,    // [B, C, S, S]
    patches: Operand, // [B·N, C·P·P]
    patch_out: DView, // [B·N, D]
    blocks: Vec<BlockActs>,
    x_last: DView,    // [R, D]
    pooled: DView,    // [B, D]
    normed: Operand,  // [B, D]
    mean: DView,      // [B]
    rstd: DView,      // [B]
    logits: DView,    // [B, K]
    dlogits: Operand, // [B, K]
    // backward scratch
    dx: DView,             // [R, D] residual-stream gradient
    dx_low: Option<BView>, // [R, D] its bf16 copy (the dY of fc2 and proj on the bf16 path)
    dln: DView,            // [R, D]
    dattn: Operand,        // [R, D]
    dqkv: Operand,         // [R, 3D] token-major
    dfc1: Operand,         // [R, M] gradient of fc1's pre-activation
    rowdot: DView,         // [B, H, T] sum of dO * O per attention row
    dpooled: DView,        // [B, D]
    dnormed: DView,        // [B, D]
    dpatch: Operand,       // [B·N, D]
    ln_scratch: DView,
    splitk: DView,
}

impl Acts {
    /// Carves the views for `z`; `splitk` elements of split-K workspace.
    fn carve(c: &mut Carvers, z: &BatchDims, splitk: usize) -> Self {
        let (r, d, m) = (z.rows(), z.d, z.m);
        let rows = z.b * z.h * z.t;
        let images = c.f32(z.b * z.image);
        let patches = c.low(z.b * z.n * z.cpp);
        let patch_out = c.f32(z.b * z.n * d);
        let blocks = (0..z.depth)
            .map(|_| BlockActs {
                x: c.f32(r * d),
                ln1: c.low(r * d),
                ln1_mean: c.f32(r),
                ln1_rstd: c.f32(r),
                qkv: c.low(3 * r * d),
                lse: c.f32(rows),
                attn: c.low(r * d),
                x_mid: c.f32(r * d),
                ln2: c.low(r * d),
                ln2_mean: c.f32(r),
                ln2_rstd: c.f32(r),
                fc1: c.low(r * m),
                gelu: c.low(r * m),
            })
            .collect();
        Acts {
            images,
            patches,
            patch_out,
            blocks,
            x_last: c.f32(r * d),
            pooled: c.f32(z.b * d),
            normed: c.low(z.b * d),
            mean: c.f32(z.b),
            rstd: c.f32(z.b),
            logits: c.f32(z.b * z.k),
            dlogits: c.low(z.b * z.k),
            dx: c.f32(r * d),
            dx_low: c.copy(r * d),
            dln: c.f32(r * d),
            dattn: c.low(r * d),
            dqkv: c.low(3 * r * d),
            dfc1: c.low(r * m),
            rowdot: c.f32(rows),
            dpooled: c.f32(z.b * d),
            dnormed: c.f32(z.b * d),
            dpatch: c.low(z.b * z.n * d),
            ln_scratch: c.f32(z.ln_scratch()),
            splitk: c.f32(splitk),
        }
    }

    /// The residual-stream gradient as a matmul's dY, in the step's precision.
    fn dy(&self) -> Operand {
        self.dx_low.map_or(Operand::F32(self.dx), Operand::Bf16)
    }
}

/// Allocates `len` elements for the buffer `what`; out of memory names it and suggests a
/// smaller batch.
fn alloc<T: Elem>(rt: &Arc<dyn Runtime>, len: usize, what: &str) -> GpuResult<DeviceBuffer<T>> {
    DeviceBuffer::new(rt, len).map_err(|e| GpuError::Memory {
        op: format!("allocating {what}"),
        message: format!(
            "{} MiB: {e}; try a smaller --batch-size",
            (len * std::mem::size_of::<T>()) >> 20
        ),
    })
}

const GIB: f64 = (1u64 << 30) as f64;

/// Above this many activation elements (an upper bound, [`act_bound`]) the usize arithmetic
/// of the carving could overflow; no device holds that much.
const MAX_COUNTED: f64 = (1u64 << 52) as f64;

/// An upper bound on the activation elements of `z` (every carved tensor is at most the
/// largest product below; 32 tensors per block and as many outside), in f64: no overflow.
fn act_bound(z: &BatchDims) -> f64 {
    let f = |v: usize| v as f64;
    let (b, t) = (f(z.b), f(z.t));
    let largest = [
        b * f(z.image),
        b * f(z.n) * f(z.cpp),
        b * t * 3.0 * f(z.d),
        b * t * f(z.m),
        b * f(z.k),
        b * f(z.h) * t,
    ]
    .into_iter()
    .fold(0.0, f64::max);
    largest * 32.0 * (f(z.depth) + 1.0)
}

/// (fp32 elements, bf16 elements, split-K workspace) of the activations for `z`: the counting
/// pass of the carving code itself, so that size and layout cannot disagree.
fn act_counts(rt: &dyn Runtime, z: &BatchDims, precision: Precision) -> (usize, usize, usize) {
    let splitk = z.splitk_workspace(rt, precision);
    let mut count = Carvers {
        f32: Carver::counting(),
        low: Carver::counting(),
        precision,
    };
    Acts::carve(&mut count, z, splitk);
    (count.f32.used(), count.low.used(), splitk)
}

/// A ViT with its parameters, gradients and AdamW state on a device.
pub struct GpuTrainer {
    rt: Arc<dyn Runtime>,
    cfg: ModelConfig,
    layout: ParamLayout,
    precision: Precision,
    max_batch: usize,
    /// Parameters, gradients, AdamW moments and groups (`--layer-decay`,
    /// `--freeze-backbone`).
    state: ParamState,
    acts_f32: DeviceBuffer<f32>,
    acts_low: DeviceBuffer<bf16>,
    splitk: usize,
    labels: DeviceBuffer<u32>,
    /// [max_batch, K] the soft targets of a mixing step (staged per step, as the labels).
    targets: DeviceBuffer<f32>,
    stats: DeviceBuffer<f32>,
    /// The EMA of the weights (`--ema-decay`), updated after each AdamW update.
    ema: Option<DeviceEma>,
    /// Batch size of the last forward pass (0 before the first).
    batch: usize,
    /// The queued-step machinery of [`Self::submit_step`] (pipeline.rs).
    pipeline: Pipeline<StepShape, ClassInputs>,
    /// Stochastic depth of the queued training steps (`--drop-path`), see
    /// [`Self::with_drop_path`].
    drop_path: Option<DeviceDropPath>,
}

/// The device side of the weights' EMA.
struct DeviceEma {
    cfg: EmaConfig,
    /// [P] fp32, in the layout of the parameters.
    avg: DeviceBuffer<f32>,
    /// [1] the lerp weight 1 − d of the current step: a buffer, not a kernel argument, so a
    /// step graph's replay reads each step's value (staged with the step's inputs).
    weight: DeviceBuffer<f32>,
}

/// Stochastic depth on the device: the run's setting, the blocks' rates [L] and the scales
/// [L, 2, max_batch] each step stages its own into (the first L·2·B elements).
struct DeviceDropPath {
    setting: DropPath,
    rates: Vec<f64>,
    scales: DeviceBuffer<f32>,
}

impl GpuTrainer {
    /// An engine for `cfg` on `rt` holding `params`, with room for batches of `max_batch`,
    /// computing in `precision`, training the tensors `tuning` says at their rates.
    pub fn new(
        rt: Arc<dyn Runtime>,
        cfg: &ModelConfig,
        max_batch: usize,
        params: &[f32],
        adamw: AdamWConfig,
        precision: Precision,
        tuning: FineTuning,
    ) -> GpuResult<Self> {
        let bad = |m: String| GpuError::Shape {
            kernel: "engine".into(),
            message: m,
        };
        cfg.validate().map_err(|e| bad(e.to_string()))?;
        if max_batch == 0 {
            return Err(bad("batch size is 0, expected at least 1".into()));
        }
        let layout = ParamLayout::new(cfg);
        let n = layout.len;
        if params.len() != n {
            return Err(bad(format!(
                "{} parameters given, the model has {n}",
                params.len()
            )));
        }
        let groups = ParamGroups::new(&layout, tuning);
        let state = ParamState::new(&rt, params, groups, adamw, precision)?;
        let z = BatchDims::new(cfg, max_batch);
        if act_bound(&z) > MAX_COUNTED {
            return Err(GpuError::Memory {
                op: "allocating activations".into(),
                message: format!(
                    "about {:.0} GiB for batch {max_batch}: far beyond any device; try a smaller --batch-size or model",
                    act_bound(&z) * 4.0 / GIB
                ),
            });
        }
        let (n_f32, n_low, splitk) = act_counts(&*rt, &z, precision);
        let acts_f32 = alloc::<f32>(&rt, n_f32, "activations")?;
        let acts_low = alloc::<bf16>(&rt, n_low, "bf16 activations")?;
        let labels = alloc::<u32>(&rt, max_batch, "labels")?;
        let targets = alloc::<f32>(&rt, max_batch * cfg.num_classes, "soft targets")?;
        let stats = alloc::<f32>(&rt, 4, "step statistics")?;
        Ok(GpuTrainer {
            rt,
            cfg: cfg.clone(),
            layout,
            precision,
            max_batch,
            state,
            acts_f32,
            acts_low,
            splitk,
            labels,
            targets,
            stats,
            ema: None,
            batch: 0,
            pipeline: Pipeline::default(),
            drop_path: None,
        })
    }

    /// Trains with stochastic depth: the queued step i (the AdamW step count before it,
    /// restored by [`Self::try_load`]) drops the samples `StepDrops::draw(dp, i, ..)` says,
    /// as the CPU trainer does; evaluation and the unqueued `try_*` passes never drop. A rate
    /// of 0 is the same as none. Allocates the per-step scales [L, 2, max_batch].
    pub fn with_drop_path(mut self, dp: Option<DropPath>) -> GpuResult<Self> {
        self.drop_path = match dp.filter(|dp| dp.rate > 0.0) {
            None => None,
            Some(setting) => {
                let depth = self.cfg.depth;
                Some(DeviceDropPath {
                    setting,
                    rates: drop_path_rates(depth, setting.rate),
                    scales: alloc::<f32>(&self.rt, 2 * depth * self.max_batch, "drop-path scales")?,
                })
            }
        };
        Ok(self)
    }

    /// The drop-path scales of a training step of `batch` samples (in the device buffer,
    /// staged by the queued step), `None` without drop-path.
    fn drop_scales(&self, batch: usize) -> Option<DropScales<'_>> {
        self.drop_path.as_ref().map(|dp| DropScales {
            scales: dp.scales.view().slice(0, 2 * dp.rates.len() * batch),
            rates: &dp.rates,
        })
    }

    /// Bytes of device memory [`Self::new`] allocates for `cfg` at `max_batch` in `precision`
    /// on `rt` (`cfg` must be valid); f64, so that any model can be estimated.
    pub fn device_bytes(
        rt: &dyn Runtime,
        cfg: &ModelConfig,
        max_batch: usize,
        precision: Precision,
    ) -> f64 {
        // the trained state; labels and soft targets
        let fixed = ParamState::bytes(ParamLayout::new(cfg).len, precision)
            + 4.0 * max_batch as f64 * (1 + cfg.num_classes) as f64;
        let z = BatchDims::new(cfg, max_batch);
        if act_bound(&z) > MAX_COUNTED {
            return fixed + act_bound(&z) * 4.0;
        }
        let (n_f32, n_low, _) = act_counts(rt, &z, precision);
        fixed + 4.0 * n_f32 as f64 + 2.0 * n_low as f64
    }

    /// Bytes of pinned host memory the queued steps stage batches in (two slots: images,
    /// labels, soft targets).
    pub fn pinned_bytes(cfg: &ModelConfig, max_batch: usize) -> f64 {
        let per_sample = (cfg.image_len() + 1 + cfg.num_classes) as f64;
        2.0 * max_batch as f64 * per_sample * 4.0
    }

    /// The precision this engine computes in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.rt
    }

    fn acts(&self, batch: usize) -> (BatchDims, Acts) {
        let z = BatchDims::new(&self.cfg, batch);
        let mut c = Carvers {
            f32: Carver::new(self.acts_f32.view()),
            low: Carver::new(self.acts_low.view()),
            precision: self.precision,
        };
        let a = Acts::carve(&mut c, &z, self.splitk);
        (z, a)
    }

    /// The encoder's view of the parameters (encoder.rs).
    fn net(&self) -> Net<'_> {
        Net {
            rt: &*self.rt,
            cfg: &self.cfg,
            layout: &self.layout,
            params: self.state.params,
            grads: self.state.grads,
            low: self.state.low(),
        }
    }

    /// Forward pass of `images` [B, C, S, S] (normalised); keeps the activations.
    pub fn try_forward(&mut self, images: &[f32]) -> GpuResult<()> {
        let batch = self.batch_of(images)?;
        self.acts(batch).1.images.upload(&*self.rt, images)?;
        self.forward(batch, false)
    }

    /// The batch size of `images` [B, C, S, S], or why it does not fit this engine.
    fn batch_of(&self, images: &[f32]) -> GpuResult<usize> {
        let image = self.cfg.image_len();
        let batch = images.len() / image;
        if batch == 0 || batch * image != images.len() || batch > self.max_batch {
            return Err(GpuError::Shape {
                kernel: "engine forward".into(),
                message: format!(
                    "{} image values: expected B x {image} with 1 <= B <= {}",
                    images.len(),
                    self.max_batch
                ),
            });
        }
        Ok(batch)
    }

    /// Enqueues the forward pass of the `batch` images already in the images view; a
    /// `training` pass drops branches with the staged drop-path scales (when on).
    fn forward(&mut self, batch: usize, training: bool) -> GpuResult<()> {
        self.batch = batch;
        let (z, a) = self.acts(batch);
        let net = self.net();
        let drop = self.drop_scales(batch).filter(|_| training);
        net.forward_encoder(&z, &a, None, drop.as_ref())?;
        let (rt, lay, d, cfg) = (net.rt, net.layout, z.d, net.cfg);
        k::pool_forward(
            rt,
            a.pooled,
            a.x_last,
            batch,
            z.t,
            d,
            cfg.pool == Pool::Mean,
        )?;
        k::layernorm_forward(
            rt,
            a.normed,
            a.mean,
            a.rstd,
            a.pooled,
            net.p(&lay.head_norm_w),
            net.p(&lay.head_norm_b),
            d,
        )?;
        k::linear_forward(
            rt,
            Operand::F32(a.logits),
            a.normed,
            net.w(&lay.head_w),
            net.p(&lay.head_b),
            LinearEpilogue::Bias,
            batch,
            d,
            z.k,
        )
    }

    /// Logits [B, K] of the last forward pass.
    pub fn try_logits(&self) -> GpuResult<Vec<f32>> {
        let (_, a) = self.acts(self.batch);
        a.logits.to_vec(&*self.rt)
    }

    /// Attention probabilities of an evaluation forward pass of `images` [B, C, S, S]:
    /// [L, B, H, T, T] fp32, recomputed block by block from the saved q, k and log-sum-exp
    /// (the fused attention keeps no P) into a buffer of one block's [B, H, T, T].
    pub fn try_attention_probs(&mut self, images: &[f32]) -> GpuResult<Vec<f32>> {
        self.try_forward(images)?;
        let (z, a) = self.acts(self.batch);
        let s = z.attn_dims();
        let per_block = s.batch * s.heads * s.tokens * s.tokens;
        let buf = alloc::<f32>(&self.rt, per_block, "attention probabilities")?;
        let hl = s.head_len();
        let mut out = Vec::with_capacity(z.depth * per_block);
        for blk in &a.blocks {
            let (q, key) = (blk.qkv.slice(0, hl), blk.qkv.slice(hl, hl));
            k::attention_probs(&*self.rt, buf.view(), blk.lse, q, key, s)?;
            out.extend(buf.view().to_vec(&*self.rt)?);
        }
        Ok(out)
    }

    /// Loss of the last forward pass against `labels`; prepares dlogits. Runs on the device;
    /// the statistics stay there until [`Self::read_stats`].
    pub fn try_loss(&mut self, labels: &[u32], smoothing: f64) -> GpuResult<()> {
        self.check_labels(labels, self.batch)?;
        self.labels
            .view()
            .slice(0, labels.len())
            .upload(&*self.rt, labels)?;
        self.loss(false, smoothing)
    }

    /// Checks `labels` against a batch of `batch` and the model's classes.
    fn check_labels(&self, labels: &[u32], batch: usize) -> GpuResult<()> {
        if labels.len() != batch {
            return Err(GpuError::Shape {
                kernel: "engine loss".into(),
                message: format!("{} labels for a batch of {batch}", labels.len()),
            });
        }
        let classes = self.cfg.num_classes;
        if let Some(&y) = labels.iter().find(|&&y| y as usize >= classes) {
            return Err(GpuError::Shape {
                kernel: "engine loss".into(),
                message: format!("label {y} is not below the {classes} classes"),
            });
        }
        Ok(())
    }

    /// Enqueues the loss of the last forward pass against the labels already on the device,
    /// or with `soft` against the soft targets [B, K] already there.
    fn loss(&self, soft: bool, smoothing: f64) -> GpuResult<()> {
        let (z, a) = self.acts(self.batch);
        if soft {
            let targets = self.targets.view().slice(0, z.b * z.k);
            return k::soft_cross_entropy(
                &*self.rt,
                self.stats.view(),
                a.dlogits,
                a.logits,
                targets,
                z.b,
                z.k,
            );
        }
        k::cross_entropy(
            &*self.rt,
            self.stats.view(),
            a.dlogits,
            a.logits,
            &self.labels,
            z.b,
            z.k,
            smoothing as f32,
        )
    }

    /// Backward of the last forward and loss: the gradient buffer is zeroed and then holds
    /// the gradient of the mean loss. With a frozen backbone it stops after the head norm's
    /// gradient (no kernel of the blocks or the embedding runs); the gradients outside the
    /// trainable span are never written and stay zero.
    pub fn try_backward(&mut self) -> GpuResult<()> {
        self.backward(false)
    }

    /// [`Self::try_backward`] of a forward pass that was `training` or not.
    fn backward(&self, training: bool) -> GpuResult<()> {
        let (z, a) = self.acts(self.batch);
        let net = self.net();
        let (rt, lay, d, b) = (net.rt, net.layout, z.d, z.b);
        self.state.trainable(self.state.grads).fill_bytes(rt, 0)?;
        // head: dnormed = dlogits · W (fp32, into the LayerNorm backward)
        k::linear_backward_dx(
            rt,
            Operand::F32(a.dnormed),
            a.dlogits,
            net.w(&lay.head_w),
            None,
            b,
            d,
            z.k,
        )?;
        net.dw(&a, &lay.head_w, &lay.head_b, a.dlogits, a.normed, b, d, z.k)?;
        a.dpooled.fill_bytes(rt, 0)?;
        k::layernorm_backward(
            rt,
            a.dpooled,
            None,
            net.g(&lay.head_norm_w),
            net.g(&lay.head_norm_b),
            a.ln_scratch,
            a.dnormed,
            a.pooled,
            a.mean,
            a.rstd,
            net.p(&lay.head_norm_w),
            d,
        )?;
        if self.state.groups.backbone_frozen() {
            return Ok(());
        }
        k::pool_backward(
            rt,
            a.dx,
            a.dx_low,
            a.dpooled,
            b,
            z.t,
            d,
            self.cfg.pool == Pool::Mean,
        )?;
        let drop = self.drop_scales(b).filter(|_| training);
        net.backward_encoder(&z, &a, None, drop.as_ref())
    }

    /// Optional clipping (on device) and one AdamW update at base rate `lr`.
    pub fn try_update(&mut self, lr: f64, clip: Option<f64>) -> GpuResult<()> {
        self.state.step += 1;
        let hyper = self.state.hyper_values(lr);
        self.state.hyper.upload(&hyper)?;
        if let Some(e) = &mut self.ema {
            e.weight.upload(&[e.cfg.weight_at(self.state.step)])?;
        }
        self.update(clip)
    }

    /// Enqueues optional clipping and the AdamW update with the scalars already in `hyper`,
    /// then the EMA update with the weight already in its buffer (when on).
    fn update(&self, clip: Option<f64>) -> GpuResult<()> {
        self.state.update(&*self.rt, self.stats.view(), clip)?;
        match &self.ema {
            Some(e) => k::ema_update(&*self.rt, e.avg.view(), self.state.params, e.weight.view()),
            None => Ok(()),
        }
    }

    /// Enqueues a whole step on inputs already on the device: what a step graph holds.
    /// `soft`: the loss against the soft targets. Drop-path (when on) drops in this step.
    fn enqueue_step(
        &mut self,
        batch: usize,
        soft: bool,
        smoothing: f64,
        clip: Option<f64>,
    ) -> GpuResult<()> {
        self.forward(batch, true)?;
        self.loss(soft, smoothing)?;
        self.backward(true)?;
        self.update(clip)
    }

    /// Turns on the EMA of the weights (see `TrainEngine::start_ema`), starting from `avg` [P].
    pub fn try_start_ema(&mut self, cfg: EmaConfig, avg: &[f32]) -> GpuResult<()> {
        let bad = |m: String| GpuError::Shape {
            kernel: "engine EMA".into(),
            message: m,
        };
        cfg.validate().map_err(bad)?;
        if avg.len() != self.layout.len {
            return Err(bad(format!(
                "{} averaged weights given, the model has {}",
                avg.len(),
                self.layout.len
            )));
        }
        self.finish_steps()?;
        let mut buf = alloc::<f32>(&self.rt, avg.len(), "the EMA of the weights")?;
        buf.upload(avg)?;
        let weight = alloc::<f32>(&self.rt, 1, "the EMA weight")?;
        self.ema = Some(DeviceEma {
            cfg,
            avg: buf,
            weight,
        });
        // Captured graphs hold no EMA update: recapture.
        self.pipeline.clear_graphs();
        Ok(())
    }

    pub fn try_ema_params(&self) -> GpuResult<Option<Vec<f32>>> {
        self.ema.as_ref().map(|e| e.avg.to_vec()).transpose()
    }

    /// Exchanges the parameters and the average through the host (an epoch-end operation;
    /// the bf16 weight copies follow the new parameters). Buffers keep their addresses, so
    /// captured graphs stay valid.
    pub fn try_swap_ema(&mut self) -> GpuResult<()> {
        self.finish_steps()?;
        let Some(e) = &mut self.ema else {
            return Err(GpuError::Shape {
                kernel: "engine EMA".into(),
                message: "the EMA of the weights is off (no --ema-decay)".into(),
            });
        };
        let params = self.state.params.to_vec(&*self.rt)?;
        let avg = e.avg.to_vec()?;
        e.avg.upload(&params)?;
        self.state.upload(&*self.rt, &avg)
    }

    /// [loss, correct, grad norm, clip coefficient] of the last step (one small read-back).
    pub fn read_stats(&self) -> GpuResult<[f32; 4]> {
        let mut s = [0.0f32; 4];
        self.stats.download(&mut s)?;
        Ok(s)
    }

    /// One whole training step, waited for: [`Self::submit_step`] then
    /// [`Self::finish_steps`].
    pub fn try_train_step(
        &mut self,
        images: &[f32],
        labels: &[u32],
        lr: f64,
        smoothing: f64,
        clip: Option<f64>,
    ) -> GpuResult<StepOutput> {
        self.finish_steps()?;
        self.submit_step(images, labels, lr, smoothing, clip)?;
        self.finish_steps()?.ok_or_else(|| GpuError::Driver {
            op: "train step".into(),
            message: "the step queued no output".into(),
        })
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

/// The `TrainEngine` trait has no error channel: a device failure inside a step (a kernel
/// fault, a lost device) stops the program with the device's message.
impl TrainEngine for GpuTrainer {
    fn describe(&self) -> String {
        format!("{}, {}", self.rt.describe(), self.precision)
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn train_step(
        &mut self,
        images: &[f32],
        labels: &[u32],
        targets: Option<&[f32]>,
        lr: f64,
        smoothing: f64,
        clip: Option<f64>,
    ) -> anyhow::Result<Option<StepOutput>> {
        self.submit_step_with(images, labels, targets, lr, smoothing, clip)
            .in_engine("train step")
    }

    fn finish_steps(&mut self) -> anyhow::Result<Option<StepOutput>> {
        GpuTrainer::finish_steps(self).in_engine("finish the queued step")
    }

    fn logits(&mut self, images: &[f32]) -> anyhow::Result<Vec<f32>> {
        self.try_forward(images)
            .and_then(|()| self.try_logits())
            .in_engine("forward")
    }

    fn attention_probs(&mut self, images: &[f32]) -> anyhow::Result<Vec<f32>> {
        self.try_attention_probs(images)
            .in_engine("attention probabilities")
    }

    fn start_ema(&mut self, cfg: EmaConfig, ema: &[f32]) -> anyhow::Result<()> {
        self.try_start_ema(cfg, ema).in_engine("start the EMA")
    }

    fn ema_params(&self) -> anyhow::Result<Option<Vec<f32>>> {
        self.try_ema_params().in_engine("download the EMA")
    }

    fn swap_ema(&mut self) -> anyhow::Result<()> {
        self.try_swap_ema().in_engine("swap in the EMA")
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
