//! Patch masks for masked-image-modelling pre-training, as pure functions of
//! (seed, epoch, position): resuming a run reproduces them bitwise, whatever thread draws them.
//!
//! - [`patch_mask`]: SimMIM / MAE style, exactly round(ratio·N) of the N patches of an image
//!   masked, the set uniform among all sets of that size;
//! - [`bert_corruption`]: the ViT paper's masked patch prediction (BERT's recipe): exactly
//!   round(ratio·N) patches corrupted, of those 80% replaced by the mask token, 10% by another
//!   patch of the same image, 10% left unchanged (all of them predicted).
//!
//! Both draw from one Rng64 stream keyed by [seed, TAG_MASK, epoch, position], so a mask
//! never shares a stream with the permutation or the augmentation of the same sample.

use super::rng::{Rng64, TAG_MASK};

/// The first `count` entries of a uniformly random permutation of 0..n (partial
/// Fisher–Yates): a uniformly random subset of size `count`, in uniformly random order.
fn choose(rng: &mut Rng64, n: usize, count: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..count {
        let j = i + rng.below((n - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(count);
    idx
}

/// Patches to mask out of `n`: round(ratio·n), halves away from zero (f64::round).
/// Panics on a ratio outside [0, 1] (the CLI validates it).
pub fn masked_count(n_patches: usize, ratio: f64) -> usize {
    assert!(
        (0.0..=1.0).contains(&ratio),
        "mask ratio {ratio} outside [0, 1]"
    );
    ((ratio * n_patches as f64).round() as usize).min(n_patches)
}

fn stream(seed: u64, epoch: u64, position: u64) -> Rng64 {
    Rng64::from_key(&[seed, TAG_MASK, epoch, position])
}

/// mask [N]: true for the exactly [`masked_count`]`(n_patches, ratio)` masked patches of the
/// image at `position` of epoch `epoch`.
pub fn patch_mask(seed: u64, epoch: u64, position: u64, n_patches: usize, ratio: f64) -> Vec<bool> {
    let count = masked_count(n_patches, ratio);
    let mut mask = vec![false; n_patches];
    for i in choose(&mut stream(seed, epoch, position), n_patches, count) {
        mask[i] = true;
    }
    mask
}

/// What the BERT-style objective does to one patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// Not corrupted and not predicted.
    Visible,
    /// Replaced by the learned mask token; predicted.
    MaskToken,
    /// Replaced by the embedding of another patch of the same image (this index, never the
    /// patch itself); predicted.
    OtherPatch(usize),
    /// Corrupted but left as it is; predicted.
    Unchanged,
}

impl Corruption {
    /// Whether the loss covers this patch (every corrupted one, unchanged ones included).
    pub fn is_predicted(self) -> bool {
        self != Corruption::Visible
    }
}

/// The split of `m` corrupted patches into (mask token, other patch, unchanged):
/// mask = round(0.8·m), other = min(round(0.1·m), m − mask), unchanged = the rest
/// (halves away from zero). E.g. m = 1: (1, 0, 0); m = 5: (4, 1, 0); m = 10: (8, 1, 1);
/// m = 38: (30, 4, 4).
pub fn bert_split(m: usize) -> (usize, usize, usize) {
    let mask = ((0.8 * m as f64).round() as usize).min(m);
    let other = ((0.1 * m as f64).round() as usize).min(m - mask);
    (mask, other, m - mask - other)
}

/// corruption [N] of the image at `position` of epoch `epoch`: exactly
/// [`masked_count`]`(n_patches, ratio)` patches corrupted, split by [`bert_split`]. Which
/// corrupted patch gets which treatment is uniform (the first of the random selection order
/// take the mask token, the next another patch, the rest stay); the other patch is uniform
/// over the image's other N − 1 positions. With N = 1 there is no other patch and the split
/// already gives none.
pub fn bert_corruption(
    seed: u64,
    epoch: u64,
    position: u64,
    n_patches: usize,
    ratio: f64,
) -> Vec<Corruption> {
    let m = masked_count(n_patches, ratio);
    let (n_mask, n_other, _) = bert_split(m);
    let mut rng = stream(seed, epoch, position);
    let chosen = choose(&mut rng, n_patches, m);
    let mut out = vec![Corruption::Visible; n_patches];
    for (k, &i) in chosen.iter().enumerate() {
        out[i] = if k < n_mask {
            Corruption::MaskToken
        } else if k < n_mask + n_other && n_patches > 1 {
            // Uniform over 0..N without i.
            let s = rng.below(n_patches as u64 - 1) as usize;
            Corruption::OtherPatch(if s >= i { s + 1 } else { s })
        } else {
            Corruption::Unchanged
        };
    }
    out
}

/// The gather table of `cpu::mim::substitute_forward` for one image: −1 (the mask token)
/// for `MaskToken`, the source index for `OtherPatch`, the patch itself otherwise.
pub fn corruption_sources(corruption: &[Corruption]) -> Vec<i32> {
    corruption
        .iter()
        .enumerate()
        .map(|(i, c)| match *c {
            Corruption::MaskToken => -1,
            Corruption::OtherPatch(s) => s as i32,
            Corruption::Visible | Corruption::Unchanged => i as i32,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(mask: &[bool]) -> usize {
        mask.iter().filter(|&&m| m).count()
    }

    #[test]
    fn same_key_same_mask() {
        assert_eq!(patch_mask(7, 2, 31, 64, 0.6), patch_mask(7, 2, 31, 64, 0.6));
        assert_eq!(
            bert_corruption(7, 2, 31, 64, 0.5),
            bert_corruption(7, 2, 31, 64, 0.5)
        );
    }

    #[test]
    fn exact_count_per_image() {
        for n in [1, 7, 49, 64, 196, 197] {
            for (ratio, want) in [(0.0, 0), (1.0, n), (0.6, (0.6 * n as f64).round() as usize)] {
                for pos in 0..20 {
                    let m = patch_mask(3, 1, pos, n, ratio);
                    assert_eq!(m.len(), n);
                    assert_eq!(count(&m), want, "N={n} ratio={ratio} pos={pos}");
                    let c = bert_corruption(3, 1, pos, n, ratio);
                    let predicted = c.iter().filter(|c| c.is_predicted()).count();
                    assert_eq!(predicted, want, "bert N={n} ratio={ratio} pos={pos}");
                }
            }
        }
        // Halves round away from zero: 0.5 of 7 patches is 4.
        assert_eq!(count(&patch_mask(0, 0, 0, 7, 0.5)), 4);
        assert_eq!(masked_count(49, 0.6), 29); // 29.4
    }

    #[test]
    fn different_keys_differ() {
        let base = patch_mask(5, 0, 0, 64, 0.5);
        assert_ne!(base, patch_mask(5, 1, 0, 64, 0.5), "epoch");
        assert_ne!(base, patch_mask(5, 0, 1, 64, 0.5), "position");
        assert_ne!(base, patch_mask(6, 0, 0, 64, 0.5), "seed");
    }

    #[test]
    fn masks_are_roughly_uniform() {
        // 4000 images of 16 patches, 6 masked each: every patch masked 1500 times on
        // average (binomial sd ~ 31); 1350..1650 is ~5 sd.
        let (n, draws) = (16, 4000u64);
        let mut hits = vec![0usize; n];
        for pos in 0..draws {
            for (h, m) in hits.iter_mut().zip(patch_mask(11, 0, pos, n, 0.375)) {
                *h += usize::from(m);
            }
        }
        assert!(hits.iter().all(|&h| (1350..1650).contains(&h)), "{hits:?}");
    }

    #[test]
    fn bert_split_rounding() {
        assert_eq!(bert_split(0), (0, 0, 0));
        assert_eq!(bert_split(1), (1, 0, 0));
        assert_eq!(bert_split(5), (4, 1, 0));
        assert_eq!(bert_split(10), (8, 1, 1));
        assert_eq!(bert_split(38), (30, 4, 4));
        for m in 0..300 {
            let (a, b, c) = bert_split(m);
            assert_eq!(a + b + c, m);
        }
    }

    #[test]
    fn bert_treatments_follow_the_split() {
        for n in [5, 49, 64, 196] {
            for pos in 0..10 {
                let c = bert_corruption(9, 3, pos, n, 0.5);
                let (mask, other, same) = bert_split(masked_count(n, 0.5));
                let of = |f: fn(&Corruption) -> bool| c.iter().filter(|x| f(x)).count();
                assert_eq!(of(|x| *x == Corruption::MaskToken), mask);
                assert_eq!(of(|x| matches!(x, Corruption::OtherPatch(_))), other);
                assert_eq!(of(|x| *x == Corruption::Unchanged), same);
                for (i, x) in c.iter().enumerate() {
                    if let Corruption::OtherPatch(s) = *x {
                        assert!(s < n && s != i, "N={n}: patch {i} replaced by {s}");
                    }
                }
            }
        }
    }

    #[test]
    fn sources_of_each_treatment() {
        let c = [
            Corruption::Visible,
            Corruption::MaskToken,
            Corruption::OtherPatch(0),
            Corruption::Unchanged,
        ];
        assert_eq!(corruption_sources(&c), [0, -1, 0, 3]);
    }

    #[test]
    fn bert_other_patch_is_uniform() {
        // Patch sources over many images of 5 patches (ratio 1: 4 mask, 1 other each): each
        // source 0..5 should be chosen ~1/5 of the time.
        let mut hits = [0usize; 5];
        for pos in 0..5000 {
            for x in bert_corruption(2, 0, pos, 5, 1.0) {
                if let Corruption::OtherPatch(s) = x {
                    hits[s] += 1;
                }
            }
        }
        assert_eq!(hits.iter().sum::<usize>(), 5000);
        assert!(hits.iter().all(|&h| (880..1120).contains(&h)), "{hits:?}");
    }
}
