//! The pre-training part of a run's config (`vitk pretrain`): recorded in config.json under
//! `pretrain`, so that `--resume` continues with the same objective and masks.

use super::Objective;
use crate::cpu::mim::PixelLoss;
use crate::cpu::PixelObjective;
use serde::{Deserialize, Serialize};

/// `--objective`, `--mask-ratio`, `--loss` and `--norm-pix` of a pre-training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    /// "pixels" or "color".
    pub objective: String,
    /// Fraction of each image's patches masked (pixels) or corrupted (color), in (0, 1].
    pub mask_ratio: f64,
    /// "l1" or "l2" (pixels only).
    pub loss: String,
    /// Pixel targets normalised per patch (pixels only).
    pub norm_pix: bool,
}

impl PretrainConfig {
    /// The objective these settings describe, or an error naming the flag and its value.
    pub fn objective(&self) -> Result<Objective, String> {
        let loss = match self.loss.as_str() {
            "l1" => PixelLoss::L1,
            "l2" => PixelLoss::L2,
            other => return Err(format!("--loss {other}: expected l1 or l2")),
        };
        match self.objective.as_str() {
            "pixels" => Ok(Objective::Pixels(PixelObjective {
                loss,
                norm_pix: self.norm_pix,
            })),
            "color" => Ok(Objective::Colour),
            other => Err(format!("--objective {other}: expected pixels or color")),
        }
    }

    /// Checks every value (a new run's flags and a resumed config.json alike).
    pub fn validate(&self) -> Result<(), String> {
        let objective = self.objective()?;
        let r = self.mask_ratio;
        if !(r > 0.0 && r <= 1.0) {
            return Err(format!(
                "--mask-ratio {r} is out of range: expected (0, 1] (the fraction of each image's patches to mask)"
            ));
        }
        if objective == Objective::Colour && (self.loss != "l1" || self.norm_pix) {
            return Err(
                "--loss and --norm-pix apply to --objective pixels; the color objective is scored by cross-entropy"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(objective: &str, ratio: f64, loss: &str, norm_pix: bool) -> PretrainConfig {
        PretrainConfig {
            objective: objective.into(),
            mask_ratio: ratio,
            loss: loss.into(),
            norm_pix,
        }
    }

    #[test]
    fn values_are_checked_and_named() {
        assert!(cfg("pixels", 0.6, "l1", false).validate().is_ok());
        assert!(cfg("pixels", 1.0, "l2", true).validate().is_ok());
        assert!(cfg("color", 0.5, "l1", false).validate().is_ok());
        for (c, needle) in [
            (cfg("pixels", 1.5, "l1", false), "--mask-ratio 1.5"),
            (cfg("pixels", 0.0, "l1", false), "--mask-ratio 0"),
            (cfg("pixels", f64::NAN, "l1", false), "--mask-ratio NaN"),
            (cfg("pixel", 0.6, "l1", false), "--objective pixel"),
            (cfg("pixels", 0.6, "l3", false), "--loss l3"),
            (cfg("color", 0.5, "l2", false), "--objective pixels"),
        ] {
            let e = c.validate().unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        assert_eq!(
            cfg("pixels", 0.6, "l2", true).objective().unwrap(),
            Objective::Pixels(PixelObjective {
                loss: PixelLoss::L2,
                norm_pix: true
            })
        );
    }
}
