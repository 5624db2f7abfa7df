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

use super::error::{GpuError, GpuResult};
use super::kernels::{self as k, AttnDims, LinearEpilogue, Operand};
use super::runtime::{BView, Carver, DView, DeviceBuffer, Elem, Runtime};
use crate::engine::{OptimizerState, Precision, StepOutput, TrainEngine};
use crate::model::{BatchDims, ModelConfig, ParamLayout, Pool};
use crate::optim::{device_hyper, hyper_len, AdamWConfig, FineTuning, ParamGroups};

mod pipeline;
use pipeline::Pipeline;

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
    adamw: AdamWConfig,
    precision: Precision,
    max_batch: usize,
    _state: DeviceBuffer<f32>,
    params: DView,
    grads: DView,
    m: DView,
    v: DView,
    /// The bf16 copy of the parameters the bf16 matmuls read (bf16 path only).
    params_low: Option<DeviceBuffer<bf16>>,
    /// Which tensors train, at which rate (`--layer-decay`, `--freeze-backbone`).
    groups: ParamGroups,
    /// [trainable span] the optimizer group of each trainable scalar (constant).
    group_table: DeviceBuffer<u16>,
    acts_f32: DeviceBuffer<f32>,
    acts_low: DeviceBuffer<bf16>,
    splitk: usize,
    labels: DeviceBuffer<u32>,
    stats: DeviceBuffer<f32>,
    /// The step's AdamW scalars ([`device_hyper`]: shared, then per group), read by the
    /// update kernel.
    hyper: DeviceBuffer<f32>,
    norm_partial: DeviceBuffer<f64>,
    step: u64,
    /// Batch size of the last forward pass (0 before the first).
    batch: usize,
    /// The queued-step machinery of [`Self::submit_step`] (pipeline.rs).
    pipeline: Pipeline,
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
        let state = alloc::<f32>(&rt, 4 * n, "parameters, gradients and AdamW moments")?;
        let mut c = Carver::new(state.view());
        let (p, g, m, v) = (c.take(n), c.take(n), c.take(n), c.take(n));
        g.fill_bytes(&*rt, 0)?;
        m.fill_bytes(&*rt, 0)?;
        v.fill_bytes(&*rt, 0)?;
        let params_low = match precision {
            Precision::Fp32 => None,
            Precision::Bf16 => Some(alloc::<bf16>(&rt, n, "bf16 weight copies")?),
        };
        let groups = ParamGroups::new(&layout, tuning);
        let table = groups.group_table();
        let mut group_table = alloc::<u16>(&rt, table.len(), "optimizer group table")?;
        group_table.upload(&table)?;
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
        let stats = alloc::<f32>(&rt, 4, "step statistics")?;
        let hyper = alloc::<f32>(&rt, hyper_len(groups.groups.len()), "AdamW scalars")?;
        let norm_partial = alloc::<f64>(&rt, k::NORM_BLOCKS, "gradient norm partials")?;
        let mut engine = GpuTrainer {
            rt,
            cfg: cfg.clone(),
            layout,
            adamw,
            precision,
            max_batch,
            _state: state,
            params: p,
            grads: g,
            m,
            v,
            params_low,
            groups,
            group_table,
            acts_f32,
            acts_low,
            splitk,
            labels,
            stats,
            hyper,
            norm_partial,
            step: 0,
            batch: 0,
            pipeline: Pipeline::new(),
        };
        engine.upload_params(params)?;
        Ok(engine)
    }

    /// Bytes of device memory [`Self::new`] allocates for `cfg` at `max_batch` in `precision`
    /// on `rt` (`cfg` must be valid); f64, so that any model can be estimated.
    pub fn device_bytes(
        rt: &dyn Runtime,
        cfg: &ModelConfig,
        max_batch: usize,
        precision: Precision,
    ) -> f64 {
        let n = ParamLayout::new(cfg).len as f64;
        let low = match precision {
            Precision::Fp32 => 0.0,
            Precision::Bf16 => 2.0 * n,
        };
        // parameters, gradients, m, v; bf16 weights; the optimizer group table (u16, at most
        // one per parameter); labels
        let fixed = 16.0 * n + low + 2.0 * n + 4.0 * max_batch as f64;
        let z = BatchDims::new(cfg, max_batch);
        if act_bound(&z) > MAX_COUNTED {
            return fixed + act_bound(&z) * 4.0;
        }
        let (n_f32, n_low, _) = act_counts(rt, &z, precision);
        fixed + 4.0 * n_f32 as f64 + 2.0 * n_low as f64
    }

    /// Bytes of pinned host memory the queued steps stage batches in (two slots).
    pub fn pinned_bytes(cfg: &ModelConfig, max_batch: usize) -> f64 {
        let image = cfg.image_len() as f64;
        2.0 * max_batch as f64 * (image + 1.0) * 4.0
    }

    /// The precision this engine computes in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Uploads the master parameters and, on the bf16 path, their bf16 copies (rounded to
    /// nearest even, as the AdamW kernel rounds them afterwards).
    fn upload_params(&mut self, params: &[f32]) -> GpuResult<()> {
        self.params.upload(&*self.rt, params)?;
        if let Some(low) = &mut self.params_low {
            let copy: Vec<bf16> = params.iter().map(|&p| bf16::from_f32(p)).collect();
            low.upload(&copy)?;
        }
        Ok(())
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

    /// The fp32 parameter view of a layout range (biases, norms, embeddings).
    fn p(&self, r: &std::ops::Range<usize>) -> DView {
        self.params.slice(r.start, r.len())
    }
    /// A weight as a matmul operand: fp32, or its bf16 copy on the bf16 path.
    fn w(&self, r: &std::ops::Range<usize>) -> Operand {
        match &self.params_low {
            None => Operand::F32(self.p(r)),
            Some(low) => Operand::Bf16(low.view().slice(r.start, r.len())),
        }
    }
    fn g(&self, r: &std::ops::Range<usize>) -> DView {
        self.grads.slice(r.start, r.len())
    }

    /// Forward pass of `images` [B, C, S, S] (normalised); keeps the activations.
    pub fn try_forward(&mut self, images: &[f32]) -> GpuResult<()> {
        let batch = self.batch_of(images)?;
        self.acts(batch).1.images.upload(&*self.rt, images)?;
        self.forward(batch)
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

    /// Enqueues the forward pass of the `batch` images already in the images view.
    fn forward(&mut self, batch: usize) -> GpuResult<()> {
        self.batch = batch;
        let rt = &*self.rt;
        let lay = &self.layout;
        let (z, a) = self.acts(batch);
        let (r, d, m) = (z.rows(), z.d, z.m);
        let cfg = &self.cfg;
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
        let x0 = a.blocks.first().map(|b| b.x).unwrap_or(a.x_last);
        k::tokens_forward(
            rt,
            x0,
            a.patch_out,
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
            k::linear_forward(
                rt,
                Operand::F32(blk.x_mid),
                blk.attn,
                self.w(&w.proj_w),
                self.p(&w.proj_b),
                LinearEpilogue::Residual(blk.x),
                r,
                d,
                d,
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
            k::linear_forward(
                rt,
                Operand::F32(x_next),
                blk.gelu,
                self.w(&w.fc2_w),
                self.p(&w.fc2_b),
                LinearEpilogue::Residual(blk.x_mid),
                r,
                m,
                d,
            )?;
        }
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
            self.p(&lay.head_norm_w),
            self.p(&lay.head_norm_b),
            d,
        )?;
        k::linear_forward(
            rt,
            Operand::F32(a.logits),
            a.normed,
            self.w(&lay.head_w),
            self.p(&lay.head_b),
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
        self.loss(smoothing)
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

    /// Enqueues the loss of the last forward pass against the labels already on the device.
    fn loss(&self, smoothing: f64) -> GpuResult<()> {
        let (z, a) = self.acts(self.batch);
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
        let rt = &*self.rt;
        let lay = &self.layout;
        let (z, a) = self.acts(self.batch);
        let (r, d, m, b) = (z.rows(), z.d, z.m, z.b);
        self.trainable(self.grads).fill_bytes(rt, 0)?;
        // Weight and bias gradients of one linear layer: dW += dyᵀ x, db += Σ dy.
        let dw = |wr: &std::ops::Range<usize>,
                  br: &std::ops::Range<usize>,
                  dy: Operand,
                  x: Operand,
                  rows: usize,
                  i: usize,
                  o: usize|
         -> GpuResult<()> {
            k::linear_backward_dw(
                rt,
                self.g(wr),
                Some(self.g(br)),
                a.splitk,
                dy,
                x,
                rows,
                i,
                o,
            )
        };
        // head: dnormed = dlogits · W (fp32, into the LayerNorm backward)
        k::linear_backward_dx(
            rt,
            Operand::F32(a.dnormed),
            a.dlogits,
            self.w(&lay.head_w),
            None,
            b,
            d,
            z.k,
        )?;
        dw(&lay.head_w, &lay.head_b, a.dlogits, a.normed, b, d, z.k)?;
        a.dpooled.fill_bytes(rt, 0)?;
        k::layernorm_backward(
            rt,
            a.dpooled,
            None,
            self.g(&lay.head_norm_w),
            self.g(&lay.head_norm_b),
            a.ln_scratch,
            a.dnormed,
            a.pooled,
            a.mean,
            a.rstd,
            self.p(&lay.head_norm_w),
            d,
        )?;
        if self.groups.backbone_frozen() {
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
        let hl = z.attn_dims().head_len();
        for (blk, w) in a.blocks.iter().zip(&lay.blocks).rev() {
            // fc2: its dX times gelu'(fc1) is fc1's pre-activation gradient
            k::linear_backward_dx(rt, a.dfc1, a.dy(), self.w(&w.fc2_w), Some(blk.fc1), r, m, d)?;
            dw(&w.fc2_w, &w.fc2_b, a.dy(), blk.gelu, r, m, d)?;
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
            dw(&w.fc1_w, &w.fc1_b, a.dfc1, blk.ln2, r, d, m)?;
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
            k::linear_backward_dx(rt, a.dattn, a.dy(), self.w(&w.proj_w), None, r, d, d)?;
            dw(&w.proj_w, &w.proj_b, a.dy(), blk.attn, r, d, d)?;
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
            dw(&w.qkv_w, &w.qkv_b, a.dqkv, blk.ln1, r, d, 3 * d)?;
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
        k::tokens_backward(
            rt,
            a.dpatch,
            self.g(&lay.pos_embed),
            lay.cls_token.as_ref().map(|c| self.g(c)),
            a.dx,
            b,
            d,
        )?;
        dw(
            &lay.patch_w,
            &lay.patch_b,
            a.dpatch,
            a.patches,
            b * z.n,
            z.cpp,
            d,
        )
    }

    /// Optional clipping (on device) and one AdamW update at base rate `lr`.
    pub fn try_update(&mut self, lr: f64, clip: Option<f64>) -> GpuResult<()> {
        self.step += 1;
        let hyper = self.hyper_values(lr);
        self.hyper.upload(&hyper)?;
        self.update(clip)
    }

    /// The AdamW scalars of step `self.step` at base rate `lr` (the `hyper` buffer's values).
    fn hyper_values(&self, lr: f64) -> Vec<f32> {
        device_hyper(&self.adamw, self.step, lr, &self.groups.groups)
    }

    /// The trainable tensors' part of a parameter-shaped view.
    fn trainable(&self, v: DView) -> DView {
        let span = self.groups.trainable();
        v.slice(span.start, span.len())
    }

    /// Enqueues optional clipping of the trainable tensors' gradients and the AdamW update
    /// of the trainable tensors with the scalars already in `hyper`.
    fn update(&self, clip: Option<f64>) -> GpuResult<()> {
        let rt = &*self.rt;
        let grads = self.trainable(self.grads);
        if let Some(max) = clip {
            k::grad_norm_clip(rt, self.stats.view(), &self.norm_partial, grads, max)?;
        }
        let span = self.groups.trainable();
        k::adamw(
            rt,
            self.trainable(self.params),
            self.params_low
                .as_ref()
                .map(|b| b.view().slice(span.start, span.len())),
            self.trainable(self.m),
            self.trainable(self.v),
            grads,
            self.group_table.view(),
            self.groups.groups.len(),
            clip.map(|_| self.stats.view()),
            self.hyper.view(),
        )
    }

    /// Enqueues a whole step on inputs already on the device: what a step graph holds.
    fn enqueue_step(&mut self, batch: usize, smoothing: f64, clip: Option<f64>) -> GpuResult<()> {
        self.forward(batch)?;
        self.loss(smoothing)?;
        self.try_backward()?;
        self.update(clip)
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
        self.grads.to_vec(&*self.rt)
    }

    pub fn try_params(&self) -> GpuResult<Vec<f32>> {
        self.params.to_vec(&*self.rt)
    }

    pub fn try_optimizer_state(&self) -> GpuResult<OptimizerState> {
        Ok(OptimizerState {
            m: self.m.to_vec(&*self.rt)?,
            v: self.v.to_vec(&*self.rt)?,
            step: self.step,
        })
    }

    pub fn try_load(&mut self, params: &[f32], opt: Option<&OptimizerState>) -> GpuResult<()> {
        self.finish_steps()?;
        self.upload_params(params)?;
        let rt = &*self.rt;
        if let Some(o) = opt {
            self.m.upload(rt, &o.m)?;
            self.v.upload(rt, &o.v)?;
            self.step = o.step;
        }
        Ok(())
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
        lr: f64,
        smoothing: f64,
        clip: Option<f64>,
    ) -> anyhow::Result<Option<StepOutput>> {
        self.submit_step(images, labels, lr, smoothing, clip)
            .map_err(|e| anyhow::anyhow!("device engine: train step: {e}"))
    }

    fn finish_steps(&mut self) -> anyhow::Result<Option<StepOutput>> {
        GpuTrainer::finish_steps(self)
            .map_err(|e| anyhow::anyhow!("device engine: finish the queued step: {e}"))
    }

    fn logits(&mut self, images: &[f32]) -> anyhow::Result<Vec<f32>> {
        self.try_forward(images)
            .and_then(|()| self.try_logits())
            .map_err(|e| anyhow::anyhow!("device engine: forward: {e}"))
    }

    fn attention_probs(&mut self, images: &[f32]) -> anyhow::Result<Vec<f32>> {
        self.try_attention_probs(images)
            .map_err(|e| anyhow::anyhow!("device engine: attention probabilities: {e}"))
    }

    fn params(&self) -> anyhow::Result<Vec<f32>> {
        self.try_params()
            .map_err(|e| anyhow::anyhow!("device engine: download parameters: {e}"))
    }

    fn optimizer_state(&self) -> anyhow::Result<OptimizerState> {
        self.try_optimizer_state()
            .map_err(|e| anyhow::anyhow!("device engine: download optimizer state: {e}"))
    }

    fn load(&mut self, params: &[f32], opt: Option<&OptimizerState>) -> anyhow::Result<()> {
        self.try_load(params, opt)
            .map_err(|e| anyhow::anyhow!("device engine: upload parameters: {e}"))
    }
}
