//! Batch loader for training and the batch iterator for evaluation.
//!
//! Determinism (a resumed run reproduces an uninterrupted one bitwise):
//! - the order of epoch e is a permutation that depends only on (seed, e);
//! - the augmentation of the sample at position p of epoch e draws from streams keyed by
//!   (seed, tag, e, p) only (see [`super::recipe`]);
//! - the background thread builds batches in order, each batch's samples in parallel on
//!   rayon's pool, each sample only from those keys, so thread timing never changes a value.
//!
//! Batch b of epoch e holds the samples at positions b*B .. min((b+1)*B, n) of that
//! epoch's order; with `drop_last` the final partial batch is skipped.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rayon::prelude::*;

use super::augment::{to_tensor_checked, Normalize};
use super::recipe::{AugmentRecipe, Pipeline, Workspace};
use super::repeat_sampler::repeated_order;
use super::rng::{Rng64, TAG_PERMUTATION};
use super::{DataError, Dataset};

/// Zero padding of the random crop, in pixels (torchvision `RandomCrop(S, padding=4)`).
pub const CROP_PAD: usize = 4;
/// Batches prepared ahead of the consumer.
pub const PREFETCH: usize = 2;

/// A batch of normalised images and their labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// [B, C, S, S] normalised pixels.
    pub images: Vec<f32>,
    /// `[B]` class indices.
    pub labels: Vec<u32>,
    /// Epoch this batch belongs to (0-based).
    pub epoch: usize,
    /// Batch index within the epoch (0-based).
    pub index: usize,
}

impl Batch {
    /// B: number of samples in this batch (the last one of an epoch may be smaller).
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// How the training loader draws batches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoaderConfig {
    /// B (> 0).
    pub batch_size: usize,
    /// Visit samples in a fresh random order each epoch (else in dataset order).
    pub shuffle: bool,
    /// Random crop with 4-pixel zero padding + horizontal flip (p = 0.5).
    pub augment: bool,
    /// Skip the final partial batch of each epoch.
    pub drop_last: bool,
    /// Seed of the order and augmentation streams.
    pub seed: u64,
    pub normalize: Normalize,
}

impl LoaderConfig {
    /// The usual training setup: shuffled, augmented, last batch kept, CIFAR-10 statistics.
    pub fn train(batch_size: usize, seed: u64) -> Self {
        LoaderConfig {
            batch_size,
            shuffle: true,
            augment: true,
            drop_last: false,
            seed,
            normalize: Normalize::CIFAR10,
        }
    }
}

/// The sample order of `epoch`: indices 0..n, shuffled by a stream keyed by (seed, epoch)
/// when `shuffle`, else in order.
pub fn epoch_order(n: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        Rng64::from_key(&[seed, TAG_PERMUTATION, epoch as u64]).shuffle(&mut order);
    }
    order
}

/// Number of batches in an epoch of `n` samples.
fn batches_in_epoch(n: usize, batch_size: usize, drop_last: bool) -> usize {
    if drop_last {
        n / batch_size
    } else {
        n.div_ceil(batch_size)
    }
}

/// Everything needed to build any batch: a pure function of (epoch, index).
struct Schedule {
    ds: Arc<Dataset>,
    cfg: LoaderConfig,
    pipeline: Pipeline,
    per_epoch: usize,
}

impl Schedule {
    /// The order of `epoch`: its permutation, with repeated augmentation when asked.
    fn order(&self, epoch: usize) -> Vec<usize> {
        let cfg = &self.cfg;
        let repeats = self.pipeline.recipe().aug_repeats;
        repeated_order(self.ds.len(), cfg.seed, epoch, cfg.shuffle, repeats)
    }

    /// Builds batch `index` of `epoch`, its samples in parallel on rayon's pool: each sample
    /// is a pure function of (epoch, position), so the threads never change a value.
    fn build(&self, epoch: usize, index: usize, order: &[usize]) -> Batch {
        let ds = &*self.ds;
        let start = index * self.cfg.batch_size;
        let end = (start + self.cfg.batch_size).min(ds.len());
        let len = ds.image_len();
        let mut images = vec![0f32; (end - start) * len];
        images.par_chunks_mut(len).enumerate().for_each_init(
            Workspace::default,
            |work, (j, out)| {
                let pos = start + j;
                self.pipeline
                    .run(ds.image(order[pos]), out, epoch, pos, work);
            },
        );
        let labels = order[start..end]
            .iter()
            .map(|&i| ds.labels[i] as u32)
            .collect();
        Batch {
            images,
            labels,
            epoch,
            index,
        }
    }
}

/// Yields training batches in order, epoch after epoch, forever; a background thread
/// prepares the next [`PREFETCH`] batches while the caller trains, and ends when the
/// loader is dropped.
pub struct BatchLoader {
    rx: Option<Receiver<Batch>>,
    worker: Option<JoinHandle<()>>,
    per_epoch: usize,
}

impl BatchLoader {
    /// Starts yielding at batch `start_batch` of epoch `start_epoch`, exactly the batch an
    /// uninterrupted loader with the same seed yields there. A `start_batch` at or past the
    /// end of the epoch carries into the following epochs (batch `batches_per_epoch()` of
    /// epoch e is batch 0 of epoch e+1).
    ///
    /// Errors: batch size 0, an empty or inconsistent dataset, `drop_last` with fewer
    /// samples than one batch, channels the normalisation cannot handle.
    pub fn new(
        dataset: Arc<Dataset>,
        cfg: LoaderConfig,
        start_epoch: usize,
        start_batch: usize,
    ) -> Result<Self, DataError> {
        Self::with_recipe(dataset, cfg, AugmentRecipe::OFF, start_epoch, start_batch)
    }

