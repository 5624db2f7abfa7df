//! A small counter-derived random generator (SplitMix64).
//!
//! The loader and the synthetic set need random streams that are a pure function of
//! a key such as (seed, epoch, position): resuming a run must reproduce it bitwise,
//! whatever thread computes which sample. `rand`'s `StdRng` is documented as not
//! reproducible across `rand` versions, so the streams that end up in checkpoints and
//! data sets come from this fixed algorithm instead.

use rand::RngCore;

/// Stream tags: one per use, so that e.g. the permutation of epoch 3 and the
/// augmentation of sample 3 never share a stream.
pub(crate) const TAG_PERMUTATION: u64 = 0x7065_726d; // "perm"
pub(crate) const TAG_AUGMENT: u64 = 0x6175_676d; // "augm"
pub(crate) const TAG_SYNTH_TRAIN: u64 = 0x7379_6e74; // "synt"
pub(crate) const TAG_SYNTH_VAL: u64 = 0x7379_6e76; // "synv"
pub(crate) const TAG_SYNTH_ORDER: u64 = 0x7379_6e6f; // "syno"

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function: a bijective 64-bit mixer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64 generator (Steele, Lea, Flood 2014): 64 bits of state, passes BigCrush,
/// and any 64-bit state is a valid seed, which is what keyed streams need.
#[derive(Clone, Debug)]
pub struct Rng64 {
    state: u64,
}

impl Rng64 {
    /// A generator whose whole stream is a function of `seed` only.
    pub fn new(seed: u64) -> Self {
        Rng64 { state: mix(seed) }
    }

    /// A generator keyed by several integers, e.g. `[seed, tag, epoch, position]`.
    /// Each key word is folded through the mixer, so nearby keys give unrelated streams.
    pub fn from_key(key: &[u64]) -> Self {
        let mut h: u64 = 0x6A09_E667_F3BC_C908; // any fixed odd start
        for &k in key {
            h = mix(h.wrapping_add(GOLDEN) ^ k);
        }
        Rng64 { state: h }
    }

    /// Uniform integer in `0..n` (`n > 0`), unbiased (Lemire's multiply-and-reject).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Uniform integer in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        debug_assert!(lo <= hi);
        lo + self.below((hi - lo) as u64 + 1) as i64
    }

    /// Uniform float in `[0, 1)` with 24 bits of precision.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform float in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Fair coin.
    pub fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }

    /// Approximately normal N(0, 1): sum of four uniforms, rescaled (Irwin-Hall).
    /// Cheap, bounded to +-3.46, and good enough for pixel noise.
    pub fn normalish(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.unit()).sum();
        (s - 2.0) * 3.0f32.sqrt()
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

impl RngCore for Rng64 {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Next 64 random bits.
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
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
