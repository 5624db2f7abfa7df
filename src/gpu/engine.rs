//! The device engine: the whole ViT training step (forward, loss, backward, clipping, AdamW)
//! orchestrated over the typed launchers, written once against [`Runtime`] so that it runs on
//! CUDA and on the emulator. Memory: parameters, gradients and the AdamW moments are one
//! allocation of four [`ParamLayout`]-shaped views; activations and backward scratch are one
//! allocation of named views carved per batch size (as the CPU engine does). Inside a step the
//! only host round trip is the read-back of four scalars (loss, correct, norm, clip coef).

use std::sync::Arc;

use super::error::{GpuError, GpuResult};
use super::kernels::{self as k, AttnDims, LinearEpilogue};
use super::runtime::{Carver, DView, DeviceBuffer, Runtime};
use crate::engine::{OptimizerState, StepOutput, TrainEngine};
use crate::model::{BatchDims, ModelConfig, ParamLayout, Pool};
use crate::optim::AdamWConfig;

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
    fn colsum_scratch(&self) -> usize {
        let r = self.rows();
        [
            (r, 3 * self.d),
            (r, self.m),
            (r, self.d),
            (self.b * self.n, self.d),
            (self.b, self.k),
        ]
        .iter()
        .map(|&(rows, cols)| k::colsum_scratch_len(rows, cols))
        .max()
        .unwrap_or(0)
    }
}

/// Activations of one block saved for backward.
struct BlockActs {
    x: DView,        // [R, D] block input (residual stream)
    ln1: DView,      // [R, D]
    ln1_mean: DView, // [R]
    ln1_rstd: DView, // [R]
    qkv: DView,      // [3, B, H, T, hd] head-major q | k | v
    probs: DView,    // [B, H, T, T]
    attn: DView,     // [R, D] heads concatenated (proj input)
    x_mid: DView,    // [R, D] x + proj(attn)
    ln2: DView,      // [R, D]
    ln2_mean: DView, // [R]
    ln2_rstd: DView, // [R]
    fc1: DView,      // [R, M] pre-activation
    gelu: DView,     // [R, M] gelu(fc1) (fc2 input)
}

/// Every activation and scratch view of one batch size.
struct Acts {
    images: DView,    // [B, C, S, S]
    patches: DView,   // [B·N, C·P·P]
    patch_out: DView, // [B·N, D]
    blocks: Vec<BlockActs>,
    x_last: DView,  // [R, D]
    pooled: DView,  // [B, D]
    normed: DView,  // [B, D]
    mean: DView,    // [B]
    rstd: DView,    // [B]
    logits: DView,  // [B, K]
    dlogits: DView, // [B, K]
    // backward scratch
    dx: DView,      // [R, D] residual-stream gradient
    dln: DView,     // [R, D]
    dattn: DView,   // [R, D]
    dqkv: DView,    // [R, 3D] token-major
    dgelu: DView,   // [R, M]
    dfc1: DView,    // [R, M]
    ds: DView,      // [B, H, T, T]
    dpooled: DView, // [B, D]
    dnormed: DView, // [B, D]
    dpatch: DView,  // [B·N, D]
    ln_scratch: DView,
    colsum_scratch: DView,
}

impl Acts {
    /// Carves the views for `z` from the front of `c`; with `c = None` only counts.
    fn carve(c: &mut Carver, z: &BatchDims) -> Self {
        let (r, d, m) = (z.rows(), z.d, z.m);
        let probs = z.b * z.h * z.t * z.t;
        let images = c.take(z.b * z.image);
        let patches = c.take(z.b * z.n * z.cpp);
        let patch_out = c.take(z.b * z.n * d);
        let blocks = (0..z.depth)
            .map(|_| BlockActs {
                x: c.take(r * d),
                ln1: c.take(r * d),
                ln1_mean: c.take(r),
                ln1_rstd: c.take(r),
                qkv: c.take(3 * r * d),
                probs: c.take(probs),
                attn: c.take(r * d),
                x_mid: c.take(r * d),
                ln2: c.take(r * d),
                ln2_mean: c.take(r),
                ln2_rstd: c.take(r),
                fc1: c.take(r * m),
                gelu: c.take(r * m),
            })
            .collect();
        Acts {
            images,
            patches,
            patch_out,
            blocks,
            x_last: c.take(r * d),
            pooled: c.take(z.b * d),
            normed: c.take(z.b * d),
            mean: c.take(z.b),
            rstd: c.take(z.b),
            logits: c.take(z.b * z.k),
            dlogits: c.take(z.b * z.k),
            dx: c.take(r * d),
            dln: c.take(r * d),
            dattn: c.take(r * d),
            dqkv: c.take(3 * r * d),
            dgelu: c.take(r * m),
            dfc1: c.take(r * m),
            ds: c.take(probs),
            dpooled: c.take(z.b * d),
            dnormed: c.take(z.b * d),
            dpatch: c.take(z.b * z.n * d),
            ln_scratch: c.take(z.ln_scratch()),
            colsum_scratch: c.take(z.colsum_scratch()),
        }
    }

