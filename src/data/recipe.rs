//! The training augmentation recipe beyond crop/flip, and the per-sample pipeline that
//! applies it, in the order of timm's CIFAR recipe:
//!
//!   crop + flip (u8) -> AutoAugment / RandAugment (u8) -> normalise (f32) -> random erasing
//!
//! Every random draw of sample p of epoch e comes from streams keyed by (seed, tag, e, p):
//! crop/flip from TAG_AUGMENT (as before the recipe existed, so a run without the recipe is
//! unchanged bitwise), the policy from TAG_AUTO_AUGMENT, erasing from TAG_ERASE.

use super::augment::{
    crop_flip_bytes_checked, crop_flip_checked, to_tensor_checked, CropFlip, Normalize,
};
use super::auto_augment::AutoAugment;
use super::loader::CROP_PAD;
use super::pixel_ops::{apply_checked, fill_from_mean, Fill};
use super::random_erasing::erase;
use super::rng::{Rng64, TAG_AUGMENT, TAG_AUTO_AUGMENT, TAG_ERASE};
use super::DataError;
use crate::model::ImageSize;

/// What the training loader adds to crop/flip. [`AugmentRecipe::OFF`] (the default) changes
/// nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentRecipe {
    /// The automatic augmentation policy (`--auto-augment`): none, cifar10 or rand-....
    pub auto_augment: AutoAugment,
    /// Random erasing probability (`--reprob`), in [0, 1]; 0 is off.
    pub reprob: f32,
    /// Copies of each image per epoch (`--aug-repeats`), >= 1; 1 is off.
    pub aug_repeats: usize,
}

impl AugmentRecipe {
    /// No policy, no erasing, no repeats.
    pub const OFF: AugmentRecipe = AugmentRecipe {
        auto_augment: AutoAugment::None,
        reprob: 0.0,
        aug_repeats: 1,
    };

    /// Checks the values a user can give: reprob a number in [0, 1], aug_repeats >= 1.
    pub fn check(&self) -> Result<(), DataError> {
        if !(self.reprob.is_finite() && (0.0..=1.0).contains(&self.reprob)) {
            return Err(DataError::invalid(
                "random erasing",
                format!("probability {} (expected a value in [0, 1])", self.reprob),
            ));
        }
        if self.aug_repeats == 0 {
            return Err(DataError::invalid(
                "repeated augmentation",
                "0 repeats (expected >= 1; 1 turns it off)",
            ));
        }
        Ok(())
    }
}

impl Default for AugmentRecipe {
    fn default() -> Self {
        AugmentRecipe::OFF
    }
}

/// Buffers one thread reuses from sample to sample.
#[derive(Clone, Debug, Default)]
pub struct Workspace {
    /// [C, S_h, S_w] bytes of the sample being augmented.
    bytes: Vec<u8>,
    /// A copy the affine ops and Sharpness read from.
    scratch: Vec<u8>,
}

/// The per-sample transform of the training loader: a pure function of (image, epoch,
/// position) once built.
#[derive(Clone, Debug)]
pub struct Pipeline {
    channels: usize,
    size: ImageSize,
    crop_flip: bool,
    recipe: AugmentRecipe,
    normalize: Normalize,
    fill: Fill,
    seed: u64,
}

impl Pipeline {
    /// `crop_flip`: the random crop (4-pixel zero padding) and horizontal flip. The affine
    /// ops' fill is timm's: the normalisation mean in bytes ([`fill_from_mean`]).
    ///
    /// Errors: channels the normalisation cannot handle, a recipe [`AugmentRecipe::check`]
    /// refuses.
    pub fn new(
        channels: usize,
        size: ImageSize,
        crop_flip: bool,
        recipe: AugmentRecipe,
        normalize: Normalize,
        seed: u64,
    ) -> Result<Self, DataError> {
        normalize.check(channels)?;
        recipe.check()?;
        Ok(Pipeline {
            channels,
            size,
            crop_flip,
            recipe,
            normalize,
            fill: fill_from_mean(normalize.mean),
            seed,
        })
    }

    pub fn recipe(&self) -> &AugmentRecipe {
        &self.recipe
    }

    /// Sample at `position` of `epoch`: `image` [C, S_h, S_w] bytes -> `out` [C, S_h, S_w]
    /// normalised floats. Lengths must be C * S_h * S_w (the loader checks the data set once).
    pub fn run(
        &self,
        image: &[u8],
        out: &mut [f32],
        epoch: usize,
        position: usize,
        work: &mut Workspace,
    ) {
        let (c, size) = (self.channels, self.size);
        let key = |tag: u64| Rng64::from_key(&[self.seed, tag, epoch as u64, position as u64]);
        let crop = self
            .crop_flip
            .then(|| CropFlip::random(&mut key(TAG_AUGMENT), CROP_PAD, true));
        if self.recipe.auto_augment.is_none() {
            match crop {
                Some(t) => crop_flip_checked(image, out, c, size, CROP_PAD, t, &self.normalize),
                None => to_tensor_checked(image, out, c, &self.normalize),
            }
        } else {
            work.bytes.resize(image.len(), 0);
            match crop {
                Some(t) => crop_flip_bytes_checked(image, &mut work.bytes, c, size, CROP_PAD, t),
                None => work.bytes.copy_from_slice(image),
            }
            let ops = self
                .recipe
                .auto_augment
                .sample(&mut key(TAG_AUTO_AUGMENT), size);
            for op in ops {
                apply_checked(op, &mut work.bytes, &mut work.scratch, c, size, self.fill);
            }
            to_tensor_checked(&work.bytes, out, c, &self.normalize);
        }
        if self.recipe.reprob > 0.0 {
            erase(out, c, size, self.recipe.reprob as f64, &mut key(TAG_ERASE));
        }
    }
}
