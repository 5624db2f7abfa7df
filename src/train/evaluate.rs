//! Evaluation over a whole dataset: loss, top-1 and top-5 accuracy, per-class accuracy,
//! confusion matrix.

use crate::cpu::loss::cross_entropy;
use crate::data::{eval_batches, Dataset, Normalize};
use crate::engine::TrainEngine;
use serde::Serialize;

/// Metrics of one pass over a dataset (loss without label smoothing).
#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    pub loss: f64,
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// Top-5 accuracy (top-K with K < 5 classes: 1).
    pub top5: f64,
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
    let mut in_top5 = 0;
    for batch in eval_batches(dataset, engine.max_batch(), normalize)? {
        let logits = engine.logits(&batch.images)?;
        let stats = cross_entropy(&logits, &batch.labels, k, 0.0, None);
        loss_sum += stats.loss * batch.len() as f64;
        correct += stats.correct;
        for (row, &y) in logits.chunks_exact(k).zip(&batch.labels) {
            confusion[y as usize][argmax(row)] += 1;
            in_top5 += usize::from(rank(row, y as usize) < 5);
        }
    }
    let n = dataset.len().max(1) as f64;
    Ok(EvalResult {
        loss: loss_sum / n,
        accuracy: correct as f64 / n,
        top5: in_top5 as f64 / n,
        samples: dataset.len(),
        confusion,
    })
}

/// How many classes rank above class `y` in `row` (0: the arg-max): larger logits, and equal
/// ones of a lower index (the arg-max's tie-break), as timm's top-k does up to ties.
pub fn rank(row: &[f32], y: usize) -> usize {
    let v = row[y];
    row.iter()
        .enumerate()
        .filter(|&(j, &x)| x > v || (x == v && j < y))
        .count()
}

/// Index of the largest value (the first one on ties, as the loss's accuracy count does).
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_counts_classes_above_with_the_argmax_tie_break() {
        let row = [0.5, 2.0, 2.0, -1.0, 3.0, 0.5, 0.1];
        assert_eq!(rank(&row, 4), 0);
        assert_eq!(rank(&row, 1), 1);
        assert_eq!(rank(&row, 2), 2); // tied with class 1, which comes first
        assert_eq!(rank(&row, 0), 3);
        assert_eq!(rank(&row, 5), 4); // tied with class 0
        assert_eq!(rank(&row, 6), 5); // sixth: outside the top 5
        assert_eq!(rank(&row, 3), 6);
        assert_eq!(argmax(&row), 4);
    }
}
