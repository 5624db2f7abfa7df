//! Queued training steps, for both device models. A step's inputs (images, then labels, soft
//! targets and the EMA weight, or patch masks, and the AdamW scalars) are written into pinned staging and copied to the
//! device by stream-ordered copies; the step itself is one replay of a graph captured the
//! first time its shape was seen (everything a kernel takes by value: batch size, smoothing,
//! clip threshold; `VITK_NO_GRAPH=1`: the same kernels launched one by one); its statistics
//! come back through pinned memory behind a fence. Two staging slots alternate: the host
//! fills one while the device may still read the other, and reads step i's statistics only
//! after step i + 1 is queued, so the device always has the next step waiting and the host
//! never waits inside a step.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Arc;

use super::GpuTrainer;
use crate::cpu::drop_path::step_scales;
use crate::engine::StepOutput;
use crate::gpu::error::GpuResult;
use crate::gpu::runtime::{DView, Runtime};
use crate::gpu::stream::{Fence, Graph, PinnedBuffer};
use crate::model::drop_path::StepDrops;
use crate::optim::hyper_len;

/// The pinned host side of one queued step; `I` the model's own inputs (labels, masks).
pub(super) struct StepSlot<I> {
    pub(super) images: PinnedBuffer<f32>, // [max_batch, C, S_h, S_w]
    pub(super) inputs: I,
    pub(super) hyper: PinnedBuffer<f32>, // [hyper_len(groups)] the step's AdamW scalars
    stats: PinnedBuffer<f32>,            // [4] the step's statistics
    /// Recorded after the step's statistics download: once passed, the slot is the host's.
    fence: Fence,
}

impl<I> StepSlot<I> {
    pub(super) fn new(
        rt: &Arc<dyn Runtime>,
        images: usize,
        inputs: I,
        groups: usize,
    ) -> GpuResult<Self> {
        Ok(StepSlot {
            images: PinnedBuffer::new(rt, images)?,
            inputs,
            hyper: PinnedBuffer::new(rt, hyper_len(groups))?,
            stats: PinnedBuffer::new(rt, 4)?,
            fence: Fence::new(rt)?,
        })
    }
}

/// The statistics of a reported step.
pub(super) struct Report {
    pub(super) stats: [f32; 4],
    pub(super) clipped: bool,
}

/// A step queued but not reported yet.
struct Queued {
    slot: usize,
    clipped: bool,
}

/// The queued-step state of one engine; `K` what makes two steps the same graph.
pub(super) struct Pipeline<K, I> {
    /// Two slots, allocated at the first step.
    slots: Vec<StepSlot<I>>,
    next_slot: usize,
    /// Oldest first; at most one once a submit returns.
    queued: VecDeque<Queued>,
    graphs: HashMap<K, Graph>,
    use_graphs: bool,
}

impl<K: Copy + Eq + Hash, I> Default for Pipeline<K, I> {
    fn default() -> Self {
        Pipeline {
            slots: Vec::new(),
            next_slot: 0,
            queued: VecDeque::new(),
            graphs: HashMap::new(),
            use_graphs: std::env::var_os("VITK_NO_GRAPH").is_none_or(|v| v == "0"),
        }
    }
}

impl<K: Copy + Eq + Hash, I> Pipeline<K, I> {
    /// Steps as graph replays or launches one by one; captured graphs are dropped when off.
    pub(super) fn set_graphs(&mut self, on: bool) {
        self.use_graphs = on;
        if !on {
            self.graphs.clear();
        }
    }

    /// Drops the captured graphs (the step's kernels changed: the EMA was turned on).
    pub(super) fn clear_graphs(&mut self) {
        self.graphs.clear();
    }

    pub(super) fn graphs_enabled(&self) -> bool {
        self.use_graphs
    }

    /// Kernels in each captured step graph.
    pub(super) fn graph_kernels(&self) -> Vec<u64> {
        self.graphs.values().map(|g| g.kernels).collect()
    }

    /// The slot the next step stages its inputs in (the two made by `alloc` at the first
    /// step). Its previous step was reported before the last submit returned, so it is free.
    pub(super) fn next_slot(
        &mut self,
        mut alloc: impl FnMut() -> GpuResult<StepSlot<I>>,
    ) -> GpuResult<&mut StepSlot<I>> {
        if self.slots.is_empty() {
            self.slots = vec![alloc()?, alloc()?];
        }
        let s = self.next_slot;
        debug_assert!(self.queued.iter().all(|q| q.slot != s));
        Ok(&mut self.slots[s])
    }

