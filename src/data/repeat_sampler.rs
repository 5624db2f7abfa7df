//! Repeated augmentation (DeiT's RASampler, timm's `RepeatAugSampler` on one process): each
//! epoch's order is its permutation with every index repeated `repeats` times in a row,
//! cut to the data set's length n, so an epoch keeps n samples and the images in its first
//! ceil(n / repeats) permutation slots appear `repeats` times each (the last possibly fewer),
//! each copy at its own position and so with its own augmentation draws.
//!
//! timm also rounds the epoch down to a multiple of `selected_round` (256); we keep n and
//! let the loader's `drop_last` drop the final partial batch.

use super::loader::epoch_order;

/// The sample order of `epoch` with `repeats` copies of each index (1: [`epoch_order`]).
/// `[n]` indices into the data set.
pub fn repeated_order(
    n: usize,
    seed: u64,
    epoch: usize,
    shuffle: bool,
    repeats: usize,
) -> Vec<usize> {
    let base = epoch_order(n, seed, epoch, shuffle);
    if repeats <= 1 {
        return base;
    }
    base.iter()
        .flat_map(|&i| std::iter::repeat_n(i, repeats))
        .take(n)
        .collect()
}
