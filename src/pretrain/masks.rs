//! The masks of one pre-training batch, in the one form both objectives and both engines
//! take: per patch, whether the loss covers it and which embedding its position receives.

use super::Objective;
use crate::data::masking::{bert_corruption, corruption_sources, patch_mask};

/// The corruption of a batch of B images of N patches each, [B, N] row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatchMasks {
    /// 1 where the loss covers the patch (masked or corrupted), 0 elsewhere.
    pub predicted: Vec<u8>,
    /// The embedding each position receives: −1 the mask token, otherwise the index (within
    /// the same image) of the patch whose embedding it gets, the patch itself when unchanged.
    pub sources: Vec<i32>,
    /// N, patches per image.
    pub patches: usize,
}

impl PatchMasks {
    /// The masks of the images at `positions` of epoch `epoch` (their places in the epoch's
    /// order), each a pure function of (seed, epoch, position): `patch_mask` for the pixel
    /// objective (masked = the mask token), `bert_corruption` for the colour objective.
    pub fn draw(
        objective: &Objective,
        seed: u64,
        epoch: u64,
        positions: impl IntoIterator<Item = u64>,
        patches: usize,
        ratio: f64,
    ) -> Self {
        let mut out = PatchMasks {
            predicted: Vec::new(),
            sources: Vec::new(),
            patches,
        };
        for position in positions {
            match objective {
                Objective::Pixels(_) => {
                    let mask = patch_mask(seed, epoch, position, patches, ratio);
                    out.predicted.extend(mask.iter().map(|&m| m as u8));
                    out.sources.extend(
                        mask.iter()
                            .enumerate()
                            .map(|(i, &m)| if m { -1 } else { i as i32 }),
                    );
                }
                Objective::Colour => {
                    let c = bert_corruption(seed, epoch, position, patches, ratio);
                    out.predicted
                        .extend(c.iter().map(|c| c.is_predicted() as u8));
                    out.sources.extend(corruption_sources(&c));
                }
            }
        }
        out
    }

    /// B, the images these masks are for.
    pub fn batch(&self) -> usize {
        self.predicted.len() / self.patches.max(1)
    }

    /// Checks the masks against a batch of `batch` images of `patches` patches: the lengths,
    /// and every source −1 or a patch of the same image.
    pub fn check(&self, batch: usize, patches: usize) -> Result<(), String> {
        let n = batch * patches;
        if self.patches != patches || self.predicted.len() != n || self.sources.len() != n {
            return Err(format!(
                "masks for {} values of {} patches per image: expected {batch} images of {patches} patches",
                self.predicted.len(),
                self.patches
            ));
        }
        if let Some(s) = self
            .sources
            .iter()
            .find(|&&s| s < -1 || s >= patches as i32)
        {
            return Err(format!(
                "mask source {s}: expected -1 (the mask token) or a patch index below {patches}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_masks_use_the_token_exactly_where_predicted() {
        let m = PatchMasks::draw(&Objective::simmim(), 3, 1, 10..14, 64, 0.6);
        assert_eq!(m.batch(), 4);
        for img in 0..4 {
            let p = &m.predicted[img * 64..(img + 1) * 64];
            assert_eq!(p.iter().filter(|&&x| x == 1).count(), 38);
            for (i, (&pr, &s)) in p.iter().zip(&m.sources[img * 64..]).enumerate() {
                assert_eq!(s, if pr == 1 { -1 } else { i as i32 });
            }
        }
        assert!(m.check(4, 64).is_ok());
        assert!(m.check(4, 65).is_err());
        // A pure function of (seed, epoch, position).
        let again = PatchMasks::draw(&Objective::simmim(), 3, 1, [12, 13], 64, 0.6);
        assert_eq!(again.predicted, m.predicted[128..]);
    }

    #[test]
    fn colour_masks_follow_bert_corruption() {
        let m = PatchMasks::draw(&Objective::Colour, 5, 0, 0..3, 20, 0.5);
        for img in 0..3 {
            let p = &m.predicted[img * 20..(img + 1) * 20];
            let s = &m.sources[img * 20..(img + 1) * 20];
            assert_eq!(p.iter().filter(|&&x| x == 1).count(), 10);
            // 10 corrupted: 8 mask tokens, 1 other patch, 1 unchanged.
            assert_eq!(s.iter().filter(|&&x| x == -1).count(), 8);
            let moved = s
                .iter()
                .enumerate()
                .filter(|&(i, &x)| x >= 0 && x != i as i32)
                .count();
            assert_eq!(moved, 1);
            assert!(s.iter().zip(p).all(|(&x, &pr)| x != -1 || pr == 1));
        }
        let mut bad = m.clone();
        bad.sources[7] = 20;
        assert!(bad.check(3, 20).unwrap_err().contains("20"));
    }
}