    /// Elements the activations of `z` need.
    fn len(z: &BatchDims) -> usize {
        let (r, d, m) = (z.rows(), z.d, z.m);
        let probs = z.b * z.h * z.t * z.t;
        let block = 5 * r * d + 4 * r + 3 * r * d + probs + 2 * r * m;
        z.b * z.image
            + z.b * z.n * (z.cpp + d)
            + z.depth * block
            + r * d
            + 2 * z.b * d
            + 2 * z.b
            + 2 * z.b * z.k
            + 3 * r * d
            + 3 * r * d
            + 2 * r * m
            + probs
            + 2 * z.b * d
            + z.b * z.n * d
            + z.ln_scratch()
            + z.colsum_scratch()
    }
}

/// Allocates `len` f32s for the buffer `what`; out of memory names it and suggests a
/// smaller batch.
fn alloc<T: bytemuck::Pod>(
    rt: &Arc<dyn Runtime>,
    len: usize,
    what: &str,
) -> GpuResult<DeviceBuffer<T>> {
    DeviceBuffer::new(rt, len).map_err(|e| GpuError::Memory {
        op: format!("allocating {what}"),
        message: format!(
            "{} MiB: {e}; try a smaller --batch-size",
            (len * std::mem::size_of::<T>()) >> 20
        ),
    })
}

/// A ViT with its parameters, gradients and AdamW state on a device.
pub struct GpuTrainer {
    rt: Arc<dyn Runtime>,
    cfg: ModelConfig,
    layout: ParamLayout,
    adamw: AdamWConfig,
    max_batch: usize,
    _state: DeviceBuffer<f32>,
    params: DView,
    grads: DView,
    m: DView,
    v: DView,
    decay: DeviceBuffer<u8>,
    acts_buf: DeviceBuffer<f32>,
    labels: DeviceBuffer<u32>,
    stats: DeviceBuffer<f32>,
    norm_partial: DeviceBuffer<f64>,
    step: u64,
    /// Batch size of the last forward pass (0 before the first).
    batch: usize,
}

