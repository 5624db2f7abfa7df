//! Queued training steps. A step's inputs (images, labels, AdamW scalars) are written into
//! pinned staging and copied to the device by stream-ordered copies; the step itself is one
//! replay of a graph captured the first time its shape was seen (batch size, smoothing and
//! clip threshold; `VITK_NO_GRAPH=1`: the same kernels launched one by one); its statistics
//! come back through pinned memory behind a fence. Two staging slots alternate: the host
//! fills one while the device may still read the other, and reads step i's statistics only
//! after step i + 1 is queued, so the device always has the next step waiting and the host
//! never waits inside a step.

use std::collections::{HashMap, VecDeque};

use super::GpuTrainer;
use crate::engine::StepOutput;
use crate::gpu::error::{GpuError, GpuResult};
use crate::gpu::stream::{Fence, Graph, PinnedBuffer};
use crate::optim::hyper_len;

/// What makes two steps the same graph: everything a kernel takes by value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct StepShape {
    batch: usize,
    smoothing: u64,
    clip: Option<u64>,
}

/// The pinned host side of one queued step.
struct StepSlot {
    images: PinnedBuffer<f32>, // [max_batch, C, S, S]
    labels: PinnedBuffer<u32>, // [max_batch]
    hyper: PinnedBuffer<f32>,  // [hyper_len(groups)] the step's AdamW scalars
    stats: PinnedBuffer<f32>,  // [4] loss, correct, grad norm, clip coefficient
    /// Recorded after the step's statistics download: once passed, the slot is the host's.
    fence: Fence,
}

/// A step queued but not reported yet.
struct Queued {
    slot: usize,
    clipped: bool,
}

pub(super) struct Pipeline {
    /// Two slots, allocated at the first step.
    slots: Vec<StepSlot>,
    next_slot: usize,
    /// Oldest first; at most one once `submit_step` returns.
    queued: VecDeque<Queued>,
    graphs: HashMap<StepShape, Graph>,
    use_graphs: bool,
}

impl Pipeline {
    pub(super) fn new() -> Self {
        Pipeline {
            slots: Vec::new(),
            next_slot: 0,
            queued: VecDeque::new(),
            graphs: HashMap::new(),
            use_graphs: std::env::var_os("VITK_NO_GRAPH").is_none_or(|v| v == "0"),
        }
    }
}

impl GpuTrainer {
    /// Whether steps run as graph replays (the default; `VITK_NO_GRAPH=1` starts without) or
    /// as the same kernels launched one by one. Captured graphs are dropped when turned off.
    pub fn set_graphs(&mut self, on: bool) {
        self.pipeline.use_graphs = on;
        if !on {
            self.pipeline.graphs.clear();
        }
    }

    pub fn graphs_enabled(&self) -> bool {
        self.pipeline.use_graphs
    }

    /// Queues one training step (see `TrainEngine::train_step`) and returns the output of
    /// the step queued before it, waiting for that one only.
    pub fn submit_step(
        &mut self,
        images: &[f32],
        labels: &[u32],
        lr: f64,
        smoothing: f64,
        clip: Option<f64>,
    ) -> GpuResult<Option<StepOutput>> {
        let batch = self.batch_of(images)?;
        self.check_labels(labels, batch)?;
        if self.pipeline.slots.is_empty() {
            let image = images.len() / batch;
            let slots = (0..2)
                .map(|_| self.new_slot(image))
                .collect::<GpuResult<Vec<_>>>()?;
            self.pipeline.slots = slots;
        }
        let s = self.pipeline.next_slot;
        self.pipeline.next_slot = 1 - s;
        // The slot's previous step was reported (its fence waited for) before the last
        // call returned, so its staging is free.
        debug_assert!(self.pipeline.queued.iter().all(|q| q.slot != s));
        self.state.step += 1;
        let hyper = self.state.hyper_values(lr);
        let images_dev = self.acts(batch).1.images;
        let labels_dev = self.labels.view().slice(0, batch);
        let slot = &mut self.pipeline.slots[s];
        slot.images.as_mut_slice()[..images.len()].copy_from_slice(images);
        slot.labels.as_mut_slice()[..batch].copy_from_slice(labels);
        slot.hyper.as_mut_slice().copy_from_slice(&hyper);
        slot.images.upload_to(images_dev)?;
        slot.labels.upload_to(labels_dev)?;
        slot.hyper.upload_to(self.state.hyper.view())?;
        self.run_step(batch, smoothing, clip)?;
        let slot = &mut self.pipeline.slots[s];
        slot.stats.download_from(self.stats.view())?;
        slot.fence.record()?;
        self.pipeline.queued.push_back(Queued {
            slot: s,
            clipped: clip.is_some(),
        });
        if self.pipeline.queued.len() > 1 {
            self.report_oldest()
        } else {
            Ok(None)
        }
    }

    /// Waits for the queued step and returns its output (`None` when nothing is queued).
    pub fn finish_steps(&mut self) -> GpuResult<Option<StepOutput>> {
        let mut last = None;
        while !self.pipeline.queued.is_empty() {
            last = self.report_oldest()?;
        }
        Ok(last)
    }

    fn new_slot(&self, image: usize) -> GpuResult<StepSlot> {
        let rt = &self.rt;
        Ok(StepSlot {
            images: PinnedBuffer::new(rt, self.max_batch * image)?,
            labels: PinnedBuffer::new(rt, self.max_batch)?,
            hyper: PinnedBuffer::new(rt, hyper_len(self.state.groups.groups.len()))?,
            stats: PinnedBuffer::new(rt, 4)?,
            fence: Fence::new(rt)?,
        })
    }

    /// Enqueues the step on inputs already on the device: a replay of its graph (captured
    /// now if its shape is new), or the launches themselves.
    fn run_step(&mut self, batch: usize, smoothing: f64, clip: Option<f64>) -> GpuResult<()> {
        if !self.pipeline.use_graphs {
            return self.enqueue_step(batch, smoothing, clip);
        }
        let shape = StepShape {
            batch,
            smoothing: smoothing.to_bits(),
            clip: clip.map(f64::to_bits),
        };
        if !self.pipeline.graphs.contains_key(&shape) {
            let rt = self.rt.clone();
            let graph = Graph::capture(&rt, || self.enqueue_step(batch, smoothing, clip))?;
            self.pipeline.graphs.insert(shape, graph);
        }
        self.batch = batch;
        match self.pipeline.graphs.get(&shape) {
            Some(graph) => graph.launch(),
            None => Err(GpuError::Driver {
                op: "step graph".into(),
                message: "captured graph missing".into(),
            }),
        }
    }

    /// Waits for the oldest queued step and reads its statistics.
    fn report_oldest(&mut self) -> GpuResult<Option<StepOutput>> {
        let Some(q) = self.pipeline.queued.pop_front() else {
            return Ok(None);
        };
        let slot = &self.pipeline.slots[q.slot];
        slot.fence.wait()?;
        let s = slot.stats.as_slice();
        Ok(Some(StepOutput {
            loss: s[0] as f64,
            correct: s[1] as usize,
            grad_norm: q.clipped.then(|| s[2] as f64),
        }))
    }

    /// Kernels in each captured step graph (for `vitk profile`).
    pub fn graph_kernels(&self) -> Vec<u64> {
        self.pipeline.graphs.values().map(|g| g.kernels).collect()
    }
}
