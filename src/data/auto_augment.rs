//! The automatic augmentation policy of a run: none, AutoAugment's CIFAR-10 policy, or a
//! RandAugment config ([`super::rand_augment`]).
//!
//! AutoAugment's CIFAR-10 policy (Cubuk et al. 2019) is the table of 25 sub-policies of
//! torchvision's `AutoAugmentPolicy.CIFAR10`, with its magnitude bins (10 bins, bin i of a
//! range [0, top] is top * i / 9). Per image: one sub-policy drawn uniformly; each of its two
//! ops applied when a uniform draw is <= its probability (torchvision's `probs[i] <= p`),
//! signed ops with a random sign. The ops are the PIL-exact ones of [`super::pixel_ops`], with
//! the choices we make for RandAugment too: bilinear resampling and the normalisation mean as
//! the fill (torchvision's AutoAugment defaults to nearest and a black fill), so that both
//! policies see the same ops.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::pixel_ops::PixelOp;
use super::rand_augment::RandAugment;
use super::rng::Rng64;
use super::DataError;
use crate::model::ImageSize;

/// The policy applied to each training image (after crop/flip, before normalisation).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum AutoAugment {
    /// No automatic augmentation (`none`).
    #[default]
    None,
    /// AutoAugment's CIFAR-10 policy (`cifar10`).
    Cifar10,
    /// RandAugment (`rand-...`, e.g. `rand-m9-mstd0.5-inc1`).
    Rand(RandAugment),
}

/// An op of the AutoAugment table, named as torchvision names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AaOp {
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    Brightness,
    Color,
    Contrast,
    Sharpness,
    Posterize,
    Solarize,
    AutoContrast,
    Equalize,
    Invert,
}

/// One op of a sub-policy: the op, its probability and its magnitude bin (0..=9; None for
/// ops without a magnitude).
pub type PolicyOp = (AaOp, f64, Option<u8>);

/// torchvision's `AutoAugmentPolicy.CIFAR10`: 25 sub-policies of two ops.
pub const CIFAR10_POLICY: [[PolicyOp; 2]; 25] = {
    use AaOp::*;
    [
        [(Invert, 0.1, None), (Contrast, 0.2, Some(6))],
        [(Rotate, 0.7, Some(2)), (TranslateX, 0.3, Some(9))],
        [(Sharpness, 0.8, Some(1)), (Sharpness, 0.9, Some(3))],
        [(ShearY, 0.5, Some(8)), (TranslateY, 0.7, Some(9))],
        [(AutoContrast, 0.5, None), (Equalize, 0.9, None)],
        [(ShearY, 0.2, Some(7)), (Posterize, 0.3, Some(7))],
        [(Color, 0.4, Some(3)), (Brightness, 0.6, Some(7))],
        [(Sharpness, 0.3, Some(9)), (Brightness, 0.7, Some(9))],
        [(Equalize, 0.6, None), (Equalize, 0.5, None)],
        [(Contrast, 0.6, Some(7)), (Sharpness, 0.6, Some(5))],
        [(Color, 0.7, Some(7)), (TranslateX, 0.5, Some(8))],
        [(Equalize, 0.3, None), (AutoContrast, 0.4, None)],
        [(TranslateY, 0.4, Some(3)), (Sharpness, 0.2, Some(6))],
        [(Brightness, 0.9, Some(6)), (Color, 0.2, Some(8))],
        [(Solarize, 0.5, Some(2)), (Invert, 0.0, None)],
        [(Equalize, 0.2, None), (AutoContrast, 0.6, None)],
        [(Equalize, 0.2, None), (Equalize, 0.6, None)],
        [(Color, 0.9, Some(9)), (Equalize, 0.6, None)],
        [(AutoContrast, 0.8, None), (Solarize, 0.2, Some(8))],
        [(Brightness, 0.1, Some(3)), (Color, 0.7, Some(0))],
        [(Solarize, 0.4, Some(5)), (AutoContrast, 0.9, None)],
        [(TranslateY, 0.9, Some(9)), (TranslateY, 0.7, Some(9))],
        [(AutoContrast, 0.9, None), (Solarize, 0.8, Some(3))],
        [(Equalize, 0.8, None), (Invert, 0.1, None)],
        [(TranslateY, 0.7, Some(9)), (AutoContrast, 0.9, None)],
    ]
};

impl AaOp {
    /// Whether torchvision draws a random sign for the op's magnitude.
    pub fn is_signed(self) -> bool {
        use AaOp::*;
        matches!(
            self,
            ShearX
                | ShearY
                | TranslateX
                | TranslateY
                | Rotate
                | Brightness
                | Color
                | Contrast
                | Sharpness
        )
    }