    /// Queues the step staged in [`Self::next_slot`]: a replay of the graph of `key`
    /// (captured from `enqueue` now if new) or `enqueue`'s launches, then the download of
    /// `stats` behind a fence. Returns the statistics of the step queued before it, waiting
    /// for that one only.
    pub(super) fn submit(
        &mut self,
        rt: &Arc<dyn Runtime>,
        key: K,
        stats: DView,
        clipped: bool,
        mut enqueue: impl FnMut() -> GpuResult<()>,
    ) -> GpuResult<Option<Report>> {
        let s = self.next_slot;
        self.next_slot = 1 - s;
        if !self.use_graphs {
            enqueue()?;
        } else {
            let graph = match self.graphs.entry(key) {
                Entry::Occupied(g) => g.into_mut(),
                Entry::Vacant(g) => g.insert(Graph::capture(rt, &mut enqueue)?),
            };
            graph.launch()?;
        }
        let slot = &mut self.slots[s];
        slot.stats.download_from(stats)?;
        slot.fence.record()?;
        self.queued.push_back(Queued { slot: s, clipped });
        if self.queued.len() > 1 {
            self.report_oldest()
        } else {
            Ok(None)
        }
    }

    /// Waits for the queued steps and returns the last one's statistics (`None` when none).
    pub(super) fn finish(&mut self) -> GpuResult<Option<Report>> {
        let mut last = None;
        while !self.queued.is_empty() {
            last = self.report_oldest()?;
        }
        Ok(last)
    }

    /// Waits for the oldest queued step and reads its statistics.
    fn report_oldest(&mut self) -> GpuResult<Option<Report>> {
        let Some(q) = self.queued.pop_front() else {
            return Ok(None);
        };
        let slot = &self.slots[q.slot];
        slot.fence.wait()?;
        let mut stats = [0.0f32; 4];
        stats.copy_from_slice(slot.stats.as_slice());
        Ok(Some(Report {
            stats,
            clipped: q.clipped,
        }))
    }
}

/// What makes two classification steps the same graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct StepShape {
    batch: usize,
    /// The loss against soft targets (mixup/CutMix) rather than labels.
    soft: bool,
    smoothing: u64,
    clip: Option<u64>,
}

/// The classifier's inputs of one queued step.
pub(super) struct ClassInputs {
    labels: PinnedBuffer<u32>,     // [max_batch]
    targets: PinnedBuffer<f32>,    // [max_batch, K] soft targets (mixing steps)
    ema_weight: PinnedBuffer<f32>, // [1] the EMA's lerp weight of the step
    /// [L, 2, max_batch] with drop-path: the step's per-sample scales (their first L·2·B).
    drop_scales: Option<PinnedBuffer<f32>>,
}

impl GpuTrainer {
    /// Whether steps run as graph replays (the default; `VITK_NO_GRAPH=1` starts without) or
    /// as the same kernels launched one by one. Captured graphs are dropped when turned off.
    pub fn set_graphs(&mut self, on: bool) {
        self.pipeline.set_graphs(on)
    }

    pub fn graphs_enabled(&self) -> bool {
        self.pipeline.graphs_enabled()
    }

    /// Queues one training step against `labels` (see `TrainEngine::train_step`) and returns
    /// the output of the step queued before it, waiting for that one only.
    pub fn submit_step(
        &mut self,
        images: &[f32],
        labels: &[u32],
        lr: f64,
        smoothing: f64,
        clip: Option<f64>,
    ) -> GpuResult<Option<StepOutput>> {
        self.submit_step_with(images, labels, None, lr, smoothing, clip)
    }

    /// [`Self::submit_step`], with the loss against soft `targets` [B, K] when given.
    pub fn submit_step_with(
        &mut self,
        images: &[f32],
        labels: &[u32],
        targets: Option<&[f32]>,
        lr: f64,
        smoothing: f64,
        clip: Option<f64>,
    ) -> GpuResult<Option<StepOutput>> {
        let batch = self.batch_of(images)?;
        self.check_labels(labels, batch)?;
        let k = self.cfg.num_classes;
        if let Some(t) = targets.filter(|t| t.len() != batch * k) {
            return Err(crate::gpu::error::GpuError::Shape {
                kernel: "engine loss".into(),
                message: format!(
                    "{} soft targets for a batch of {batch} and {k} classes",
                    t.len()
                ),
            });
        }
        // Out of the engine while the step's launches borrow it.
        let mut pipeline = std::mem::take(&mut self.pipeline);
        let step = StepInputs {
            images,
            labels,
            targets,
            lr,
            smoothing,
            clip,
            batch,
        };
        let out = self.submit_with(&mut pipeline, step);
        self.pipeline = pipeline;
        out
    }

