//! Keyed random streams for the loader and the synthetic set.
//!
//! The loader and the synthetic set need random streams that are a pure function of a key
//! such as (seed, tag, epoch, position): resuming a run must reproduce it bitwise, whatever
//! thread computes which sample. Each stream is a ChaCha8 generator (`rand_chacha`, whose
//! output the crate documents as portable and reproducible) seeded with the key words.

use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Stream tags: one per use, so that e.g. the permutation of epoch 3 and the
/// augmentation of sample 3 never share a stream.
pub(crate) const TAG_PERMUTATION: u64 = 0x7065_726d; // "perm"
pub(crate) const TAG_AUGMENT: u64 = 0x6175_676d; // "augm"
pub(crate) const TAG_SYNTH_TRAIN: u64 = 0x7379_6e74; // "synt"
pub(crate) const TAG_SYNTH_VAL: u64 = 0x7379_6e76; // "synv"
pub(crate) const TAG_SYNTH_ORDER: u64 = 0x7379_6e6f; // "syno"
pub(crate) const TAG_MASK: u64 = 0x6d61_736b; // "mask"
pub(crate) const TAG_AUTO_AUGMENT: u64 = 0x6175_746f; // "auto": AutoAugment / RandAugment
pub(crate) const TAG_ERASE: u64 = 0x6572_6173; // "eras": random erasing

/// A random stream determined by a key of up to four 64-bit words.
#[derive(Clone, Debug)]
pub struct Rng64(ChaCha8Rng);

impl Rng64 {
    /// A generator whose whole stream is a function of `seed` only.
    pub fn new(seed: u64) -> Self {
        Self::from_key(&[seed])
    }

    /// A generator keyed by up to four integers, e.g. `[seed, tag, epoch, position]`: the
    /// words are the 256-bit ChaCha key, so distinct keys give independent streams.
    pub fn from_key(key: &[u64]) -> Self {
        assert!(key.len() <= 4, "Rng64::from_key: at most 4 key words");
        let mut seed = [0u8; 32];
        for (slot, k) in seed.chunks_exact_mut(8).zip(key) {
            slot.copy_from_slice(&k.to_le_bytes());
        }
        Rng64(ChaCha8Rng::from_seed(seed))
    }

    /// Uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.random_range(0..n)
    }

    /// Uniform integer in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        self.0.random_range(lo..=hi)
    }

    /// Uniform float in `[0, 1)`.
    pub fn unit(&mut self) -> f32 {
        self.0.random::<f32>()
    }

    /// Uniform double in `[0, 1)` (as Python's `random.random()`).
    pub fn unit64(&mut self) -> f64 {
        self.0.random::<f64>()
    }

    /// A standard normal N(0, 1) draw (rand_distr's ziggurat), in f64.
    pub fn normal(&mut self) -> f64 {
        self.0.sample(rand_distr::StandardNormal)
    }

    /// Uniform float in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Fair coin.
    pub fn coin(&mut self) -> bool {
        self.0.random_bool(0.5)
    }

    /// Approximately normal N(0, 1): sum of four uniforms, rescaled (Irwin-Hall).
    /// Cheap, bounded to +-3.46, and good enough for pixel noise.
    pub fn normalish(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.unit()).sum();
        (s - 2.0) * 3.0f32.sqrt()
    }

    /// Uniform random permutation in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        items.shuffle(&mut self.0);
    }
}

impl RngCore for Rng64 {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.0.fill_bytes(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_is_in_range_and_covers_it() {
        let mut r = Rng64::new(1);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[r.below(7) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800 && c < 1200), "{seen:?}");
    }

    #[test]
    fn keys_give_distinct_streams() {
        let a = Rng64::from_key(&[1, 2, 3]).next_u64();
        let b = Rng64::from_key(&[1, 3, 2]).next_u64();
        let c = Rng64::from_key(&[1, 2, 3]).next_u64();
        assert_ne!(a, b);
        assert_eq!(a, c);
    }
}