impl GpuTrainer {
    /// An engine for `cfg` on `rt` holding `params`, with room for batches of `max_batch`.
    pub fn new(
        rt: Arc<dyn Runtime>,
        cfg: &ModelConfig,
        max_batch: usize,
        params: &[f32],
        adamw: AdamWConfig,
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
        p.upload(&*rt, params)?;
        g.fill_bytes(&*rt, 0)?;
        m.fill_bytes(&*rt, 0)?;
        v.fill_bytes(&*rt, 0)?;
        let mut mask = vec![0u8; n];
        for e in &layout.entries {
            if e.decay {
                mask[e.range.clone()].fill(1);
            }
        }
        let mut decay = alloc::<u8>(&rt, n, "weight-decay mask")?;
        decay.upload(&mask)?;
        let z = BatchDims::new(cfg, max_batch);
        let acts_buf = alloc::<f32>(&rt, Acts::len(&z), "activations")?;
        let labels = alloc::<u32>(&rt, max_batch, "labels")?;
        let stats = alloc::<f32>(&rt, 4, "step statistics")?;
        let norm_partial = alloc::<f64>(&rt, k::NORM_BLOCKS, "gradient norm partials")?;
        Ok(GpuTrainer {
            rt,
            cfg: cfg.clone(),
            layout,
            adamw,
            max_batch,
            _state: state,
            params: p,
            grads: g,
            m,
            v,
            decay,
            acts_buf,
            labels,
            stats,
            norm_partial,
            step: 0,
            batch: 0,
        })
    }

    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.rt
    }

    fn acts(&self, batch: usize) -> (BatchDims, Acts) {
        let z = BatchDims::new(&self.cfg, batch);
        let mut c = Carver::new(self.acts_buf.view());
        let a = Acts::carve(&mut c, &z);
        debug_assert_eq!(
            c.used(),
            Acts::len(&z),
            "Acts::len and Acts::carve disagree"
        );
        (z, a)
    }

    /// The parameter (or, with `of = grads`, gradient) view of a layout range.
    fn p(&self, r: &std::ops::Range<usize>) -> DView {
        self.params.slice(r.start, r.len())
    }
    fn g(&self, r: &std::ops::Range<usize>) -> DView {
        self.grads.slice(r.start, r.len())
    }

    /// Forward pass of `images` [B, C, S, S] (normalised); keeps the activations.
    pub fn try_forward(&mut self, images: &[f32]) -> GpuResult<()> {
        let image = self.cfg.in_chans * self.cfg.image_size * self.cfg.image_size;
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
        self.batch = batch;
        let rt = &*self.rt;
        let lay = &self.layout;
        let (z, a) = self.acts(batch);
        let (r, d, m) = (z.rows(), z.d, z.m);
        a.images.upload(rt, images)?;
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
            a.patch_out,
            a.patches,
            self.p(&lay.patch_w),
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
        let hl = z.attn_dims().head_len_pub();
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
                self.p(&w.qkv_w),
                self.p(&w.qkv_b),
                batch,
                z.t,
                z.h,
                d,
            )?;
            k::attention_forward(
                rt,
                blk.attn,
                blk.probs,
                blk.qkv.slice(0, hl),
                blk.qkv.slice(hl, hl),
                blk.qkv.slice(2 * hl, hl),
                z.attn_dims(),
                true,
            )?;
            k::linear_forward(
                rt,
                blk.x_mid,
                blk.attn,
                self.p(&w.proj_w),
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
                self.p(&w.fc1_w),
                self.p(&w.fc1_b),
                LinearEpilogue::Gelu { pre: blk.fc1 },
                r,
                d,
                m,
            )?;
            k::linear_forward(
                rt,
                x_next,
                blk.gelu,
                self.p(&w.fc2_w),
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
            a.logits,
            a.normed,
            self.p(&lay.head_w),
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

    /// Loss of the last forward pass against `labels`; prepares dlogits. Runs on the device;
    /// the statistics stay there until [`Self::read_stats`].
    pub fn try_loss(&mut self, labels: &[u32], smoothing: f64) -> GpuResult<()> {
        let (z, a) = self.acts(self.batch);
        if labels.len() != z.b {
            return Err(GpuError::Shape {
                kernel: "engine loss".into(),
                message: format!("{} labels for a batch of {}", labels.len(), z.b),
            });
        }
        if let Some(&y) = labels.iter().find(|&&y| y as usize >= z.k) {
            return Err(GpuError::Shape {
                kernel: "engine loss".into(),
                message: format!("label {y} is not below the {} classes", z.k),
            });
        }
        let mut padded = labels.to_vec();
        padded.resize(self.max_batch, 0);
        self.labels.upload(&padded)?;
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
    /// the gradient of the mean loss.
    pub fn try_backward(&mut self) -> GpuResult<()> {
        let rt = &*self.rt;
        let lay = &self.layout;
        let (z, a) = self.acts(self.batch);
        let (r, d, m, b) = (z.rows(), z.d, z.m, z.b);
        let cs = a.colsum_scratch;
        self.grads.fill_bytes(rt, 0)?;
        // linear backward: dx (optional, overwritten), dW += dyᵀ x, db += Σ dy
        let linear = |dx: Option<DView>,
                      wr: &std::ops::Range<usize>,
                      br: &std::ops::Range<usize>,
                      dy: DView,
                      x: DView,
                      rows: usize,
                      i: usize,
                      o: usize|
         -> GpuResult<()> {
            if let Some(dx) = dx {
                k::linear_backward_dx(rt, dx, dy, self.p(wr), rows, i, o)?;
            }
            k::linear_backward_dw(rt, self.g(wr), dy, x, rows, i, o)?;
            k::column_sums_into(rt, self.g(br), cs, dy, rows, o)
        };
        linear(
            Some(a.dnormed),
            &lay.head_w,
            &lay.head_b,
            a.dlogits,
            a.normed,
            b,
            d,
            z.k,
        )?;
        a.dpooled.fill_bytes(rt, 0)?;
        k::layernorm_backward(
            rt,
            a.dpooled,
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
        k::pool_backward(rt, a.dx, a.dpooled, b, z.t, d, self.cfg.pool == Pool::Mean)?;
        let hl = z.attn_dims().head_len_pub();
        for (blk, w) in a.blocks.iter().zip(&lay.blocks).rev() {
            linear(Some(a.dgelu), &w.fc2_w, &w.fc2_b, a.dx, blk.gelu, r, m, d)?;
            k::gelu_backward(rt, a.dfc1, a.dgelu, blk.fc1)?;
            linear(Some(a.dln), &w.fc1_w, &w.fc1_b, a.dfc1, blk.ln2, r, d, m)?;
            k::layernorm_backward(
                rt,
                a.dx,
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
            linear(Some(a.dattn), &w.proj_w, &w.proj_b, a.dx, blk.attn, r, d, d)?;
            k::attention_backward(
                rt,
                a.dqkv,
                a.ds,
                a.dattn,
                blk.probs,
                blk.qkv.slice(0, hl),
                blk.qkv.slice(hl, hl),
                blk.qkv.slice(2 * hl, hl),
                z.attn_dims(),
                true,
            )?;
            linear(
                Some(a.dln),
                &w.qkv_w,
                &w.qkv_b,
                a.dqkv,
                blk.ln1,
                r,
                d,
                3 * d,
            )?;
            k::layernorm_backward(
                rt,
                a.dx,
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
        linear(
            None,
            &lay.patch_w,
            &lay.patch_b,
            a.dpatch,
            a.patches,
            b * z.n,
            z.cpp,
            d,
        )
    }

    /// Optional clipping (on device) and one AdamW update at rate `lr`.
    pub fn try_update(&mut self, lr: f64, clip: Option<f64>) -> GpuResult<()> {
        let rt = &*self.rt;
        if let Some(max) = clip {
            k::grad_norm_clip(rt, self.stats.view(), &self.norm_partial, self.grads, max)?;
        }
        self.step += 1;
        k::adamw(
            rt,
            self.params,
            self.m,
            self.v,
            self.grads,
            &self.decay,
            clip.map(|_| self.stats.view()),
            k::AdamWStep::new(&self.adamw, self.step, lr),
        )
    }

    /// [loss, correct, grad norm, clip coefficient] of the last step (one small read-back).
    pub fn read_stats(&self) -> GpuResult<[f32; 4]> {
        self.rt.synchronize()?;
        let mut s = [0.0f32; 4];
        self.stats.download(&mut s)?;
        Ok(s)
    }

    /// One whole training step.
    pub fn try_train_step(
        &mut self,
        images: &[f32],
        labels: &[u32],
        lr: f64,
        smoothing: f64,
        clip: Option<f64>,
    ) -> GpuResult<StepOutput> {
        self.try_forward(images)?;
        self.try_loss(labels, smoothing)?;
        self.try_backward()?;
        self.try_update(lr, clip)?;
        let s = self.read_stats()?;
        Ok(StepOutput {
            loss: s[0] as f64,
            correct: s[1] as usize,
            grad_norm: clip.map(|_| s[2] as f64),
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
        let rt = &*self.rt;
        self.params.upload(rt, params)?;
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
        self.rt.describe()
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
    ) -> anyhow::Result<StepOutput> {
        self.try_train_step(images, labels, lr, smoothing, clip)
            .map_err(|e| anyhow::anyhow!("device engine: train step: {e}"))
    }

    fn logits(&mut self, images: &[f32]) -> anyhow::Result<Vec<f32>> {
        self.try_forward(images)
            .and_then(|()| self.try_logits())
            .map_err(|e| anyhow::anyhow!("device engine: forward: {e}"))
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
