//! Evaluation over a whole dataset: loss, accuracy, per-class accuracy, confusion matrix.

use crate::cpu::loss::cross_entropy;
use crate::data::{eval_batches, Dataset, Normalize};
use crate::engine::TrainEngine;
use serde::Serialize;

/// Metrics of one pass over a dataset (loss without label smoothing).
#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    pub loss: f64,
    pub accuracy: f64,
    pub samples: usize,
    /// confusion[true][predicted], [K, K].
    pub confusion: Vec<Vec<usize>>,
}

impl EvalResult {
    /// Accuracy of each class (None for a class with no samples), [K].
    pub fn per_class_accuracy(&self) -> Vec<Option<f64>> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(k, row)| {
                let n: usize = row.iter().sum();
                (n > 0).then(|| row[k] as f64 / n as f64)
            })
            .collect()
    }
}

/// Runs `engine` over `dataset` in batches of at most the engine's capacity.
pub fn evaluate(
    engine: &mut dyn TrainEngine,
    dataset: &Dataset,
    normalize: Normalize,
) -> anyhow::Result<EvalResult> {
    let k = dataset.num_classes();
    let mut confusion = vec![vec![0usize; k]; k];
    let mut loss_sum = 0.0;
    let mut correct = 0;
    for batch in eval_batches(dataset, engine.max_batch(), normalize)? {
        let logits = engine.logits(&batch.images)?;
        let stats = cross_entropy(&logits, &batch.labels, k, 0.0, None);
        loss_sum += stats.loss * batch.len() as f64;
        correct += stats.correct;
        for (row, &y) in logits.chunks_exact(k).zip(&batch.labels) {
            confusion[y as usize][argmax(row)] += 1;
        }
    }
    let n = dataset.len().max(1) as f64;
    Ok(EvalResult {
        loss: loss_sum / n,
        accuracy: correct as f64 / n,
        samples: dataset.len(),
        confusion,
    })
}

/// Index of the largest value (the first one on ties, as the loss's accuracy count does).
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}
