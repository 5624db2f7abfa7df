//! The trained state of a device engine: parameters, gradients and AdamW moments (one
//! allocation of four layout-shaped views), the bf16 weight copies on the bf16 path, the
//! optimizer groups and the AdamW update (optional clipping first). Shared by the classifier
//! ([`super::GpuTrainer`]) and the pre-training model ([`super::GpuPretrainer`]), which differ in
//! their layouts and groups only.

use std::sync::Arc;

use half::bf16;

use super::alloc;
use crate::engine::{OptimizerState, Precision};
use crate::gpu::error::GpuResult;
use crate::gpu::kernels as k;
use crate::gpu::runtime::{BView, Carver, DView, DeviceBuffer, Runtime};
use crate::optim::{device_hyper, hyper_len, AdamWConfig, ParamGroups};

pub(super) struct ParamState {
    _buf: DeviceBuffer<f32>,
    pub(super) params: DView, // [P] fp32 master weights
    pub(super) grads: DView,  // [P]
    pub(super) m: DView,      // [P]
    pub(super) v: DView,      // [P]
    /// [P] the bf16 copy of the parameters the bf16 matmuls read (bf16 path only).
    low: Option<DeviceBuffer<bf16>>,
    /// Which tensors train, at which rate.
    pub(super) groups: ParamGroups,
    /// [trainable span] the optimizer group of each trainable scalar (constant).
    group_table: DeviceBuffer<u16>,
    /// The step's AdamW scalars ([`device_hyper`]: shared, then per group), read by the
    /// update kernel.
    pub(super) hyper: DeviceBuffer<f32>,
    norm_partial: DeviceBuffer<f64>,
    adamw: AdamWConfig,
    /// AdamW steps taken.
    pub(super) step: u64,
}

impl ParamState {
    /// Holds `params` (laid out as `groups` was planned), zero gradients and moments.
    pub(super) fn new(
        rt: &Arc<dyn Runtime>,
        params: &[f32],
        groups: ParamGroups,
        adamw: AdamWConfig,
        precision: Precision,
    ) -> GpuResult<Self> {
        let n = params.len();
        let buf = alloc::<f32>(rt, 4 * n, "parameters, gradients and AdamW moments")?;
        let mut c = Carver::new(buf.view());
        let (p, g, m, v) = (c.take(n), c.take(n), c.take(n), c.take(n));
        for zero in [g, m, v] {
            zero.fill_bytes(&**rt, 0)?;
        }
        let low = match precision {
            Precision::Fp32 => None,
            Precision::Bf16 => Some(alloc::<bf16>(rt, n, "bf16 weight copies")?),
        };
        let table = groups.group_table();
        let mut group_table = alloc::<u16>(rt, table.len(), "optimizer group table")?;
        group_table.upload(&table)?;
        let hyper = alloc::<f32>(rt, hyper_len(groups.groups.len()), "AdamW scalars")?;
        let norm_partial = alloc::<f64>(rt, k::NORM_BLOCKS, "gradient norm partials")?;
        let mut state = ParamState {
            _buf: buf,
            params: p,
            grads: g,
            m,
            v,
            low,
            groups,
            group_table,
            hyper,
            norm_partial,
            adamw,
            step: 0,
        };
        state.upload(&**rt, params)?;
        Ok(state)
    }

    /// Bytes [`Self::new`] allocates for `n` parameters, the small buffers aside: parameters,
    /// gradients, m, v; the bf16 weights; the group table (u16, at most one per parameter).
    pub(super) fn bytes(n: usize, precision: Precision) -> f64 {
        let n = n as f64;
        let low = match precision {
            Precision::Fp32 => 0.0,
            Precision::Bf16 => 2.0 * n,
        };
        16.0 * n + low + 2.0 * n
    }

    /// Uploads the master parameters and, on the bf16 path, their bf16 copies (rounded to
    /// nearest even, as the AdamW kernel rounds them afterwards).
    pub(super) fn upload(&mut self, rt: &dyn Runtime, params: &[f32]) -> GpuResult<()> {
        self.params.upload(rt, params)?;
        if let Some(low) = &mut self.low {
            let copy: Vec<bf16> = params.iter().map(|&p| bf16::from_f32(p)).collect();
            low.upload(&copy)?;
        }
        Ok(())
    }

    /// The bf16 weight copies (bf16 path only).
    pub(super) fn low(&self) -> Option<BView> {
        self.low.as_ref().map(|b| b.view())
    }

    /// The AdamW scalars of step `self.step` at base rate `lr` (the `hyper` buffer's values).
    pub(super) fn hyper_values(&self, lr: f64) -> Vec<f32> {
        device_hyper(&self.adamw, self.step, lr, &self.groups.groups)
    }

    /// The trainable tensors' part of a parameter-shaped view.
    pub(super) fn trainable(&self, v: DView) -> DView {
        let span = self.groups.trainable();
        v.slice(span.start, span.len())
    }

    /// Enqueues optional clipping of the trainable tensors' gradients (norm and coefficient
    /// into stats[2..4]) and the AdamW update of the trainable tensors with the scalars
    /// already in `hyper`.
    pub(super) fn update(
        &self,
        rt: &dyn Runtime,
        stats: DView,
        clip: Option<f64>,
    ) -> GpuResult<()> {
        let grads = self.trainable(self.grads);
        if let Some(max) = clip {
            k::grad_norm_clip(rt, stats, &self.norm_partial, grads, max)?;
        }
        let span = self.groups.trainable();
        k::adamw(
            rt,
            self.trainable(self.params),
            self.low().map(|b| b.slice(span.start, span.len())),
            self.trainable(self.m),
            self.trainable(self.v),
            grads,
            self.group_table.view(),
            self.groups.groups.len(),
            clip.map(|_| stats),
            self.hyper.view(),
        )
    }

    pub(super) fn optimizer_state(&self, rt: &dyn Runtime) -> GpuResult<OptimizerState> {
        Ok(OptimizerState {
            m: self.m.to_vec(rt)?,
            v: self.v.to_vec(rt)?,
            step: self.step,
        })
    }

    /// Replaces the parameters and, when given, the moments and step count.
    pub(super) fn load(
        &mut self,
        rt: &dyn Runtime,
        params: &[f32],
        opt: Option<&OptimizerState>,
    ) -> GpuResult<()> {
        self.upload(rt, params)?;
        if let Some(o) = opt {
            self.m.upload(rt, &o.m)?;
            self.v.upload(rt, &o.v)?;
            self.step = o.step;
        }
        Ok(())
    }
}