    fn submit_with(
        &mut self,
        pipeline: &mut Pipeline<StepShape, ClassInputs>,
        step: StepInputs,
    ) -> GpuResult<Option<StepOutput>> {
        let StepInputs {
            images,
            labels,
            targets,
            lr,
            smoothing,
            clip,
            batch,
        } = step;
        // This step's drop-path flags, keyed by the steps taken before it.
        let drops = self.drop_path.as_ref().map(|dp| {
            let drops = StepDrops::draw(&dp.setting, self.state.step, dp.rates.len(), batch);
            // [L, 2, B]; a block of rate 0 reads none (zeros)
            let zeros = || vec![0.0f32; 2 * batch];
            let scales: Vec<f32> = step_scales::<f32>(&drops)
                .into_iter()
                .flat_map(|s| s.map_or_else(zeros, |[a, m]| [a, m].concat()))
                .collect();
            scales
        });
        self.state.step += 1;
        let hyper = self.state.hyper_values(lr);
        let images_dev = self.acts(batch).1.images;
        let labels_dev = self.labels.view().slice(0, batch);
        let (rt, max_batch, k) = (self.rt.clone(), self.max_batch, self.cfg.num_classes);
        let groups = self.state.groups.groups.len();
        let image = images.len() / batch;
        let drop_dev = self.drop_scales(batch).map(|d| d.scales);
        let drop_len = self.drop_path.as_ref().map(|dp| dp.scales.len());
        let slot = pipeline.next_slot(|| {
            let inputs = ClassInputs {
                labels: PinnedBuffer::new(&rt, max_batch)?,
                targets: PinnedBuffer::new(&rt, max_batch * k)?,
                ema_weight: PinnedBuffer::new(&rt, 1)?,
                drop_scales: drop_len.map(|n| PinnedBuffer::new(&rt, n)).transpose()?,
            };
            StepSlot::new(&rt, max_batch * image, inputs, groups)
        })?;
        slot.images.as_mut_slice()[..images.len()].copy_from_slice(images);
        slot.inputs.labels.as_mut_slice()[..batch].copy_from_slice(labels);
        slot.hyper.as_mut_slice().copy_from_slice(&hyper);
        slot.images.upload_to(images_dev)?;
        slot.inputs.labels.upload_to(labels_dev)?;
        if let (Some(scales), Some(pinned), Some(dev)) =
            (&drops, slot.inputs.drop_scales.as_mut(), drop_dev)
        {
            pinned.as_mut_slice()[..scales.len()].copy_from_slice(scales);
            pinned.upload_to(dev)?;
        }
        slot.hyper.upload_to(self.state.hyper.view())?;
        // Staged like the labels: a replay reads this step's targets and EMA weight.
        if let Some(t) = targets {
            slot.inputs.targets.as_mut_slice()[..t.len()].copy_from_slice(t);
            slot.inputs
                .targets
                .upload_to(self.targets.view().slice(0, t.len()))?;
        }
        if let Some(e) = &self.ema {
            slot.inputs.ema_weight.as_mut_slice()[0] = e.cfg.weight_at(self.state.step);
            slot.inputs.ema_weight.upload_to(e.weight.view())?;
        }
        let soft = targets.is_some();
        let key = StepShape {
            batch,
            soft,
            smoothing: smoothing.to_bits(),
            clip: clip.map(f64::to_bits),
        };
        // A replay does not run `forward`, which records the batch size.
        self.batch = batch;
        let stats = self.stats.view();
        let report = pipeline.submit(&rt, key, stats, clip.is_some(), || {
            self.enqueue_step(batch, soft, smoothing, clip)
        })?;
        Ok(report.map(step_output))
    }

    /// Waits for the queued step and returns its output (`None` when nothing is queued).
    pub fn finish_steps(&mut self) -> GpuResult<Option<StepOutput>> {
        Ok(self.pipeline.finish()?.map(step_output))
    }

    /// Kernels in each captured step graph (for `vitk profile`).
    pub fn graph_kernels(&self) -> Vec<u64> {
        self.pipeline.graph_kernels()
    }
}

/// One classification step's inputs, as `submit_step_with` was given them.
struct StepInputs<'a> {
    images: &'a [f32],          // [B, C, S_h, S_w]
    labels: &'a [u32],          // [B]
    targets: Option<&'a [f32]>, // [B, K]
    lr: f64,
    smoothing: f64,
    clip: Option<f64>,
    batch: usize,
}

/// [loss, correct, grad norm, clip coefficient] as the classifier reports them.
fn step_output(r: Report) -> StepOutput {
    StepOutput {
        loss: r.stats[0] as f64,
        correct: r.stats[1] as usize,
        grad_norm: r.clipped.then(|| r.stats[2] as f64),
    }
}
