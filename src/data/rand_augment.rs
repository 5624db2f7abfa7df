//! RandAugment with timm's semantics (`timm.data.auto_augment.rand_augment_transform`).
//!
//! A config string `rand-mM-nN-mstdS-mmaxX-incI-pP` (every section optional, any order)
//! gives: M the magnitude (default 10), N the ops per image (default 2), S the std of normal
//! noise added to the magnitude per op application (default 0; above 100 the magnitude is
//! drawn uniformly from [0, M]), X the upper clip of the magnitude (default 10; 0 also means
//! 10, as timm's `magnitude_max or 10`), I = 1 for the increasing-severity op set, P the
//! probability each chosen op is applied (default 0.5).
//!
//! Per image: N ops drawn uniformly with replacement from the 15 ops, each applied with
//! probability P; the magnitude of an application is clip(M + S * z, 0, X), z ~ N(0, 1); the
//! level functions (timm's `LEVEL_TO_ARG`) turn it into the op's argument, some with a random
//! sign. Divergences from timm: `inc0` means off (timm's `bool(int(val))` agrees); a section
//! without a number, a `t...` section and the removed `w` key are errors (timm ignores or
//! accepts them); the affine ops always use bilinear resampling (timm draws bilinear or
//! bicubic per call when no interpolation is set).

use std::fmt;

use super::pixel_ops::PixelOp;
use super::rng::Rng64;
use super::DataError;
use crate::model::ImageSize;

/// timm's `_LEVEL_DENOM`: magnitudes are tenths of the full range.
const LEVEL_DENOM: f64 = 10.0;
/// timm's default `translate_pct` for the relative translations.
const TRANSLATE_PCT: f64 = 0.45;

/// An op of timm's RandAugment sets (`_RAND_TRANSFORMS`, `_RAND_INCREASING_TRANSFORMS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RandOp {
    AutoContrast,
    Equalize,
    Invert,
    Rotate,
    Posterize,
    PosterizeIncreasing,
    Solarize,
    SolarizeIncreasing,
    SolarizeAdd,
    Color,
    ColorIncreasing,
    Contrast,
    ContrastIncreasing,
    Brightness,
    BrightnessIncreasing,
    Sharpness,
    SharpnessIncreasing,
    ShearX,
    ShearY,
    TranslateXRel,
    TranslateYRel,
}

/// timm's `_RAND_TRANSFORMS`, in its order.
pub const RAND_TRANSFORMS: [RandOp; 15] = [
    RandOp::AutoContrast,
    RandOp::Equalize,
    RandOp::Invert,
    RandOp::Rotate,
    RandOp::Posterize,
    RandOp::Solarize,
    RandOp::SolarizeAdd,
    RandOp::Color,
    RandOp::Contrast,
    RandOp::Brightness,
    RandOp::Sharpness,
    RandOp::ShearX,
    RandOp::ShearY,
    RandOp::TranslateXRel,
    RandOp::TranslateYRel,
];

/// timm's `_RAND_INCREASING_TRANSFORMS` (`inc1`), in its order.
pub const RAND_INCREASING_TRANSFORMS: [RandOp; 15] = [
    RandOp::AutoContrast,
    RandOp::Equalize,
    RandOp::Invert,
    RandOp::Rotate,
    RandOp::PosterizeIncreasing,
    RandOp::SolarizeIncreasing,
    RandOp::SolarizeAdd,
    RandOp::ColorIncreasing,
    RandOp::ContrastIncreasing,
    RandOp::BrightnessIncreasing,
    RandOp::SharpnessIncreasing,
    RandOp::ShearX,
    RandOp::ShearY,
    RandOp::TranslateXRel,
    RandOp::TranslateYRel,
];

impl RandOp {
    /// Whether the level function draws a random sign (timm's `_randomly_negate`).
    pub fn is_signed(self) -> bool {
        use RandOp::*;
        matches!(
            self,
            Rotate
                | ColorIncreasing
                | ContrastIncreasing
                | BrightnessIncreasing
                | SharpnessIncreasing
                | ShearX
                | ShearY
                | TranslateXRel
                | TranslateYRel
        )
    }

