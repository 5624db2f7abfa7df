//! Stochastic depth's schedule and its per-sample keep flags, shared by both engines.
//!
//! - Rates: timm's ViT gives block i of L the drop rate `torch.linspace(0, p, L)[i]`: 0 for
//!   the first block, p for the last, linear between (computed in f32 as torch does).
//! - Flags: each (step, block, branch) draws the keep flags of its B samples from its own
//!   stream, keyed [seed, TAG_DROP_PATH, step, 2·block + branch]: a pure function of the run's
//!   seed and the position in the run, so resuming reproduces it and the CPU and device
//!   engines drop the same samples. Sample b is kept when u_b < 1 − p, u_b uniform in [0, 1)
//!   (a Bernoulli(1 − p) draw, as timm's `bernoulli_(keep_prob)`).
//!   The op that applies them is [`crate::cpu::drop_path`] (kernels/drop_path.cu on a device).

use crate::data::rng::{Rng64, TAG_DROP_PATH};
use rand::Rng;

/// The residual branch of a block a mask belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Branch {
    /// x + drop_path(attn(norm1(x)))
    Attention = 0,
    /// x + drop_path(mlp(norm2(x)))
    Mlp = 1,
}

/// Per-block drop rates [L] for a model of `depth` blocks and rate `p`, as timm's
/// `[x.item() for x in torch.linspace(0, p, depth)]`: torch fills a float32 linspace from both
/// ends (start + i·step below the middle, end − (L − 1 − i)·step from it), reproduced here.
pub fn drop_path_rates(depth: usize, p: f64) -> Vec<f64> {
    let end = p as f32;
    if depth <= 1 {
        // torch.linspace(0, p, 1) is [0]: a one-block model is never dropped.
        return vec![0.0; depth];
    }
    let step = end / (depth - 1) as f32;
    let halfway = depth / 2;
    (0..depth)
        .map(|i| {
            let v = if i < halfway {
                step * i as f32
            } else {
                end - step * (depth - 1 - i) as f32
            };
            v as f64
        })
        .collect()
}

/// Keep flags [B] of `branch` of block `block` at optimizer step `step` (0-based), drop rate
/// `rate` in [0, 1). At rate 0 every sample is kept and no stream is drawn.
pub fn drop_path_keep(
    seed: u64,
    step: u64,
    block: usize,
    branch: Branch,
    batch: usize,
    rate: f64,
) -> Vec<bool> {
    if rate <= 0.0 {
        return vec![true; batch];
    }
    let keep_prob = 1.0 - rate;
    let lane = 2 * block as u64 + branch as u64;
    let mut rng = Rng64::from_key(&[seed, TAG_DROP_PATH, step, lane]);
    (0..batch)
        .map(|_| rng.random::<f64>() < keep_prob)
        .collect()
}

/// A run's stochastic depth (`--drop-path`): the rate p of the last block and the seed of the
/// keep flags. Engines take it at construction and key each step's flags by their own count
/// of optimizer steps taken (restored on resume with the optimizer state).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropPath {
    pub rate: f64,
    pub seed: u64,
}

/// The keep flags of one training step: per block, the rate and the flags [B] of its
/// attention and MLP branches. A branch of rate 0 is not dropped at all: the engines keep
/// its fused residual add (bitwise the step without drop-path).
#[derive(Clone, Debug, PartialEq)]
pub struct StepDrops {
    /// [L] drop rate per block ([`drop_path_rates`]).
    pub rates: Vec<f64>,
    /// [L] × [attention, MLP] × [B].
    pub keep: Vec<[Vec<bool>; 2]>,
}

impl StepDrops {
    /// The flags of optimizer step `step` (0-based, the steps taken before it) for a model of
    /// `depth` blocks and a batch of `batch`.
    pub fn draw(dp: &DropPath, step: u64, depth: usize, batch: usize) -> Self {
        let rates = drop_path_rates(depth, dp.rate);
        let keep = rates
            .iter()
            .enumerate()
            .map(|(l, &rate)| {
                [Branch::Attention, Branch::Mlp]
                    .map(|br| drop_path_keep(dp.seed, step, l, br, batch, rate))
            })
            .collect();
        StepDrops { rates, keep }
    }

    /// Whether block `block`'s branches are dropped at all (rate above 0).
    pub fn active(&self, block: usize) -> bool {
        self.rates[block] > 0.0
    }
}