    /// torchvision's magnitude of bin `bin` (0..=9) and the op it gives, `negate` the sign:
    /// - ShearX/Y: 0.3 bin / 9; Rotate: 30 bin / 9 degrees;
    /// - TranslateX/Y: trunc((150 / 331) S_w bin / 9) pixels (S_h for Y; torchvision passes
    ///   `int(magnitude)` to its affine);
    /// - Brightness/Color/Contrast/Sharpness: factor 1 ± 0.9 bin / 9;
    /// - Posterize: 8 - round_half_even(bin / 2.25) bits; Solarize: threshold 255 - 255 bin / 9.
    pub fn pixel_op(self, bin: u8, negate: bool, size: ImageSize) -> PixelOp {
        let t = bin.min(9) as f64 / 9.0;
        let sign = |v: f64| if negate { -v } else { v };
        match self {
            AaOp::ShearX => PixelOp::ShearX {
                factor: sign(0.3 * t),
            },
            AaOp::ShearY => PixelOp::ShearY {
                factor: sign(0.3 * t),
            },
            AaOp::TranslateX => PixelOp::TranslateX {
                pixels: sign((150.0 / 331.0 * size.width as f64 * t).trunc()),
            },
            AaOp::TranslateY => PixelOp::TranslateY {
                pixels: sign((150.0 / 331.0 * size.height as f64 * t).trunc()),
            },
            AaOp::Rotate => PixelOp::Rotate {
                degrees: sign(30.0 * t),
            },
            AaOp::Brightness => PixelOp::Brightness {
                factor: 1.0 + sign(0.9 * t),
            },
            AaOp::Color => PixelOp::Color {
                factor: 1.0 + sign(0.9 * t),
            },
            AaOp::Contrast => PixelOp::Contrast {
                factor: 1.0 + sign(0.9 * t),
            },
            AaOp::Sharpness => PixelOp::Sharpness {
                factor: 1.0 + sign(0.9 * t),
            },
            AaOp::Posterize => PixelOp::Posterize {
                bits: 8 - (bin.min(9) as f64 / 2.25).round_ties_even() as u8,
            },
            AaOp::Solarize => PixelOp::Solarize {
                threshold: 255.0 - 255.0 * t,
            },
            AaOp::AutoContrast => PixelOp::AutoContrast,
            AaOp::Equalize => PixelOp::Equalize,
            AaOp::Invert => PixelOp::Invert,
        }
    }
}

/// One image's draw of the CIFAR-10 policy: the sub-policy and, per op, whether it applies
/// and its sign.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyDraw {
    pub sub_policy: usize,
    pub applied: [bool; 2],
    pub negate: [bool; 2],
}

/// Draws a sub-policy and its two ops' coins: five draws from `rng` always (sub-policy, then
/// per op a uniform and a sign).
pub fn draw_cifar10(rng: &mut Rng64) -> PolicyDraw {
    let sub_policy = rng.below(CIFAR10_POLICY.len() as u64) as usize;
    let mut d = PolicyDraw {
        sub_policy,
        applied: [false; 2],
        negate: [false; 2],
    };
    for (i, &(_, p, _)) in CIFAR10_POLICY[sub_policy].iter().enumerate() {
        d.applied[i] = rng.unit64() <= p;
        d.negate[i] = rng.coin();
    }
    d
}

impl AutoAugment {
    /// Parses `none`, `cifar10` or a RandAugment string (`rand-...`).
    pub fn parse(s: &str) -> Result<Self, DataError> {
        match s {
            "none" => Ok(AutoAugment::None),
            "cifar10" => Ok(AutoAugment::Cifar10),
            _ if s == "rand" || s.starts_with("rand-") => RandAugment::parse(s).map(AutoAugment::Rand),
            _ => Err(DataError::invalid(
                "auto-augment policy",
                format!("\"{s}\" is not a policy (expected cifar10, none, or a RandAugment config such as rand-m9-mstd0.5-inc1)"),
            )),
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, AutoAugment::None)
    }

    /// The pixel ops to apply to one image of `size`, drawn from `rng`, in order.
    pub fn sample(&self, rng: &mut Rng64, size: ImageSize) -> Vec<PixelOp> {
        match self {
            AutoAugment::None => Vec::new(),
            AutoAugment::Rand(ra) => ra.sample(rng, size),
            AutoAugment::Cifar10 => {
                let d = draw_cifar10(rng);
                CIFAR10_POLICY[d.sub_policy]
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| d.applied[*i])
                    .map(|(i, &(op, _, bin))| op.pixel_op(bin.unwrap_or(0), d.negate[i], size))
                    .collect()
            }
        }
    }
}

impl FromStr for AutoAugment {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        AutoAugment::parse(s)
    }
}

impl fmt::Display for AutoAugment {
    /// The string [`AutoAugment::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AutoAugment::None => f.write_str("none"),
            AutoAugment::Cifar10 => f.write_str("cifar10"),
            AutoAugment::Rand(ra) => ra.fmt(f),
        }
    }
}

/// Stored as its string (`"none"`, `"cifar10"`, `"rand-m9-mstd0.5-inc1"`), e.g. in config.json.
impl Serialize for AutoAugment {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AutoAugment {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AutoAugment::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_as_its_string() {
        for s in ["none", "cifar10", "rand-m9-mstd0.5-inc1"] {
            let p = AutoAugment::parse(s).unwrap();
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<AutoAugment>(&json).unwrap(), p);
        }
        let e = serde_json::from_str::<AutoAugment>("\"rand-q3\"").unwrap_err();
        assert!(e.to_string().contains("\"q\""), "{e}");
    }
}