    /// timm's level function and op: `magnitude` in [0, 10] (already clipped), `negate` the
    /// sign draw (ignored by unsigned ops), for an image of `size` (relative translations).
    /// With l = magnitude / 10 and ± the sign:
    /// - Rotate: ±30 l degrees; ShearX/Y: ±0.3 l; TranslateX/YRel: ±0.45 l * S_w (S_h) pixels;
    /// - Color/Contrast/Brightness/Sharpness: factor 1.8 l + 0.1; the Increasing versions:
    ///   max(0.1, 1 ± 0.9 l);
    /// - Posterize: trunc(4 l) bits; PosterizeIncreasing: 4 - trunc(4 l);
    /// - Solarize: threshold min(256, trunc(256 l)); SolarizeIncreasing: 256 - that;
    /// - SolarizeAdd: add min(128, trunc(110 l)) below 128.
    pub fn pixel_op(self, magnitude: f64, negate: bool, size: ImageSize) -> PixelOp {
        let l = magnitude / LEVEL_DENOM;
        let sign = |v: f64| if negate { -v } else { v };
        let enhance = || l * 1.8 + 0.1;
        let enhance_inc = || (1.0 + sign(l * 0.9)).max(0.1);
        let posterize = || (l * 4.0) as u8;
        let solarize = || ((l * 256.0) as i64).min(256) as f64;
        match self {
            RandOp::AutoContrast => PixelOp::AutoContrast,
            RandOp::Equalize => PixelOp::Equalize,
            RandOp::Invert => PixelOp::Invert,
            RandOp::Rotate => PixelOp::Rotate {
                degrees: sign(l * 30.0),
            },
            RandOp::Posterize => PixelOp::Posterize { bits: posterize() },
            RandOp::PosterizeIncreasing => PixelOp::Posterize {
                bits: 4 - posterize().min(4),
            },
            RandOp::Solarize => PixelOp::Solarize {
                threshold: solarize(),
            },
            RandOp::SolarizeIncreasing => PixelOp::Solarize {
                threshold: 256.0 - solarize(),
            },
            RandOp::SolarizeAdd => PixelOp::SolarizeAdd {
                add: ((l * 110.0) as i32).min(128),
                threshold: 128,
            },
            RandOp::Color => PixelOp::Color { factor: enhance() },
            RandOp::ColorIncreasing => PixelOp::Color {
                factor: enhance_inc(),
            },
            RandOp::Contrast => PixelOp::Contrast { factor: enhance() },
            RandOp::ContrastIncreasing => PixelOp::Contrast {
                factor: enhance_inc(),
            },
            RandOp::Brightness => PixelOp::Brightness { factor: enhance() },
            RandOp::BrightnessIncreasing => PixelOp::Brightness {
                factor: enhance_inc(),
            },
            RandOp::Sharpness => PixelOp::Sharpness { factor: enhance() },
            RandOp::SharpnessIncreasing => PixelOp::Sharpness {
                factor: enhance_inc(),
            },
            RandOp::ShearX => PixelOp::ShearX {
                factor: sign(l * 0.3),
            },
            RandOp::ShearY => PixelOp::ShearY {
                factor: sign(l * 0.3),
            },
            RandOp::TranslateXRel => PixelOp::TranslateX {
                pixels: sign(l * TRANSLATE_PCT) * size.width as f64,
            },
            RandOp::TranslateYRel => PixelOp::TranslateY {
                pixels: sign(l * TRANSLATE_PCT) * size.height as f64,
            },
        }
    }
}

/// A parsed RandAugment config (see the module docs for the string).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandAugment {
    /// M: the magnitude, in tenths of each op's range.
    pub magnitude: u32,
    /// N: ops drawn per image.
    pub num_layers: u32,
    /// S as written; above 100 means uniform magnitudes in [0, M].
    pub magnitude_std: f64,
    /// X: the magnitude's upper clip (None or 0: 10).
    pub magnitude_max: Option<u32>,
    /// `inc1`: the increasing-severity op set.
    pub increasing: bool,
    /// P: probability that a drawn op is applied.
    pub prob: f64,
}

/// One of the N draws for an image: which op, whether it applies, with which magnitude
/// (after noise and clipping) and sign.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandDraw {
    pub op: RandOp,
    pub applied: bool,
    pub magnitude: f64,
    pub negate: bool,
}

impl Default for RandAugment {
    /// timm's defaults for `rand`: m10 n2 mstd0 inc0 p0.5.
    fn default() -> Self {
        RandAugment {
            magnitude: 10,
            num_layers: 2,
            magnitude_std: 0.0,
            magnitude_max: None,
            increasing: false,
            prob: 0.5,
        }
    }
}