    /// [`BatchLoader::new`] with the augmentation `recipe` on top of `cfg`'s crop/flip (see
    /// [`super::recipe`]); `AugmentRecipe::OFF` gives exactly the batches of `new`. The recipe
    /// applies whether or not `cfg.augment` (the crop/flip) is on. With `aug_repeats` r > 1 an
    /// epoch still has n samples (see [`super::repeat_sampler`]).
    ///
    /// Errors: those of `new`, and a recipe [`AugmentRecipe::check`] refuses.
    pub fn with_recipe(
        dataset: Arc<Dataset>,
        cfg: LoaderConfig,
        recipe: AugmentRecipe,
        start_epoch: usize,
        start_batch: usize,
    ) -> Result<Self, DataError> {
        dataset.validate("training set")?;
        let pipeline = Pipeline::new(
            dataset.channels,
            dataset.size,
            cfg.augment,
            recipe,
            cfg.normalize,
            cfg.seed,
        )?;
        if cfg.batch_size == 0 {
            return Err(DataError::invalid(
                "batch loader",
                "batch size 0 (expected >= 1)",
            ));
        }
        if dataset.is_empty() {
            return Err(DataError::invalid(
                "batch loader",
                "training set has no samples (expected at least one)",
            ));
        }
        let per_epoch = batches_in_epoch(dataset.len(), cfg.batch_size, cfg.drop_last);
        if per_epoch == 0 {
            return Err(DataError::invalid(
                "batch loader",
                format!(
                    "batch size {} with drop_last and only {} samples: an epoch would have no batch (expected batch size <= samples)",
                    cfg.batch_size,
                    dataset.len()
                ),
            ));
        }
        let schedule = Schedule {
            ds: dataset,
            cfg,
            pipeline,
            per_epoch,
        };
        let (tx, rx) = sync_channel(PREFETCH);
        let mut epoch = start_epoch + start_batch / per_epoch;
        let mut index = start_batch % per_epoch;
        let worker = std::thread::Builder::new()
            .name("vitk-batch-loader".into())
            .spawn(move || {
                let mut order = schedule.order(epoch);
                loop {
                    let batch = schedule.build(epoch, index, &order);
                    if tx.send(batch).is_err() {
                        return; // the loader was dropped
                    }
                    index += 1;
                    if index == schedule.per_epoch {
                        index = 0;
                        epoch += 1;
                        order = schedule.order(epoch);
                    }
                }
            })
            .map_err(|e| DataError::io("batch loader thread", e))?;
        Ok(BatchLoader {
            rx: Some(rx),
            worker: Some(worker),
            per_epoch,
        })
    }

    /// Batches in one epoch: ceil(n / B), or floor(n / B) with `drop_last`.
    pub fn batches_per_epoch(&self) -> usize {
        self.per_epoch
    }

    /// The next batch (waits while the background thread prepares it).
    pub fn next_batch(&mut self) -> Batch {
        let received = self.rx.as_ref().map(|rx| rx.recv());
        match received {
            Some(Ok(batch)) => batch,
            // The worker only stops when the receiver is gone or it panicked; shapes were
            // checked in `new`, so this is a bug, not bad input.
            _ => panic!("batch loader thread stopped unexpectedly"),
        }
    }
}

impl Iterator for BatchLoader {
    type Item = Batch;

    /// Never `None`: the loader cycles through epochs forever.
    fn next(&mut self) -> Option<Batch> {
        Some(self.next_batch())
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        // Dropping the receiver makes the worker's next send fail, which ends it.
        drop(self.rx.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Evaluation batches: dataset order, no augmentation, last partial batch kept.
pub struct EvalBatches<'a> {
    ds: &'a Dataset,
    batch_size: usize,
    normalize: Normalize,
    next: usize,
}

/// Iterates over `dataset` in order in batches of `batch_size` (the last one may be
/// smaller), normalised with `normalize`; `epoch` is 0 and `index` counts batches.
pub fn eval_batches(
    dataset: &Dataset,
    batch_size: usize,
    normalize: Normalize,
) -> Result<EvalBatches<'_>, DataError> {
    dataset.validate("evaluation set")?;
    normalize.check(dataset.channels)?;
    if batch_size == 0 {
        return Err(DataError::invalid(
            "evaluation batches",
            "batch size 0 (expected >= 1)",
        ));
    }
    Ok(EvalBatches {
        ds: dataset,
        batch_size,
        normalize,
        next: 0,
    })
}

impl Iterator for EvalBatches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let start = self.next * self.batch_size;
        if start >= self.ds.len() {
            return None;
        }
        let end = (start + self.batch_size).min(self.ds.len());
        let len = self.ds.image_len();
        let mut images = vec![0f32; (end - start) * len];
        for (j, i) in (start..end).enumerate() {
            to_tensor_checked(
                self.ds.image(i),
                &mut images[j * len..(j + 1) * len],
                self.ds.channels,
                &self.normalize,
            );
        }
        let batch = Batch {
            images,
            labels: self.ds.labels[start..end]
                .iter()
                .map(|&l| l as u32)
                .collect(),
            epoch: 0,
            index: self.next,
        };
        self.next += 1;
        Some(batch)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let total = self.ds.len().div_ceil(self.batch_size);
        let left = total.saturating_sub(self.next);
        (left, Some(left))
    }
}

impl ExactSizeIterator for EvalBatches<'_> {}