impl RandAugment {
    /// Parses `rand-...`; errors name the string, the section and what is expected.
    pub fn parse(s: &str) -> Result<Self, DataError> {
        let bad = |problem: String| DataError::invalid("RandAugment config", problem);
        let mut sections = s.split('-');
        if sections.next() != Some("rand") {
            return Err(bad(format!(
                "\"{s}\" does not start with \"rand\" (expected e.g. rand-m9-mstd0.5-inc1)"
            )));
        }
        let mut ra = RandAugment::default();
        for sec in sections {
            let Some(at) = sec.find(|c: char| c.is_ascii_digit()) else {
                return Err(bad(format!(
                    "section \"{sec}\" of \"{s}\" has no number (expected a key m, n, mstd, mmax, inc or p followed by a number, e.g. m9)"
                )));
            };
            let (key, val) = sec.split_at(at);
            let int = |what: &str| {
                val.parse::<u32>().map_err(|_| {
                    bad(format!(
                        "{what} \"{val}\" in \"{s}\" is not a whole number (expected e.g. {key}9)"
                    ))
                })
            };
            let float = |what: &str| {
                val.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| {
                        bad(format!(
                            "{what} \"{val}\" in \"{s}\" is not a number >= 0 (expected e.g. {key}0.5)"
                        ))
                    })
            };
            match key {
                "m" => ra.magnitude = int("magnitude")?,
                "n" => {
                    ra.num_layers = int("op count")?;
                    if ra.num_layers > 16 {
                        return Err(bad(format!(
                            "op count {} in \"{s}\" (expected at most 16 ops per image)",
                            ra.num_layers
                        )));
                    }
                }
                "mstd" => ra.magnitude_std = float("magnitude std")?,
                "mmax" => ra.magnitude_max = Some(int("magnitude max")?),
                "inc" => ra.increasing = int("inc")? != 0,
                "p" => {
                    ra.prob = float("probability")?;
                    if ra.prob > 1.0 {
                        return Err(bad(format!(
                            "probability {val} in \"{s}\" (expected a value in [0, 1])"
                        )));
                    }
                }
                _ => {
                    return Err(bad(format!(
                        "unknown key \"{key}\" in section \"{sec}\" of \"{s}\" (expected m, n, mstd, mmax, inc or p)"
                    )))
                }
            }
        }
        Ok(ra)
    }

    /// The op set drawn from: timm's increasing set with `inc1`, else the plain one.
    pub fn ops(&self) -> &'static [RandOp; 15] {
        if self.increasing {
            &RAND_INCREASING_TRANSFORMS
        } else {
            &RAND_TRANSFORMS
        }
    }

    /// The magnitude's upper clip: X, or 10 when unset or 0 (timm: `magnitude_max or 10`).
    pub fn upper_bound(&self) -> f64 {
        match self.magnitude_max {
            Some(x) if x > 0 => x as f64,
            _ => LEVEL_DENOM,
        }
    }

    /// The N draws for one image. Every layer takes the same five draws from `rng` (op, apply,
    /// normal noise, uniform magnitude, sign) whatever is used, so that streams stay aligned.
    pub fn draw(&self, rng: &mut Rng64) -> Vec<RandDraw> {
        let ops = self.ops();
        let m = self.magnitude as f64;
        (0..self.num_layers)
            .map(|_| {
                let op = ops[rng.below(ops.len() as u64) as usize];
                // timm skips the op when random() > p.
                let applied = rng.unit64() <= self.prob;
                let z = rng.normal();
                let u = rng.unit64();
                let negate = rng.coin();
                let noisy = if self.magnitude_std > 100.0 {
                    u * m // random.uniform(0, M)
                } else if self.magnitude_std > 0.0 {
                    m + self.magnitude_std * z // random.gauss(M, S)
                } else {
                    m
                };
                RandDraw {
                    op,
                    applied,
                    magnitude: noisy.min(self.upper_bound()).max(0.0),
                    negate,
                }
            })
            .collect()
    }

    /// The pixel ops to apply to one image of `size`, in order.
    pub fn sample(&self, rng: &mut Rng64, size: ImageSize) -> Vec<PixelOp> {
        self.draw(rng)
            .into_iter()
            .filter(|d| d.applied)
            .map(|d| d.op.pixel_op(d.magnitude, d.negate, size))
            .collect()
    }
}

impl fmt::Display for RandAugment {
    /// The config string, sections at their defaults left out (round-trips through `parse`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rand-m{}", self.magnitude)?;
        if self.num_layers != 2 {
            write!(f, "-n{}", self.num_layers)?;
        }
        if self.magnitude_std != 0.0 {
            write!(f, "-mstd{}", self.magnitude_std)?;
        }
        if let Some(x) = self.magnitude_max {
            write!(f, "-mmax{x}")?;
        }
        if self.increasing {
            write!(f, "-inc1")?;
        }
        if self.prob != 0.5 {
            write!(f, "-p{}", self.prob)?;
        }
        Ok(())
    }
}
